package quota

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"

	llmv1alpha1 "github.com/llm-user-operator/llm-user-operator/api/v1alpha1"
)

// Redis is the [Counter] shared by several proxy replicas. Every Reserve and
// every Settle is one Lua script, so one round trip, and atomic across all the
// budgets of a request.
//
// Each budget's window is a hash at <prefix><budget key>:<window>:<start unix>
// with the used fields req, in and out, and per replica the fields q:<id>,
// i:<id> and o:<id> that it holds for its requests in flight. Naming the
// window start in the key makes roll-over free: a new window is a new key,
// and the old one expires an hour after its window ends. A user's requests
// in flight are counted per replica in the hash <prefix>inflight:<user key>.
//
// Holds are leased: each replica renews its lease in the hash <prefix>leases
// (replica id → expiry) on every Reserve and every Lease/3 from
// [Redis.Start]. A replica that dies (OOM, node loss) stops renewing; once its
// lease has expired, the next Reserve that touches a key drops its holds, so
// a crash frees its reservations within Lease instead of pinning them until
// the window ends. Its in-flight requests were never charged, since it never
// saw their usage.
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
	client  redis.UniversalClient
	prefix  string
	now     func() time.Time
	lease   time.Duration
	replica string
}

var _ Counter = (*Redis)(nil)

// RedisOptions configures [NewRedis].
type RedisOptions struct {
	// Prefix starts every key; every replica must use the same one.
	Prefix string
	// Now is the clock (default time.Now). Windows, key lifetimes and leases
	// are computed from it alone, not from Redis's clock.
	Now func() time.Time
	// Lease bounds how long a replica that stopped renewing keeps its holds
	// (default 30s).
	Lease time.Duration
	// ReplicaID names this replica's holds (default: random). Two live
	// replicas must never share one.
	ReplicaID string
}

// keyGrace is how long a window's key outlives the window, so that a Settle
// arriving just after the end still finds it.
const keyGrace = time.Hour

// settledTTL is how long Redis remembers that a reservation was settled, so
// that a retried Settle (after an error, or a reply that was lost) is not
// charged twice. A retry comes within seconds once Redis answers again; the
// cost is one small key per request for this long.
const settledTTL = 5 * time.Minute

// inflightTTL bounds how long a user's in-flight hash outlives its last
// request when every replica that held it is gone.
const inflightTTL = 24 * time.Hour

// NewRedis returns a counter keeping its budgets in Redis.
func NewRedis(client redis.UniversalClient, o RedisOptions) *Redis {
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Lease <= 0 {
		o.Lease = 30 * time.Second
	}
	if o.ReplicaID == "" {
		var b [8]byte
		_, _ = rand.Read(b[:])
		o.ReplicaID = hex.EncodeToString(b[:])
	}
	return &Redis{client: client, prefix: o.Prefix, now: o.Now, lease: o.Lease, replica: o.ReplicaID}
}

// ErrUnseeded means the shared store lost its counts (a Redis restart) and
// they must be seeded from status again before admission can be trusted.
var ErrUnseeded = errors.New("quota: the shared counters are not seeded")

func (r *Redis) marker() string { return r.prefix + "seeded" }
func (r *Redis) leases() string { return r.prefix + "leases" }

// settledKey marks a reservation settled; the replica id makes the
// process-wide reservation id unique across replicas.
func (r *Redis) settledKey(res *Reservation) string {
	return r.prefix + "settled:" + r.replica + ":" + strconv.FormatUint(res.ID, 36)
}

// lifetimeKey is the hash of a budget's lifetime usage. It never expires:
// it is one small hash per user, and status restores it after a loss.
func (r *Redis) lifetimeKey(budget string) string { return r.prefix + budget + ":lifetime" }

// inflightKey is the hash counting a concurrency key's requests in flight.
func (r *Redis) inflightKey(k string) string { return r.prefix + "inflight:" + k }

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

