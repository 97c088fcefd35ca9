package quota

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"
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
// Counts kept by Redis are lost if it restarts without persistence. A marker
// key, set by [Redis.MarkSeeded] once the counts were restored from recorded
// status with [Counter.Seed], tells: while it is missing Reserve fails with
// [ErrUnseeded] instead of admitting against empty counters.
//
// On a single instance (optionally behind Sentinel, [redis.NewFailoverClient])
// the keys are laid out as above. With [RedisOptions.Cluster] they are laid
// out for Redis Cluster, whose scripts may only touch keys of one hash slot:
//
//   - every key of a request's budgets, its in-flight hash and its settled
//     key carry the request's hash tag, the budgets' [Budget.Tag] (a Shared
//     quota's pool key, also for the user's tally; else the user's key):
//     <prefix>{<tag>}<budget key>:<window>:<start unix>, or
//     <prefix>{<budget key>}:... when the tag is the key;
//   - the leases and the seeded marker are kept once per hash slot, at
//     <prefix>leases:{<s>} and <prefix>seeded:{<s>}, where s is a short
//     string that hashes to that slot. [Redis.MarkSeeded] sets all 16384
//     markers; a master that comes back empty lost exactly the markers of
//     its slots, so its requests fail with ErrUnseeded until the next
//     seeding, while the other masters' keep admitting. A replica renews
//     its lease in the slots it holds reservations in.
//
// A failover to a replica that had not yet received the master's last
// writes (replication is asynchronous) loses them without losing the
// marker: those few requests' charges and holds, at most the replication
// lag's worth, go uncounted. A slot migration moves every key of the slot,
// its marker and leases included, each atomically; meanwhile Redis refuses
// with TRYAGAIN a script that would create a key in the slot (every Settle
// does), and the caller retries. A user moved to a quota of another tag (from a
// PerUser quota to a Shared one, or between pools) starts counting its own
// share in the new slot; status keeps what it recorded.
type Redis struct {
	client  redis.UniversalClient
	prefix  string
	now     func() time.Time
	lease   time.Duration
	replica string
	cluster bool

	// held counts this replica's reservations in flight per hash slot
	// (cluster only): Start renews the lease of those slots.
	mu    sync.Mutex
	held  map[uint16]int
	slots map[uint64]uint16
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
	// Cluster lays the keys out for Redis Cluster (see [Redis]). Every
	// replica must agree; the prefix must then have no '{'.
	Cluster bool
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
	return &Redis{client: client, prefix: o.Prefix, now: o.Now, lease: o.Lease, replica: o.ReplicaID, cluster: o.Cluster,
		held: map[uint16]int{}, slots: map[uint64]uint16{}}
}

// ErrUnseeded means the shared store lost its counts (a Redis restart) and
// they must be seeded from status again before admission can be trusted.
var ErrUnseeded = errors.New("quota: the shared counters are not seeded")

// requestTag is the one hash tag of a request's keys: its budgets', else
// its concurrency key's. On a cluster, budgets of different tags cannot
// share a script.
func (r *Redis) requestTag(budgets []Budget, concurrency string) (string, error) {
	if len(budgets) == 0 {
		return concurrency, nil
	}
	tag := TagOf(budgets[0])
	if r.cluster && !validTag(tag) {
		return "", fmt.Errorf("quota: budget %q has no valid hash tag %q", budgets[0].Key, tag)
	}
	for _, b := range budgets[1:] {
		if r.cluster && TagOf(b) != tag {
			return "", fmt.Errorf("quota: budgets %q and %q of one request have different tags %q and %q", budgets[0].Key, b.Key, tag, TagOf(b))
		}
	}
	return tag, nil
}

// name is how key appears in the keys of a request tagged tag: as it is on
// a single instance, else with the tag in braces in front (or in braces
// itself when it is the tag), so that Redis Cluster hashes the tag alone.
func (r *Redis) name(tag, key string) string {
	switch {
	case !r.cluster:
		return key
	case tag == key:
		return "{" + key + "}"
	}
	return "{" + tag + "}" + key
}

// marker is the seeded marker that the keys tagged tag are checked against.
func (r *Redis) marker(tag string) string {
	if !r.cluster {
		return r.prefix + "seeded"
	}
	return r.prefix + "seeded:{" + slotTag(hashSlot(tag)) + "}"
}

// leases is the hash of replica leases for the keys tagged tag.
func (r *Redis) leases(tag string) string {
	if !r.cluster {
		return r.prefix + "leases"
	}
	return r.leasesOf(hashSlot(tag))
}

