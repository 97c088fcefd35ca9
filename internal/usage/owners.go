package usage

import (
	"context"
	"crypto/sha1" //nolint:gosec // a rendezvous hash, not a security one; Redis's Lua has sha1hex
	"encoding/hex"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// One writer per object.
//
// With several replicas on one Redis counter, a user's requests land on
// every replica, and each replica that charged the user would write its
// status: R replicas, up to R writes of the same absolute totals per flush.
// With [Owners], each object's status is written by exactly one live
// replica, its owner by rendezvous hashing over the live replicas (the
// highest sha1(replica/object) wins). A replica that charged an object
// does not write it: it marks it changed in its owner's hash in Redis
// (changed:<owner>, object → "latest charge in ms|alert|marks"), and the owner
// writes it and removes the mark if no newer one came meanwhile. The marks
// live in Redis until written, so an owner that dies loses none: the first
// replica to see its lease expired hands its marks to their new owners, in
// one script. A replica that joins takes the objects that hash to it from
// the next charge on; marks already made stay with the old owner, which
// writes them. Every key sits under one hash tag, so a Redis Cluster serves
// the scripts from one slot.
//
// A replica sends its marks every tick (100 ms), so one that is killed
// (SIGKILL, a node lost) has not sent those of its last charges. They are
// not lost: the counter records each charge's marks with the charge, in the
// same script ([quota.Redis.Recent]). The replica that finds a lease
// expired without a clean [Owners.Leave] reads the marks of the charges
// settled since a little before that lease was last renewed and sends them
// to their owners, who write those objects whose status is behind (the
// others' writes find nothing to change).

// Owners decides which replica writes each object's status, and carries the
// marks of changed objects to their owners.
type Owners interface {
	// Mark records that key (an object) was charged at at, alerting or not.
	// It is buffered and sent to the owner by the next Sync.
	Mark(key string, at time.Time, alert bool)
	// Owns reports whether this replica writes key's status.
	Owns(key string) bool
	// Send sends the buffered marks to their owners.
	Send(ctx context.Context) error
	// Sync renews this replica's lease, hands the marks of replicas whose
	// lease expired to their new owners, sends the buffered marks, and
	// returns the marks this replica is to write.
	Sync(ctx context.Context) ([]OwnedMark, error)
	// Written removes mark once its object was written, unless a newer mark
	// replaced it meanwhile.
	Written(ctx context.Context, m OwnedMark) error
	// Leave hands this replica's marks to the other live replicas and drops
	// its lease: a clean stop.
	Leave(ctx context.Context) error
}

// RecentMarks returns the marks of the charges settled at or after since,
// each with when it was last settled ([quota.Redis.Recent]).
type RecentMarks func(ctx context.Context, since time.Time) (map[string]time.Time, error)

// recoverSlack is how long before a killed replica's last renewal its
// charges are taken as possibly unsent: it sends them every tick, and a
// stalled send is retried with the next.
const recoverSlack = 5 * time.Second

// OwnedMark is a changed object this replica is to write.
type OwnedMark struct {
	Key   string
	At    time.Time
	Alert bool
	// value is the mark as Redis holds it.
	value string
}

// ownersTag keeps every key of the ownership scripts in one Redis Cluster
// slot.
const ownersTag = "{llmq-owners}"

// RedisOwners is [Owners] in Redis.
type RedisOwners struct {
	client redis.UniversalClient
	prefix string
	id     string
	lease  time.Duration
	now    func() time.Time

	mu sync.Mutex
	// live are the replicas with an unexpired lease, as last read.
	live []string
	// marks buffered for their owners: object → mark.
	marks map[string]mark
	// recent reads the charges' marks from the counter (nil: never).
	recent RecentMarks
	// lostSince, when not zero, is from when the marks of a killed
	// replica's charges are still to be recovered (a read that failed is
	// retried at the next Sync).
	lostSince time.Time
}

// RecoverWith makes o recover the unsent marks of killed replicas from
// recent, the counter's record of the charges settled lately. Call it
// before the first Sync.
func (o *RedisOwners) RecoverWith(recent RecentMarks) { o.recent = recent }

// mark is a changed object: its latest charge, whether one alerted, and
// how many charges marked it, so that every new mark changes the value
// the owner compares when it clears what it wrote.
type mark struct {
	at    int64
	alert bool
	n     int64
}

func (m mark) String() string {
	alert := "0"
	if m.alert {
		alert = "1"
	}
	return strconv.FormatInt(m.at, 10) + "|" + alert + "|" + strconv.FormatInt(m.n, 10)
}

// NewRedisOwners returns the ownership of replica id, whose lease lasts
// lease (the same as the counter's: a replica that stops renewing for that
// long is taken for dead).
func NewRedisOwners(client redis.UniversalClient, prefix, id string, lease time.Duration, now func() time.Time) *RedisOwners {
	if now == nil {
		now = time.Now
	}
	return &RedisOwners{client: client, prefix: prefix + ownersTag, id: id, lease: lease, now: now,
		live: []string{id}, marks: map[string]mark{}}
}

func (o *RedisOwners) leasesKey() string           { return o.prefix + ":leases" }
func (o *RedisOwners) changedKey(id string) string { return o.prefix + ":changed:" + id }

// owner is the rendezvous owner of key among live.
func owner(live []string, key string) string {
	best, bestH := "", ""
	for _, id := range live {
		sum := sha1.Sum([]byte(id + "/" + key)) //nolint:gosec // see the import
		if h := hex.EncodeToString(sum[:]); best == "" || h > bestH {
			best, bestH = id, h
		}
	}
	return best
}

// Mark implements [Owners].
func (o *RedisOwners) Mark(key string, at time.Time, alert bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	m := o.marks[key]
	m.at = max(m.at, at.UnixMilli())
	m.alert = m.alert || alert
	m.n++
	o.marks[key] = m
}

// Owns implements [Owners].
func (o *RedisOwners) Owns(key string) bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	return owner(o.live, key) == o.id
}