// liveLua loads the replicas whose lease has not expired into live, and
// counts reads one window hash: its used fields and the holds of live
// replicas, dropping the holds of dead ones when clean is true.
const liveLua = `
local function loadLive(leasesKey, now)
  local live = {}
  local lv = redis.call('HGETALL', leasesKey)
  for i = 1, #lv, 2 do
    if tonumber(lv[i + 1]) > now then live[lv[i]] = true end
  end
  return live
end
local function counts(key, live, clean)
  local h = redis.call('HGETALL', key)
  local c = {0, 0, 0, 0, 0, 0}
  local dead = {}
  for i = 1, #h, 2 do
    local f, v = h[i], tonumber(h[i + 1])
    if f == 'req' then c[1] = v
    elseif f == 'in' then c[2] = v
    elseif f == 'out' then c[3] = v
    else
      local kind, id = string.sub(f, 1, 1), string.sub(f, 3)
      if live[id] then
        if kind == 'q' then c[4] = c[4] + v
        elseif kind == 'i' then c[5] = c[5] + v
        elseif kind == 'o' then c[6] = c[6] + v end
      else
        dead[#dead + 1] = f
      end
    end
  end
  if clean and #dead > 0 then redis.call('HDEL', key, unpack(dead)) end
  return c
end
local function inflight(key, live, clean)
  local h = redis.call('HGETALL', key)
  local n, dead = 0, {}
  for i = 1, #h, 2 do
    if live[h[i]] then n = n + tonumber(h[i + 1]) else dead[#dead + 1] = h[i] end
  end
  if clean and #dead > 0 then redis.call('HDEL', key, unpack(dead)) end
  return n
end
`

// reserveScript checks and holds an estimate in every key, or in none.
//
//	KEYS:  one per distinct budget window, then the in-flight hash if
//	       ARGV[9] is 1, then the leases hash and the seeded marker
//	ARGV:  replica id, now (ms), lease (ms), output step,
//	       est req, est in, est out, number of windows,
//	       1 if a concurrency limit applies, its limit, 1 if it is dry-run,
//	       one ttl (ms) per window,
//	       then per enforcing limit: window index (1-based), cap tokens,
//	       cap in, cap out, cap req (-1 = uncapped)
//	reply: {-1} when unseeded; else {1 if reserved else 0, granted output,
//	       requests in flight before, then per window its state before the
//	       reservation: req, in, out, held req, held in, held out}
//
// The rule is the Go one in plan.go (rooms and fit, enforcing limits only);
// Go derives the Decision's details from the returned state.
var reserveScript = redis.NewScript(liveLua + `
local id, now, lease, step = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local est = {tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])}
local n, hasConc = tonumber(ARGV[8]), ARGV[9] == '1'
local concLimit, concDry = tonumber(ARGV[10]), ARGV[11] == '1'
local leasesKey, marker = KEYS[#KEYS - 1], KEYS[#KEYS]
if redis.call('EXISTS', marker) == 0 then return {-1} end
local live = loadLive(leasesKey, now)
live[id] = true
redis.call('HSET', leasesKey, id, now + lease)
local state = {}
for i = 1, n do state[i] = counts(KEYS[i], live, true) end
local running = 0
if hasConc then running = inflight(KEYS[n + 1], live, true) end

local function fits(c, held, e)
  if c < 0 or (held < c and held + e <= c) then return math.huge end
  return -1
end
local minRoom = math.huge
for a = 12 + n, #ARGV - 4, 5 do
  local s = state[tonumber(ARGV[a])]
  local hreq, hin, hout = s[1] + s[4], s[2] + s[5], s[3] + s[6]
  local ctok, cin, cout, creq = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3]), tonumber(ARGV[a + 4])
  local r = math.min(fits(cin, hin, est[2]), fits(creq, hreq, est[1]))
  if ctok >= 0 then
    if hin + hout < ctok then r = math.min(r, ctok - hin - hout - est[2]) else r = -1 end
  end
  if cout >= 0 then
    if hout < cout then r = math.min(r, cout - hout) else r = -1 end
  end
  if r < minRoom then minRoom = r end
end
local ok, grant = 1, est[3]
if minRoom < est[3] then
  if step <= 0 or minRoom < 0 then
    ok = 0
  else
    grant = math.floor(minRoom / step) * step
    if grant < step then ok = 0 end
  end
end
if ok == 1 and hasConc and not concDry and running >= concLimit then ok = 0 end
if ok == 1 then
  for i = 1, n do
    if est[1] ~= 0 then redis.call('HINCRBY', KEYS[i], 'q:' .. id, est[1]) end
    if est[2] ~= 0 then redis.call('HINCRBY', KEYS[i], 'i:' .. id, est[2]) end
    if grant ~= 0 then redis.call('HINCRBY', KEYS[i], 'o:' .. id, grant) end
    redis.call('PEXPIRE', KEYS[i], ARGV[11 + i])
  end
  if hasConc then
    redis.call('HINCRBY', KEYS[n + 1], id, 1)
    redis.call('PEXPIRE', KEYS[n + 1], ` + strconv.FormatInt(inflightTTL.Milliseconds(), 10) + `)
  end
else
  grant = 0
end
local reply = {ok, grant, running}
for i = 1, n do
  for j = 1, 6 do reply[#reply + 1] = state[i][j] end
end
return reply
`)