func (r *Redis) leasesOf(slot uint16) string { return r.prefix + "leases:{" + slotTag(slot) + "}" }

// recent is the set of the marks settled lately in the keys tagged tag's
// slot (see [Redis.Recent]).
func (r *Redis) recent(tag string) string {
	if !r.cluster {
		return r.prefix + "recent"
	}
	return r.recentOf(hashSlot(tag))
}

func (r *Redis) recentOf(slot uint16) string { return r.prefix + "recent:{" + slotTag(slot) + "}" }

// recentKeep is how long the recent sets keep a mark: three leases and ten
// seconds, so that a replica that died is found (its lease expired, then the
// survivors' next sync) while the marks of its last charges are still there.
func (r *Redis) recentKeep() time.Duration { return 3*r.lease + 10*time.Second }

// Recent returns the marks ([Reservation.Marks]) of the charges settled at
// or after since, each with when it was last settled: what a replica that
// died may have charged without telling the objects' writers. The marks are
// kept for three leases and ten seconds. On a cluster it reads the recent set of every
// hash slot, 16,384 reads in pipelines of 1,024.
func (r *Redis) Recent(ctx context.Context, since time.Time) (map[string]time.Time, error) {
	out := map[string]time.Time{}
	by := &redis.ZRangeBy{Min: strconv.FormatInt(since.UnixMilli(), 10), Max: "+inf"}
	add := func(zs []redis.Z) {
		for _, z := range zs {
			m, ok := z.Member.(string)
			if !ok {
				continue
			}
			if at := time.UnixMilli(int64(z.Score)); at.After(out[m]) {
				out[m] = at
			}
		}
	}
	if !r.cluster {
		zs, err := r.client.ZRangeByScoreWithScores(ctx, r.prefix+"recent", by).Result()
		if err != nil {
			return nil, fmt.Errorf("quota: reading the recent charges: %w", err)
		}
		add(zs)
		return out, nil
	}
	const batch = 1024
	for from := 0; from < hashSlots; from += batch {
		p := r.client.Pipeline()
		cmds := make([]*redis.ZSliceCmd, 0, batch)
		for s := from; s < from+batch; s++ {
			cmds = append(cmds, p.ZRangeByScoreWithScores(ctx, r.recentOf(uint16(s)), by))
		}
		if _, err := p.Exec(ctx); err != nil {
			return nil, fmt.Errorf("quota: reading the recent charges: %w", err)
		}
		for _, c := range cmds {
			add(c.Val())
		}
	}
	return out, nil
}

// settledKey marks a reservation settled; the replica id makes the
// process-wide reservation id unique across replicas.
func (r *Redis) settledKey(tag string, res *Reservation) string {
	t := ""
	if r.cluster {
		t = "{" + tag + "}:"
	}
	return r.prefix + "settled:" + t + r.replica + ":" + strconv.FormatUint(res.ID, 36)
}

// lifetimeKey is the hash of a budget's lifetime usage. It never expires:
// it is one small hash per user, and status restores it after a loss.
func (r *Redis) lifetimeKey(tag, budget string) string {
	return r.prefix + r.name(tag, budget) + ":lifetime"
}

// inflightKey is the hash counting a concurrency key's requests in flight.
func (r *Redis) inflightKey(tag, k string) string { return r.prefix + "inflight:" + r.name(tag, k) }

// MarkSeeded records that the counters hold what status recorded. Call it
// after seeding; it never expires. On a cluster it marks every hash slot.
func (r *Redis) MarkSeeded(ctx context.Context) error {
	if !r.cluster {
		return r.client.Set(ctx, r.marker(""), "1", 0).Err()
	}
	const batch = 1024
	for from := 0; from < hashSlots; from += batch {
		p := r.client.Pipeline()
		for s := from; s < from+batch; s++ {
			p.Set(ctx, r.prefix+"seeded:{"+slotTag(uint16(s))+"}", "1", 0)
		}
		if _, err := p.Exec(ctx); err != nil {
			return fmt.Errorf("quota: marking the counters seeded: %w", err)
		}
	}
	return nil
}

func (r *Redis) key(tag string, s slot) string {
	return r.prefix + r.name(tag, s.key) + ":" + string(s.window) + ":" + strconv.FormatInt(s.start.Unix(), 10)
}

// modelsKey is the hash of a window's usage split by model: one field per
// model ([MaxModels] at most, then "other"), "req in cin out cost".
func (r *Redis) modelsKey(tag string, s slot) string { return r.key(tag, s) + ":models" }

