package quota

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	llmv1alpha1 "github.com/llm-user-operator/llm-user-operator/api/v1alpha1"
)

// Redis is the [Counter] shared by several proxy replicas. Every Reserve and
// every Settle is one Lua script, so one round trip, and atomic across all the
// budgets of a request.
//
// Each budget's window is a hash at <prefix><budget key>:<window>:<start unix>
// with the used fields req, in, out and the reserved fields rreq, rin, rout.
// Naming the window start in the key makes roll-over free: a new window is a
// new key, and the old one expires an hour after its window ends.
//
// One request touches a user's keys and a Shared quota's pool keys, which no
// hash tag can put in one Redis Cluster slot. Use a single Redis instance,
// optionally behind Sentinel ([redis.NewFailoverClient]); Cluster refuses the
// scripts with CROSSSLOT.
//
// Counts kept by Redis are lost if it restarts without persistence. A marker
// key, set by [Redis.MarkSeeded] once the counts were restored from recorded
// status with [Counter.Seed], tells: while it is missing Reserve fails with
// [ErrUnseeded] instead of admitting against empty counters.
type Redis struct {
	client redis.UniversalClient
	prefix string
	now    func() time.Time
	ids    atomic.Uint64
}

var _ Counter = (*Redis)(nil)

// keyGrace is how long a window's key outlives the window, so that a Settle
// arriving just after the end still finds it rather than recreating it.
const keyGrace = time.Hour

// NewRedis returns a counter keeping its budgets in Redis under prefix,
// reading time from now. Every replica must use the same prefix.
func NewRedis(client redis.UniversalClient, prefix string, now func() time.Time) *Redis {
	return &Redis{client: client, prefix: prefix, now: now}
}

// ErrUnseeded means the shared store lost its counts (a Redis restart) and
// they must be seeded from status again before admission can be trusted.
var ErrUnseeded = errors.New("quota: the shared counters are not seeded")

func (r *Redis) marker() string { return r.prefix + "seeded" }

// MarkSeeded records that the counters hold what status recorded. Call it
// after seeding; it never expires.
func (r *Redis) MarkSeeded(ctx context.Context) error {
	return r.client.Set(ctx, r.marker(), "1", 0).Err()
}

func (r *Redis) key(s slot) string {
	return r.prefix + s.key + ":" + string(s.window) + ":" + strconv.FormatInt(s.start.Unix(), 10)
}

// ttl is the key's lifetime in milliseconds, relative so that it depends on
// the injected clock alone and not on Redis's clock agreeing with it.
func ttl(s slot, now time.Time) int64 {
	return max(s.end.Add(keyGrace).Sub(now).Milliseconds(), 1)
}

// capArg encodes a cap for the scripts, which read -1 as uncapped.
func capArg(c *int64) int64 {
	if c == nil {
		return -1
	}
	return *c
}

// reserveScript checks and holds an estimate in every key, or in none.
//
//	KEYS:  one per distinct budget window
//	ARGV:  est req, est in, est out,
//	       one ttl (ms) per key,
//	       then per enforcing limit: key index (1-based), cap tokens, cap in,
//	       cap out, cap req (-1 = uncapped)
//	reply: {1 if reserved else 0, then per key its state before the
//	       reservation: req, in, out, rreq, rin, rout}
//
// room is the same rule as the Go function room; Go derives the Decision's
// details from the returned state with that function.
var reserveScript = redis.NewScript(`
local function room(cap, held, est)
  if cap < 0 then return true end
  if held == 0 and cap > 0 then return true end
  return held < cap and held + est <= cap
end
local ereq, ein, eout = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local n = #KEYS - 1
if redis.call('EXISTS', KEYS[n + 1]) == 0 then return {-1} end
local state = {}
for i = 1, n do
  local v = redis.call('HMGET', KEYS[i], 'req', 'in', 'out', 'rreq', 'rin', 'rout')
  for j = 1, 6 do v[j] = tonumber(v[j]) or 0 end
  state[i] = v
end
local ok = 1
for a = 3 + n, #ARGV - 5, 5 do
  local s = state[tonumber(ARGV[a + 1])]
  local hreq, hin, hout = s[1] + s[4], s[2] + s[5], s[3] + s[6]
  if not (room(tonumber(ARGV[a + 2]), hin + hout, ein + eout)
      and room(tonumber(ARGV[a + 3]), hin, ein)
      and room(tonumber(ARGV[a + 4]), hout, eout)
      and room(tonumber(ARGV[a + 5]), hreq, ereq)) then
    ok = 0
    break
  end
end
if ok == 1 then
  for i = 1, n do
    redis.call('HINCRBY', KEYS[i], 'rreq', ereq)
    redis.call('HINCRBY', KEYS[i], 'rin', ein)
    redis.call('HINCRBY', KEYS[i], 'rout', eout)
    redis.call('PEXPIRE', KEYS[i], ARGV[3 + i])
  end
end
local reply = {ok}
for i = 1, n do
  for j = 1, 6 do reply[#reply + 1] = state[i][j] end
end
return reply
`)