// settleScript releases this replica's hold and charges the actual usage,
// both in the windows the reservation was made in, and adds it to each
// budget's lifetime. It runs at most once per reservation: its first run
// sets the reservation's settled key, and a retry that finds it does
// nothing. It refuses (-1) while the counters are not seeded, so a charge
// never lands in counters that a reseed would then overwrite.
//
//	KEYS:  one per distinct budget window of the reservation, then the
//	       in-flight hash if ARGV[9] is 1, then one lifetime hash per
//	       budget, then the seeded marker and the reservation's settled key
//	ARGV:  replica id, held req, in, out, actual req, in, out,
//	       number of windows, 1 if an in-flight slot is held,
//	       the settled key's ttl (ms), then per window: ttl (ms)
//	reply: 1 settled, 0 already settled, -1 not seeded
//
// A window key that no longer exists (expired) has nothing to release; an
// actual charge recreates it with its expiry.
var settleScript = redis.NewScript(`
if redis.call('EXISTS', KEYS[#KEYS - 1]) == 0 then return -1 end
if not redis.call('SET', KEYS[#KEYS], '1', 'NX', 'PX', ARGV[10]) then return 0 end
local id = ARGV[1]
local held = {tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])}
local actual = {tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])}
local nwin, hasConc = tonumber(ARGV[8]), ARGV[9] == '1'
local hf = {'q:' .. id, 'i:' .. id, 'o:' .. id}
local uf = {'req', 'in', 'out'}
local charge = actual[1] ~= 0 or actual[2] ~= 0 or actual[3] ~= 0
local function release(key, field, d)
  if d <= 0 then return end
  local cur = tonumber(redis.call('HGET', key, field) or '0')
  if cur <= d then redis.call('HDEL', key, field) else redis.call('HINCRBY', key, field, -d) end
end
local function add(key)
  for j = 1, 3 do
    if actual[j] ~= 0 then redis.call('HINCRBY', key, uf[j], actual[j]) end
  end
end
for i = 1, nwin do
  for j = 1, 3 do release(KEYS[i], hf[j], held[j]) end
  if charge then
    add(KEYS[i])
    redis.call('PEXPIRE', KEYS[i], ARGV[10 + i])
  end
end
local life = nwin + 1
if hasConc then
  release(KEYS[nwin + 1], id, 1)
  life = nwin + 2
end
if charge then
  for i = life, #KEYS - 2 do add(KEYS[i]) end
end
return 1
`)