// mergeMarksLua merges two marks: the later charge, an alert if either,
// the marks of both.
const mergeMarksLua = `
local function merge(a, b)
  if not a then return b end
  local aat, aalert, an = string.match(a, '^(%d+)|(%d)|(%d+)$')
  local bat, balert, bn = string.match(b, '^(%d+)|(%d)|(%d+)$')
  local alert = '0'
  if aalert == '1' or balert == '1' then alert = '1' end
  return string.format('%d|%s|%d', math.max(tonumber(aat), tonumber(bat)), alert, tonumber(an) + tonumber(bn))
end
`

// markScript adds marks to one owner's hash.
//
//	KEYS: the owner's changed hash
//	ARGV: pairs of an object and its mark ("ms|alert|marks")
var markScript = redis.NewScript(mergeMarksLua + `
for i = 1, #ARGV, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], merge(redis.call('HGET', KEYS[1], ARGV[i]), ARGV[i + 1]))
end
return 1
`)

// syncScript renews a lease, hands the marks of replicas whose lease
// expired to their rendezvous owners among the live ones, and returns the
// live replicas and when the leases of those that were killed (not left)
// were last renewed. A lease of 0 is a clean leave: the lease is stored
// as minus now, expired and told apart from a killed replica's, and only
// the leaving replica's own marks are handed on.
//
//	KEYS:  the leases hash
//	ARGV:  prefix of the changed hashes, replica id, now (ms), lease (ms)
//	reply: the live replicas, and the last renewals (ms) of the killed ones
var syncScript = redis.NewScript(mergeMarksLua + `
local prefix, id, now, lease = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
if lease > 0 then redis.call('HSET', KEYS[1], id, now + lease) else redis.call('HSET', KEYS[1], id, -now) end
local lv = redis.call('HGETALL', KEYS[1])
local live, dead, killed = {}, {}, {}
for i = 1, #lv, 2 do
  local exp = tonumber(lv[i + 1])
  if exp > now then
    live[#live + 1] = lv[i]
  elseif lease > 0 or lv[i] == id then
    -- A replica leaving hands on its own marks only: the others' are for
    -- a replica that stays, to recover what a killed one did not send.
    dead[#dead + 1] = lv[i]
    if exp > 0 then killed[#killed + 1] = exp - lease end
  end
end
if #live == 0 then return {live, {}} end
local function owner(key)
  local best, bestH = nil, nil
  for _, r in ipairs(live) do
    local h = redis.sha1hex(r .. '/' .. key)
    if best == nil or h > bestH then best, bestH = r, h end
  end
  return best
end
for _, d in ipairs(dead) do
  local src = prefix .. d
  local marks = redis.call('HGETALL', src)
  for i = 1, #marks, 2 do
    local dst = prefix .. owner(marks[i])
    redis.call('HSET', dst, marks[i], merge(redis.call('HGET', dst, marks[i]), marks[i + 1]))
  end
  redis.call('DEL', src)
  redis.call('HDEL', KEYS[1], d)
end
return {live, killed}
`)

// writtenScript removes a mark that is still the one written.
//
//	KEYS: the changed hash
//	ARGV: the object, its mark as written
var writtenScript = redis.NewScript(`
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then redis.call('HDEL', KEYS[1], ARGV[1]) end
return 1
`)