// track remembers a reservation held in tag's hash slot, whose lease Start
// must then renew; untrack forgets it once settled.
func (r *Redis) track(id uint64, tag string) {
	if !r.cluster {
		return
	}
	s := hashSlot(tag)
	r.mu.Lock()
	defer r.mu.Unlock()
	r.slots[id] = s
	r.held[s]++
}

func (r *Redis) untrack(id uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	s, ok := r.slots[id]
	if !ok {
		return
	}
	delete(r.slots, id)
	if r.held[s]--; r.held[s] <= 0 {
		delete(r.held, s)
	}
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

// Reserve implements [Counter]. See the admission rule in plan.go.
func (r *Redis) Reserve(ctx context.Context, req Request) (*Reservation, Decision, error) {
	now := r.now()
	p, err := newPlan(req.Budgets, now)
	if err != nil {
		return nil, Decision{}, err
	}
	var conc string
	if req.Concurrency != nil {
		conc = req.Concurrency.Key
	}
	tag, err := r.requestTag(req.Budgets, conc)
	if err != nil {
		return nil, Decision{}, err
	}
	est := newEstimate(req.Estimate, req.Price)
	n := len(p.slots)
	ks := make([]string, 0, n+3)
	args := make([]any, 0, 14+n+6*len(p.checks))
	args = append(args, r.replica, now.UnixMilli(), r.lease.Milliseconds(), max(req.OutputStep, 0),
		est.Requests, est.InputTokens, est.OutputTokens, costArg(est.Cost), costArg(est.inCost), est.outPrice, n)
	for _, s := range p.slots {
		ks = append(ks, r.key(tag, s))
	}
	if c := req.Concurrency; c != nil {
		ks = append(ks, r.inflightKey(tag, c.Key))
		args = append(args, 1, c.Limit, boolArg(c.DryRun))
	} else {
		args = append(args, 0, -1, 0)
	}
	for _, s := range p.slots {
		args = append(args, ttl(s, now))
	}
	for _, c := range p.checks {
		if !enforcing.applies(c) {
			continue
		}
		l := c.limit
		costCap := "-1"
		if l.Cost != nil {
			costCap = costArg(*l.Cost)
		}
		args = append(args, c.slot+1, capArg(l.Tokens), capArg(l.InputTokens), capArg(l.OutputTokens), capArg(l.Requests), costCap)
	}
	ks = append(ks, r.leases(tag), r.marker(tag))
	reply, err := reserveScript.Run(ctx, r.client, ks, args...).Slice()
	if err != nil {
		return nil, Decision{}, fmt.Errorf("quota: reserve in redis: %w", err)
	}
	if len(reply) == 1 {
		if v, ok := reply[0].(int64); ok && v == -1 {
			return nil, Decision{}, ErrUnseeded
		}
	}
	rd := replyReader{v: reply}
	ok, grant, running := rd.int(), rd.int(), rd.int()
	state := make([]counts, n)
	for i := range state {
		state[i] = rd.counts()
	}
	if rd.err != nil || len(rd.v) != 0 {
		return nil, Decision{}, fmt.Errorf("quota: reserve in redis: unexpected reply %v", reply)
	}
	// The script decided; the same rule over the same state names why.
	v := p.decide(state, req, running)
	d := Decision{Allowed: ok == 1, Exceeded: v.exceeded, WouldGrant: v.wouldGrant, Overflow: ok == 1 && v.overage != nil, Overage: v.overage}
	if !d.Allowed {
		d.WouldGrant = Amount{}
		if d.Exceeded == nil || d.Exceeded.DryRun {
			// A race the Go rule cannot see (none is known): say so rather than blame a dry-run limit.
			d.Exceeded = nil
		}
		d.Windows = p.windows(state)
		return nil, d, nil
	}
	d.Granted = est.withOutput(grant)
	for i := range state {
		state[i].reserved = state[i].reserved.Add(d.Granted)
	}
	d.Windows = p.windows(state)
	res := &Reservation{Budgets: slices.Clone(req.Budgets), Amount: d.Granted, At: now, Model: req.Model, ID: reservationIDs.Add(1)}
	if d.Overflow {
		res.Overflow = overflowBudgets(req.Budgets)
	}
	if c := req.Concurrency; c != nil {
		res.concurrency = c.Key
	}
	r.track(res.ID, tag)
	return res, d, nil
}

func boolArg(b bool) int {
	if b {
		return 1
	}
	return 0
}

// costArg writes a cost for the scripts: a decimal string, exact whatever
// its size (see moneyLua).
func costArg(c int64) string { return strconv.FormatInt(max(c, 0), 10) }

// replyReader takes the values of a script's reply in order, keeping the
// first error.
type replyReader struct {
	v   []any
	err error
}

func (r *replyReader) next() any {
	if len(r.v) == 0 {
		r.err = cmp.Or(r.err, errors.New("reply too short"))
		return nil
	}
	x := r.v[0]
	r.v = r.v[1:]
	return x
}

func (r *replyReader) int() int64 {
	x, ok := r.next().(int64)
	if !ok {
		r.err = cmp.Or(r.err, errors.New("not an integer"))
	}
	return x
}

func (r *replyReader) str() string {
	x, ok := r.next().(string)
	if !ok {
		r.err = cmp.Or(r.err, errors.New("not a string"))
	}
	return x
}

func (r *replyReader) cost() int64 {
	c, err := strconv.ParseInt(r.str(), 10, 64)
	if err != nil {
		r.err = cmp.Or(r.err, err)
	}
	return c
}

// counts reads one window's state (the scripts' pushCounts).
func (r *replyReader) counts() counts {
	var c counts
	c.used.Requests, c.used.InputTokens, c.used.CachedInputTokens, c.used.OutputTokens = r.int(), r.int(), r.int(), r.int()
	c.used.Cost = r.cost()
	c.reserved.Requests, c.reserved.InputTokens, c.reserved.OutputTokens = r.int(), r.int(), r.int()
	c.reserved.Cost = r.cost()
	return c
}

// packModel writes a model's usage as the models hash keeps it.
func packModel(a Amount) string {
	return fmt.Sprintf("%d %d %d %d %d", a.Requests, a.InputTokens, a.CachedInputTokens, a.OutputTokens, max(a.Cost, 0))
}

func unpackModel(s string) (Amount, error) {
	var a Amount
	if _, err := fmt.Sscanf(s, "%d %d %d %d %d", &a.Requests, &a.InputTokens, &a.CachedInputTokens, &a.OutputTokens, &a.Cost); err != nil {
		return Amount{}, fmt.Errorf("model usage %q: %w", s, err)
	}
	return a, nil
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
	if len(res.Overflow) > 0 {
		// The overflow tallies' windows are charged like the budgets' own;
		// they hold nothing, so releasing the hold there releases nothing.
		over, err := newPlan(res.Overflow, res.At)
		if err != nil {
			return err
		}
		p.slots = append(p.slots, over.slots...)
	}
	held := nonNegative(res.Amount)
	actual = nonNegative(actual)
	budgets := keys(res.Budgets)
	if len(p.slots) == 0 && res.concurrency == "" && (actual.IsZero() || len(budgets) == 0) {
		r.untrack(res.ID)
		return nil
	}
	tag, err := r.requestTag(res.Budgets, res.concurrency)
	if err != nil {
		return err
	}
	ks := make([]string, 0, 2*len(p.slots)+3+len(budgets))
	args := make([]any, 0, 14+len(p.slots))
	args = append(args, r.replica, held.Requests, held.InputTokens, held.OutputTokens, costArg(held.Cost),
		actual.Requests, actual.InputTokens, actual.CachedInputTokens, actual.OutputTokens, costArg(actual.Cost),
		len(p.slots), boolArg(res.concurrency != ""), settledTTL.Milliseconds(), res.Model)
	for _, s := range p.slots {
		ks = append(ks, r.key(tag, s))
		args = append(args, ttl(s, now))
	}
	for _, s := range p.slots {
		ks = append(ks, r.modelsKey(tag, s))
	}
	if res.concurrency != "" {
		ks = append(ks, r.inflightKey(tag, res.concurrency))
	}
	for _, b := range budgets {
		ks = append(ks, r.lifetimeKey(tag, b))
	}
	ks = append(ks, r.recent(tag), r.marker(tag), r.settledKey(tag, res))
	args = append(args, now.UnixMilli(), r.recentKeep().Milliseconds())
	for _, m := range res.Marks {
		args = append(args, m)
	}
	n, err := settleScript.Run(ctx, r.client, ks, args...).Int64()
	if err != nil {
		return fmt.Errorf("quota: settle in redis: %w", err)
	}
	if n < 0 {
		return ErrUnseeded
	}
	r.untrack(res.ID)
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
		tag := TagOf(b)
		keys := make([]string, 0, 2*len(p.slots)+1)
		for _, s := range p.slots {
			keys = append(keys, r.key(tag, s))
		}
		for _, s := range p.slots {
			keys = append(keys, r.modelsKey(tag, s))
		}
		reply, err := statusScript.Run(ctx, r.client, append(keys, r.leases(tag)), now.UnixMilli(), r.replica).Slice()
		if err != nil {
			return nil, fmt.Errorf("quota: status from redis: %w", err)
		}
		rd := replyReader{v: reply}
		for i := range state {
			state[i] = rd.counts()
			for range rd.int() {
				m := ModelAmount{Model: rd.str()}
				if m.Amount, err = unpackModel(rd.str()); err != nil {
					rd.err = cmp.Or(rd.err, err)
				}
				state[i].models = append(state[i].models, m)
			}
			state[i].models = sortModels(state[i].models)
		}
		if rd.err != nil || len(rd.v) != 0 {
			return nil, fmt.Errorf("quota: status from redis: unexpected reply %v: %w", reply, cmp.Or(rd.err, errors.New("values left over")))
		}
	}
	return p.windows(state), nil
}