// settleScript releases a reservation and charges the actual usage.
//
//	KEYS:  one per distinct budget window current now
//	ARGV:  held req, in, out, actual req, in, out,
//	       then per key: ttl (ms), 1 if the reservation was made in this
//	       window else 0
//
// A key that no longer exists (expired, or Redis restarted) has nothing to
// release, and must not be recreated without its expiry.
var settleScript = redis.NewScript(`
local held = {tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])}
local actual = {tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])}
local rf = {'rreq', 'rin', 'rout'}
local uf = {'req', 'in', 'out'}
local charge = actual[1] ~= 0 or actual[2] ~= 0 or actual[3] ~= 0
for i = 1, #KEYS do
  local a = 7 + (i - 1) * 2
  if ARGV[a + 1] == '1' and redis.call('EXISTS', KEYS[i]) == 1 then
    local v = redis.call('HMGET', KEYS[i], 'rreq', 'rin', 'rout')
    for j = 1, 3 do
      local cur = tonumber(v[j]) or 0
      local d = math.min(cur, held[j])
      if d > 0 then redis.call('HINCRBY', KEYS[i], rf[j], -d) end
    end
  end
  if charge then
    for j = 1, 3 do
      if actual[j] ~= 0 then redis.call('HINCRBY', KEYS[i], uf[j], actual[j]) end
    end
    redis.call('PEXPIRE', KEYS[i], ARGV[a])
  end
end
return 1
`)

// seedScript raises each used field of one key to at least the given value.
//
//	KEYS: the budget window
//	ARGV: req, in, out, ttl (ms)
var seedScript = redis.NewScript(`
local f = {'req', 'in', 'out'}
local cur = redis.call('HMGET', KEYS[1], 'req', 'in', 'out')
local wrote = false
for j = 1, 3 do
  if tonumber(ARGV[j]) > (tonumber(cur[j]) or 0) then
    redis.call('HSET', KEYS[1], f[j], ARGV[j])
    wrote = true
  end
end
if wrote then redis.call('PEXPIRE', KEYS[1], ARGV[4]) end
return 1
`)