// statusScript reads windows without changing them.
//
//	KEYS:  one per window, then the leases hash
//	ARGV:  now (ms), replica id (whose holds count whatever its lease)
//	reply: per window req, in, out, held req, held in, held out
var statusScript = redis.NewScript(liveLua + `
local live = loadLive(KEYS[#KEYS], tonumber(ARGV[1]))
live[ARGV[2]] = true
local reply = {}
for i = 1, #KEYS - 1 do
  local c = counts(KEYS[i], live, false)
  for j = 1, 6 do reply[#reply + 1] = c[j] end
end
return reply
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

// renewScript renews this replica's lease and forgets leases that expired
// long ago (their holds are dropped by the next Reserve either way).
//
//	KEYS: the leases hash
//	ARGV: replica id, now (ms), lease (ms)
var renewScript = redis.NewScript(`
local now, lease = tonumber(ARGV[2]), tonumber(ARGV[3])
redis.call('HSET', KEYS[1], ARGV[1], now + lease)
local lv = redis.call('HGETALL', KEYS[1])
for i = 1, #lv, 2 do
  if tonumber(lv[i + 1]) < now - 100 * lease then redis.call('HDEL', KEYS[1], lv[i]) end
end
return 1
`)

// Reserve implements [Counter]. See the admission rule in plan.go.
func (r *Redis) Reserve(ctx context.Context, req Request) (*Reservation, Decision, error) {
	now := r.now()
	p, err := newPlan(req.Budgets, now)
	if err != nil {
		return nil, Decision{}, err
	}
	req.Estimate = nonNegative(req.Estimate)
	est := req.Estimate
	n := len(p.slots)
	ks := make([]string, 0, n+3)
	args := make([]any, 0, 11+n+5*len(p.checks))
	args = append(args, r.replica, now.UnixMilli(), r.lease.Milliseconds(), max(req.OutputStep, 0),
		est.Requests, est.InputTokens, est.OutputTokens, n)
	for _, s := range p.slots {
		ks = append(ks, r.key(s))
	}
	if c := req.Concurrency; c != nil {
		ks = append(ks, r.inflightKey(c.Key))
		args = append(args, 1, c.Limit, boolArg(c.DryRun))
	} else {
		args = append(args, 0, -1, 0)
	}
	for _, s := range p.slots {
		args = append(args, ttl(s, now))
	}
	for _, c := range p.checks {
		if c.dryRun {
			continue
		}
		l := c.limit
		args = append(args, c.slot+1, capArg(l.Tokens), capArg(l.InputTokens), capArg(l.OutputTokens), capArg(l.Requests))
	}
	ks = append(ks, r.leases(), r.marker())
	reply, err := reserveScript.Run(ctx, r.client, ks, args...).Int64Slice()
	if err != nil {
		return nil, Decision{}, fmt.Errorf("quota: reserve in redis: %w", err)
	}
	if len(reply) == 1 && reply[0] == -1 {
		return nil, Decision{}, ErrUnseeded
	}
	if len(reply) != 3+6*n {
		return nil, Decision{}, fmt.Errorf("quota: reserve in redis: reply has %d values, want %d", len(reply), 3+6*n)
	}
	state := make([]counts, n)
	for i := range state {
		v := reply[3+6*i:]
		state[i] = counts{used: Amount{v[0], v[1], v[2]}, reserved: Amount{v[3], v[4], v[5]}}
	}
	// The script decided; the same rule over the same state names why.
	v := p.decide(state, req, reply[2])
	d := Decision{Allowed: reply[0] == 1, Exceeded: v.exceeded, WouldGrant: v.wouldGrant}
	if !d.Allowed {
		d.WouldGrant = Amount{}
		if d.Exceeded == nil || d.Exceeded.DryRun {
			// A race the Go rule cannot see (none is known): say so rather than blame a dry-run limit.
			d.Exceeded = nil
		}
		d.Windows = p.windows(state)
		return nil, d, nil
	}
	d.Granted = Amount{est.Requests, est.InputTokens, reply[1]}
	for i := range state {
		state[i].reserved = state[i].reserved.Add(d.Granted)
	}
	d.Windows = p.windows(state)
	res := &Reservation{Budgets: slices.Clone(req.Budgets), Amount: d.Granted, At: now, ID: reservationIDs.Add(1)}
	if c := req.Concurrency; c != nil {
		res.concurrency = c.Key
	}
	return res, d, nil
}

func boolArg(b bool) int {
	if b {
		return 1
	}
	return 0
}

// Settle implements [Counter].
func (r *Redis) Settle(ctx context.Context, res *Reservation, actual Amount) error {
	if res == nil {
		return errNilReservation
	}
	now := r.now()
	p, err := newPlan(res.Budgets, res.At)
	if err != nil {
		return err
	}
	held := nonNegative(res.Amount)
	actual = nonNegative(actual)
	budgets := keys(res.Budgets)
	if len(p.slots) == 0 && res.concurrency == "" && (actual.IsZero() || len(budgets) == 0) {
		return nil
	}
	ks := make([]string, 0, len(p.slots)+3+len(budgets))
	args := make([]any, 0, 10+len(p.slots))
	args = append(args, r.replica, held.Requests, held.InputTokens, held.OutputTokens, actual.Requests, actual.InputTokens, actual.OutputTokens,
		len(p.slots), boolArg(res.concurrency != ""), settledTTL.Milliseconds())
	for _, s := range p.slots {
		ks = append(ks, r.key(s))
		args = append(args, ttl(s, now))
	}
	if res.concurrency != "" {
		ks = append(ks, r.inflightKey(res.concurrency))
	}
	for _, b := range budgets {
		ks = append(ks, r.lifetimeKey(b))
	}
	ks = append(ks, r.marker(), r.settledKey(res))
	n, err := settleScript.Run(ctx, r.client, ks, args...).Int64()
	if err != nil {
		return fmt.Errorf("quota: settle in redis: %w", err)
	}
	if n < 0 {
		return ErrUnseeded
	}
	return nil
}

// Status implements [Counter].
func (r *Redis) Status(ctx context.Context, b Budget) ([]WindowStatus, error) {
	now := r.now()
	p, err := newPlan([]Budget{b}, now)
	if err != nil {
		return nil, err
	}
	state := make([]counts, len(p.slots))
	if len(p.slots) > 0 {
		keys := make([]string, 0, len(p.slots)+1)
		for _, s := range p.slots {
			keys = append(keys, r.key(s))
		}
		reply, err := statusScript.Run(ctx, r.client, append(keys, r.leases()), now.UnixMilli(), r.replica).Int64Slice()
		if err != nil {
			return nil, fmt.Errorf("quota: status from redis: %w", err)
		}
		if len(reply) != 6*len(p.slots) {
			return nil, fmt.Errorf("quota: status from redis: reply has %d values, want %d", len(reply), 6*len(p.slots))
		}
		for i := range state {
			v := reply[6*i:]
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

// Lifetime implements [Counter].
func (r *Redis) Lifetime(ctx context.Context, budget string) (Amount, error) {
	v, err := r.client.HMGet(ctx, r.lifetimeKey(budget), "req", "in", "out").Result()
	if err != nil {
		return Amount{}, fmt.Errorf("quota: lifetime from redis: %w", err)
	}
	var a [3]int64
	for i, f := range v {
		if s, ok := f.(string); ok {
			if a[i], err = strconv.ParseInt(s, 10, 64); err != nil {
				return Amount{}, fmt.Errorf("quota: lifetime from redis: %s field %d is %q", r.lifetimeKey(budget), i, s)
			}
		}
	}
	return Amount{a[0], a[1], a[2]}, nil
}

// SeedLifetime implements [Counter].
func (r *Redis) SeedLifetime(ctx context.Context, budget string, used Amount) error {
	used = nonNegative(used)
	if used.IsZero() {
		return nil
	}
	if err := seedLifetimeScript.Run(ctx, r.client, []string{r.lifetimeKey(budget)}, used.Requests, used.InputTokens, used.OutputTokens).Err(); err != nil {
		return fmt.Errorf("quota: seed lifetime in redis: %w", err)
	}
	return nil
}

// seedLifetimeScript raises each field of a lifetime hash to at least the
// given value.
//
//	KEYS: the lifetime hash
//	ARGV: req, in, out
var seedLifetimeScript = redis.NewScript(`
local f = {'req', 'in', 'out'}
local cur = redis.call('HMGET', KEYS[1], 'req', 'in', 'out')
for j = 1, 3 do
  if tonumber(ARGV[j]) > (tonumber(cur[j]) or 0) then redis.call('HSET', KEYS[1], f[j], ARGV[j]) end
end
return 1
`)

// Renew renews this replica's lease now.
func (r *Redis) Renew(ctx context.Context) error {
	if err := renewScript.Run(ctx, r.client, []string{r.leases()}, r.replica, r.now().UnixMilli(), r.lease.Milliseconds()).Err(); err != nil {
		return fmt.Errorf("quota: renewing the lease in redis: %w", err)
	}
	return nil
}

// Start renews the lease every Lease/3 until ctx is done, so that the holds
// of long requests outlive the lease while this replica is alive. It is a
// controller-runtime Runnable; a failed renewal is retried at the next tick
// (the next Reserve renews it too).
func (r *Redis) Start(ctx context.Context) error {
	t := time.NewTicker(r.lease / 3)
	defer t.Stop()
	for {
		_ = r.Renew(ctx)
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}