// Seed implements [Counter].
func (r *Redis) Seed(ctx context.Context, b Budget, w llmv1alpha1.Window, start time.Time, used Amount, models []ModelAmount) error {
	now := r.now()
	s, ok, err := seedSlot(b.Key, w, start, now)
	if err != nil || !ok {
		return err
	}
	used = nonNegative(used)
	if used.IsZero() && len(models) == 0 {
		return nil
	}
	args := []any{used.Requests, used.InputTokens, used.CachedInputTokens, used.OutputTokens, costArg(used.Cost), ttl(s, now)}
	for _, m := range models {
		args = append(args, m.Model, packModel(nonNegative(m.Amount)))
	}
	tag := TagOf(b)
	if err := seedScript.Run(ctx, r.client, []string{r.key(tag, s), r.modelsKey(tag, s)}, args...).Err(); err != nil {
		return fmt.Errorf("quota: seed in redis: %w", err)
	}
	return nil
}

// Lifetime implements [Counter].
func (r *Redis) Lifetime(ctx context.Context, b Budget) (Amount, error) {
	key := r.lifetimeKey(TagOf(b), b.Key)
	v, err := r.client.HMGet(ctx, key, "req", "in", "cin", "out", "cost").Result()
	if err != nil {
		return Amount{}, fmt.Errorf("quota: lifetime from redis: %w", err)
	}
	var a [5]int64
	for i, f := range v {
		if s, ok := f.(string); ok {
			if a[i], err = strconv.ParseInt(s, 10, 64); err != nil {
				return Amount{}, fmt.Errorf("quota: lifetime from redis: %s field %d is %q", key, i, s)
			}
		}
	}
	return Amount{Requests: a[0], InputTokens: a[1], CachedInputTokens: a[2], OutputTokens: a[3], Cost: a[4]}, nil
}