// Sync implements [Owners].
func (o *RedisOwners) Sync(ctx context.Context) ([]OwnedMark, error) {
	now := o.now()
	reply, err := syncScript.Run(ctx, o.client, []string{o.leasesKey()},
		o.prefix+":changed:", o.id, now.UnixMilli(), o.lease.Milliseconds()).Slice()
	if err != nil {
		return nil, fmt.Errorf("usage: renewing the writer lease: %w", err)
	}
	live, killed, err := parseSyncReply(reply)
	if err != nil {
		return nil, err
	}
	o.mu.Lock()
	o.live = live
	for _, at := range killed {
		if since := at.Add(-recoverSlack); o.lostSince.IsZero() || since.Before(o.lostSince) {
			o.lostSince = since
		}
	}
	o.mu.Unlock()
	if err := o.recoverLost(ctx); err != nil {
		return nil, err
	}
	if err := o.Send(ctx); err != nil {
		return nil, err
	}
	all, err := o.client.HGetAll(ctx, o.changedKey(o.id)).Result()
	if err != nil {
		return nil, fmt.Errorf("usage: reading the objects to write: %w", err)
	}
	out := make([]OwnedMark, 0, len(all))
	for k, v := range all {
		at, rest, ok := strings.Cut(v, "|")
		ms, err := strconv.ParseInt(at, 10, 64)
		if !ok || err != nil {
			continue
		}
		out = append(out, OwnedMark{Key: k, At: time.UnixMilli(ms), Alert: strings.HasPrefix(rest, "1|"), value: v})
	}
	return out, nil
}

// parseSyncReply reads syncScript's reply: the live replicas, and the last
// renewals of the killed ones.
func parseSyncReply(reply []any) (live []string, killed []time.Time, err error) {
	if len(reply) != 2 {
		return nil, nil, fmt.Errorf("usage: renewing the writer lease: unexpected reply %v", reply)
	}
	ls, _ := reply[0].([]any)
	for _, v := range ls {
		if s, ok := v.(string); ok {
			live = append(live, s)
		}
	}
	ks, _ := reply[1].([]any)
	for _, v := range ks {
		if ms, ok := v.(int64); ok {
			killed = append(killed, time.UnixMilli(ms))
		}
	}
	return live, killed, nil
}

// recoverLost marks again, for their owners, the objects charged since
// lostSince: a killed replica may not have sent their marks.
func (o *RedisOwners) recoverLost(ctx context.Context) error {
	o.mu.Lock()
	since := o.lostSince
	o.mu.Unlock()
	if since.IsZero() || o.recent == nil {
		return nil
	}
	marks, err := o.recent(ctx, since)
	if err != nil {
		return fmt.Errorf("usage: reading the charges of a replica that was killed: %w", err)
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	for k, at := range marks {
		m := o.marks[k]
		m.at = max(m.at, at.UnixMilli())
		m.n++
		o.marks[k] = m
	}
	if o.lostSince.Equal(since) {
		o.lostSince = time.Time{}
	}
	return nil
}

// Send implements [Owners], routing each mark by the live replicas as last
// read. Marks sent to an owner that has died meanwhile are handed on with
// the rest of its marks.
func (o *RedisOwners) Send(ctx context.Context) error {
	o.mu.Lock()
	if len(o.marks) == 0 {
		o.mu.Unlock()
		return nil
	}
	marks := o.marks
	o.marks = map[string]mark{}
	byOwner := map[string][]any{}
	for k, m := range marks {
		w := owner(o.live, k)
		byOwner[w] = append(byOwner[w], k, m.String())
	}
	o.mu.Unlock()
	for w, args := range byOwner {
		if err := markScript.Run(ctx, o.client, []string{o.changedKey(w)}, args...).Err(); err != nil {
			o.requeue(marks)
			return fmt.Errorf("usage: marking changed objects for their writer: %w", err)
		}
	}
	return nil
}

// requeue puts marks that could not be sent back into the buffer.
func (o *RedisOwners) requeue(marks map[string]mark) {
	o.mu.Lock()
	defer o.mu.Unlock()
	for k, m := range marks {
		cur := o.marks[k]
		cur.at = max(cur.at, m.at)
		cur.alert = cur.alert || m.alert
		cur.n += m.n
		o.marks[k] = cur
	}
}

// Written implements [Owners].
func (o *RedisOwners) Written(ctx context.Context, m OwnedMark) error {
	return writtenScript.Run(ctx, o.client, []string{o.changedKey(o.id)}, m.Key, m.value).Err()
}

// Leave implements [Owners]: a sync with a lease of zero expires this
// replica's lease at once, as a clean leave, so the same script hands its
// marks on to the live replicas (or leaves them for the next one, when none
// is live), and nobody looks for marks it did not send.
func (o *RedisOwners) Leave(ctx context.Context) error {
	return syncScript.Run(ctx, o.client, []string{o.leasesKey()},
		o.prefix+":changed:", o.id, o.now().UnixMilli(), 0).Err()
}