// Reserve implements [Counter]. See room for the admission rule.
func (r *Redis) Reserve(ctx context.Context, req Request) (*Reservation, Decision, error) {
	now := r.now()
	p, err := newPlan(req.Budgets, now)
	if err != nil {
		return nil, Decision{}, err
	}
	est := nonNegative(req.Estimate)
	state := make([]counts, len(p.slots))
	ok := true
	if len(p.slots) > 0 {
		keys := make([]string, len(p.slots), len(p.slots)+1)
		args := make([]any, 0, 3+len(p.slots)+5*len(p.checks))
		args = append(args, est.Requests, est.InputTokens, est.OutputTokens)
		for i, s := range p.slots {
			keys[i] = r.key(s)
			args = append(args, ttl(s, now))
		}
		for _, c := range p.checks {
			if c.dryRun {
				continue
			}
			l := c.limit
			args = append(args, c.slot+1, capArg(l.Tokens), capArg(l.InputTokens), capArg(l.OutputTokens), capArg(l.Requests))
		}
		reply, err := reserveScript.Run(ctx, r.client, append(keys, r.marker()), args...).Int64Slice()
		if err != nil {
			return nil, Decision{}, fmt.Errorf("quota: reserve in redis: %w", err)
		}
		if len(reply) == 1 && reply[0] == -1 {
			return nil, Decision{}, ErrUnseeded
		}
		if len(reply) != 1+6*len(p.slots) {
			return nil, Decision{}, fmt.Errorf("quota: reserve in redis: reply has %d values, want %d", len(reply), 1+6*len(p.slots))
		}
		ok = reply[0] == 1
		for i := range state {
			v := reply[1+6*i:]
			state[i] = counts{used: Amount{v[0], v[1], v[2]}, reserved: Amount{v[3], v[4], v[5]}}
		}
	}
	// The script decided; the same rule over the same state names why.
	_, ex := p.decide(state, est)
	d := Decision{Allowed: ok, Exceeded: ex}
	if !ok {
		d.Windows = p.windows(state)
		return nil, d, nil
	}
	for i := range state {
		state[i].reserved = state[i].reserved.Add(est)
	}
	d.Windows = p.windows(state)
	res := &Reservation{Budgets: slices.Clone(req.Budgets), Amount: est, At: now, ID: r.ids.Add(1)}
	return res, d, nil
}

// Settle implements [Counter].
func (r *Redis) Settle(ctx context.Context, res *Reservation, actual Amount) error {
	if res == nil {
		return errNilReservation
	}
	now := r.now()
	p, err := newPlan(res.Budgets, now)
	if err != nil {
		return err
	}
	if len(p.slots) == 0 {
		return nil
	}
	held := nonNegative(res.Amount)
	actual = nonNegative(actual)
	keys := make([]string, len(p.slots))
	args := make([]any, 0, 6+2*len(p.slots))
	args = append(args, held.Requests, held.InputTokens, held.OutputTokens, actual.Requests, actual.InputTokens, actual.OutputTokens)
	for i, s := range p.slots {
		keys[i] = r.key(s)
		release := 0
		if s.current(res.At) {
			release = 1
		}
		args = append(args, ttl(s, now), release)
	}
	if err := settleScript.Run(ctx, r.client, keys, args...).Err(); err != nil {
		return fmt.Errorf("quota: settle in redis: %w", err)
	}
	return nil
}

// Status implements [Counter] with one pipelined HMGET per window.
func (r *Redis) Status(ctx context.Context, b Budget) ([]WindowStatus, error) {
	p, err := newPlan([]Budget{b}, r.now())
	if err != nil {
		return nil, err
	}
	state := make([]counts, len(p.slots))
	if len(p.slots) > 0 {
		cmds := make([]*redis.SliceCmd, len(p.slots))
		_, err := r.client.Pipelined(ctx, func(pipe redis.Pipeliner) error {
			for i, s := range p.slots {
				cmds[i] = pipe.HMGet(ctx, r.key(s), "req", "in", "out", "rreq", "rin", "rout")
			}
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("quota: status from redis: %w", err)
		}
		for i, cmd := range cmds {
			var v [6]int64
			for j, f := range cmd.Val() {
				if f == nil {
					continue
				}
				s, _ := f.(string)
				if v[j], err = strconv.ParseInt(s, 10, 64); err != nil {
					return nil, fmt.Errorf("quota: status from redis: key %s: field %d is %q", r.key(p.slots[i]), j, s)
				}
			}
			state[i] = counts{used: Amount{v[0], v[1], v[2]}, reserved: Amount{v[3], v[4], v[5]}}
		}
	}
	return p.windows(state), nil
}

// Seed implements [Counter].
func (r *Redis) Seed(ctx context.Context, budget string, w llmv1alpha1.Window, start time.Time, used Amount) error {
	now := r.now()
	s, ok, err := seedSlot(budget, w, start, now)
	if err != nil || !ok {
		return err
	}
	used = nonNegative(used)
	if used.IsZero() {
		return nil
	}
	if err := seedScript.Run(ctx, r.client, []string{r.key(s)}, used.Requests, used.InputTokens, used.OutputTokens, ttl(s, now)).Err(); err != nil {
		return fmt.Errorf("quota: seed in redis: %w", err)
	}
	return nil
}