// SeedLifetime implements [Counter].
func (r *Redis) SeedLifetime(ctx context.Context, b Budget, used Amount) error {
	used = nonNegative(used)
	if used.IsZero() {
		return nil
	}
	if err := seedLifetimeScript.Run(ctx, r.client, []string{r.lifetimeKey(TagOf(b), b.Key)},
		used.Requests, used.InputTokens, used.CachedInputTokens, used.OutputTokens, costArg(used.Cost)).Err(); err != nil {
		return fmt.Errorf("quota: seed lifetime in redis: %w", err)
	}
	return nil
}

// Renew renews this replica's lease now: on a cluster, in every hash slot
// it holds reservations in (Reserve renews it in the slot it reserves in).
func (r *Redis) Renew(ctx context.Context) error {
	keys := []string{r.leases("")}
	if r.cluster {
		r.mu.Lock()
		keys = keys[:0]
		for s := range r.held {
			keys = append(keys, r.leasesOf(s))
		}
		r.mu.Unlock()
	}
	now := r.now().UnixMilli()
	for _, k := range keys {
		if err := renewScript.Run(ctx, r.client, []string{k}, r.replica, now, r.lease.Milliseconds()).Err(); err != nil {
			return fmt.Errorf("quota: renewing the lease in redis: %w", err)
		}
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

// Client is the Redis client the counter uses, for the proxy's other state
// shared between replicas (the fair queues' counters).
func (r *Redis) Client() redis.UniversalClient { return r.client }
