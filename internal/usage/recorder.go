// Package usage owns the write-back of usage to status: it writes what the
// quota counters hold into status.usage, status.lifetime and
// status.lastRequestAt of the LLMUsers (and, for Shared quotas, the LLMQuotas)
// whose requests the proxy settled. [SeedFromStatus] goes the other way: it
// restores a [quota.Counter] from what status recorded, so that a restarted
// replica still enforces the budget already spent.
//
// Status is written as absolute values read from the counter that owns them
// (the in-process counter with one replica, Redis with several), never as
// deltas: a write that is retried, because its answer was lost after the API
// server applied it, writes the same values again. Nothing is counted twice,
// whoever writes, however often.
//
// With the in-process counter, each replica counts only what it served, and
// two run side by side through every rolling update. Before each write the
// Recorder shows the counter what status records ([quota.Replica.Merge]),
// and it adds what another replica recorded there beyond what it had seen;
// the totals it writes then hold both replicas' usage, and status is exact
// across the update.
//
// Writes are rationed: at most WriteRate per second per replica, spent first
// on the objects whose last request crossed an alert threshold or exhausted a
// window, then on those whose status is the most out of date; an object is
// written at most once per FlushInterval (once a second when alerting), so
// its status is at most a flush interval stale while the rate allows.
//
// Usage follows objects by uid: a charge names the uid of the LLMUser (and
// LLMQuota) it belongs to, and is written to nobody's status when that
// object was deleted, even if another took its name.
package usage

import (
	"cmp"
	"context"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/time/rate"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	llmv1alpha1 "github.com/llm-user-operator/llm-user-operator/api/v1alpha1"
	"github.com/llm-user-operator/llm-user-operator/internal/quota"
)

// Options configures [New]. Zero fields take defaults.
type Options struct {
	// Counter holds the usage to write: the counter admission uses. Required.
	Counter quota.Counter
	// Reader reads the objects to write (an informer cache in production;
	// default: the client). A conflict re-reads through APIReader.
	Reader client.Reader
	// APIReader re-reads an object after a write conflict (default: the
	// client), so that the retry sees the write that won.
	APIReader client.Reader
	// FlushInterval is how stale an object's status may be while the write
	// rate allows, and how often at most it is written (default 10s).
	FlushInterval time.Duration
	// WriteRate bounds this replica's status writes per second (default 200).
	WriteRate float64
	// Workers bounds the status writes in flight (default 32: at the
	// default rate of 200 a second, enough for writes that take 150 ms on a
	// loaded API server).
	Workers int
	// Now is the clock (default time.Now).
	Now func() time.Time
	// Observe, when set, hears the windows of every budget read to write
	// status (the budget gauges), with the name of the budget's quota.
	Observe func(b *quota.Budget, quotaName string, ws []quota.WindowStatus)
	// Replica, when set, is the replica-local part of Counter (the
	// in-process counter): before each write it merges what status records
	// beyond what it has seen, another replica's usage (see [quota.Replica]).
	// Default: Counter itself, when it is one.
	Replica quota.Replica
	// Owners, when set, makes each object's status written by one replica
	// only, its owner (see [Owners]); the others mark what they charged for
	// it. Default: every replica writes what it charged.
	Owners Owners
	// FieldOwner is the field manager of the status writes (default "llm-user-proxy").
	FieldOwner string
	// Logger receives write failures (default: discard).
	Logger logr.Logger
	// Registerer receives the Recorder's metrics; nil registers none. New
	// panics if they are registered already, like prometheus.MustRegister.
	Registerer prometheus.Registerer
}

// DefaultFieldOwner is the field manager of the proxy's status writes.
const DefaultFieldOwner = "llm-user-proxy"

// maxAttempts bounds the writes of one object in one turn: the first and its
// retries after conflicts. Past it the object waits for its next turn.
const maxAttempts = 4

// alertInterval is how often at most an alerting object is written.
const alertInterval = time.Second

// tick is how often the Recorder looks for objects due.
const tick = 100 * time.Millisecond

// Recorder writes usage to status. The proxy tells it, with [Recorder.Charge],
// which objects a settled request changed; [Recorder.Start] writes them, and
// any object whose status still shows a window that has ended, at the write
// rate. It is a controller-runtime manager.Runnable that needs no leader
// election: every replica writes the objects it charged. It is safe for
// concurrent use.
type Recorder struct {
	client     client.Client
	reader     client.Reader
	apiReader  client.Reader
	counter    quota.Counter
	replica    quota.Replica
	observe    func(b *quota.Budget, quotaName string, ws []quota.WindowStatus)
	interval   time.Duration
	workers    int
	limiter    *rate.Limiter
	now        func() time.Time
	fieldOwner string
	log        logr.Logger
	metrics    *recorderMetrics
	owners     Owners
	// nextSync is when the owners' marks are next exchanged.
	nextSync time.Time

	mu sync.Mutex
	// objects are those with something to write, or written lately.
	objects map[objKey]*objState
}

// New returns a Recorder that writes status through c. Start it (or call
// [Recorder.Flush]) to write anything.
func New(c client.Client, opts Options) *Recorder {
	r := &Recorder{
		client:     c,
		reader:     opts.Reader,
		apiReader:  opts.APIReader,
		counter:    opts.Counter,
		replica:    opts.Replica,
		observe:    opts.Observe,
		interval:   opts.FlushInterval,
		workers:    opts.Workers,
		now:        opts.Now,
		owners:     opts.Owners,
		fieldOwner: opts.FieldOwner,
		log:        opts.Logger,
		objects:    make(map[objKey]*objState),
	}
	if r.reader == nil {
		r.reader = c
	}
	if r.replica == nil {
		r.replica, _ = opts.Counter.(quota.Replica)
	}
	if r.apiReader == nil {
		r.apiReader = c
	}
	if r.interval <= 0 {
		r.interval = 10 * time.Second
	}
	if r.workers <= 0 {
		r.workers = 32
	}
	writeRate := opts.WriteRate
	if writeRate <= 0 {
		writeRate = 200
	}
	// The burst is one tick's worth: enough for the rate between two
	// ticks, and no more, so that after a quiet spell the API server does
	// not take a second's worth of writes on top of the rate.
	r.limiter = rate.NewLimiter(rate.Limit(writeRate), max(1, int(math.Ceil(writeRate*tick.Seconds()))))
	if r.now == nil {
		r.now = time.Now
	}
	if r.fieldOwner == "" {
		r.fieldOwner = DefaultFieldOwner
	}
	if r.log.GetSink() == nil {
		r.log = logr.Discard()
	}
	r.metrics = newRecorderMetrics(opts.Registerer, r.Pending, r.Lag)
	return r
}

// kind says which object is written.
type kind uint8

const (
	kindUser kind = iota
	kindQuota
)

func (k kind) String() string {
	if k == kindQuota {
		return "LLMQuota"
	}
	return "LLMUser"
}

// objKey names one object, by uid: usage is written only to the object it
// was charged to. An empty uid matches any.
type objKey struct {
	kind                 kind
	namespace, name, uid string
}

func (k objKey) namespacedName() types.NamespacedName {
	return types.NamespacedName{Namespace: k.namespace, Name: k.name}
}

func (k objKey) newObject() client.Object {
	if k.kind == kindQuota {
		return &llmv1alpha1.LLMQuota{}
	}
	return &llmv1alpha1.LLMUser{}
}

// objState is what the Recorder knows of one object.
type objState struct {
	// dirty: charged since its last write; since is when it first was.
	dirty bool
	since time.Time
	// alert: a charge since its last write crossed an alert threshold.
	alert bool
	// last is the time of its latest charge, for lastRequestAt.
	last time.Time
	// seq counts the charges, so that a write knows whether one came in
	// while it was being made.
	seq uint64
	// written is when it was last written (or found up to date).
	written time.Time
	// busy: a write of it is in flight.
	busy bool
	// mark is its owner's mark in Redis (with [Owners]), removed once the
	// object is written.
	mark OwnedMark
}

// ownersSync is how often the marks of changed objects are exchanged with
// their owners.
const ownersSync = time.Second

// String names k in the owners' marks, as [quota.Charge.Objects] does.
func (k objKey) String() string {
	return strconv.Itoa(int(k.kind)) + "/" + k.namespace + "/" + k.name + "/" + k.uid
}

func parseObjKey(s string) (objKey, bool) {
	parts := strings.SplitN(s, "/", 4)
	if len(parts) != 4 || (parts[0] != "0" && parts[0] != "1") {
		return objKey{}, false
	}
	return objKey{kind(parts[0][0] - '0'), parts[1], parts[2], parts[3]}, true
}

// Charge records that c changed the usage of its user (and, for a Shared
// quota, its pool). It never blocks on the API server: it takes one mutex
// for a map update. Zero amounts, and charges to no user, are ignored.
func (r *Recorder) Charge(c quota.Charge) {
	if c.Amount.IsZero() || c.User == "" {
		return
	}
	at := c.At
	if at.IsZero() {
		at = r.now()
	}
	user := objKey{kindUser, c.Namespace, c.User, c.UserUID}
	pool := objKey{kindQuota, c.Namespace, c.Quota, c.QuotaUID}
	if r.owners != nil {
		// The owner writes it, this replica included when it is the owner.
		for _, k := range c.Objects() {
			r.owners.Mark(k, at, c.Alert)
		}
		return
	}
	now := r.now()
	r.mu.Lock()
	defer r.mu.Unlock()
	r.markLocked(user, now, at, c.Alert)
	if c.Pool && c.Quota != "" {
		r.markLocked(pool, now, at, c.Alert)
	}
}

// syncOwners sends this replica's marks to their owners and marks dirty the
// objects this replica owns that anyone charged.
func (r *Recorder) syncOwners(ctx context.Context) error {
	marks, err := r.owners.Sync(ctx)
	if err != nil {
		return err
	}
	now := r.now()
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, m := range marks {
		k, ok := parseObjKey(m.Key)
		if !ok {
			continue
		}
		if s := r.objects[k]; s != nil && s.mark.value == m.value {
			continue // already known, written or not
		}
		r.markLocked(k, now, m.At, m.Alert)
		r.objects[k].mark = m
	}
	return nil
}

func (r *Recorder) markLocked(k objKey, now, at time.Time, alert bool) {
	s := r.objects[k]
	if s == nil {
		s = &objState{}
		r.objects[k] = s
	}
	if !s.dirty {
		s.dirty, s.since = true, now
	}
	s.alert = s.alert || alert
	if at.After(s.last) {
		s.last = at
	}
	s.seq++
}

// Pending returns the number of objects with usage not yet written to status.
func (r *Recorder) Pending() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, s := range r.objects {
		if s.dirty {
			n++
		}
	}
	return n
}

// Lag returns how long the oldest unwritten change has waited.
func (r *Recorder) Lag() time.Duration {
	now := r.now()
	r.mu.Lock()
	defer r.mu.Unlock()
	var lag time.Duration
	for _, s := range r.objects {
		if s.dirty {
			lag = max(lag, now.Sub(s.since))
		}
	}
	return lag
}

// due returns the objects to write now, in the order to write them:
// alerting ones first, then the longest waiting. With all, every dirty
// object is due.
func (r *Recorder) due(now time.Time, all bool) []objKey {
	r.mu.Lock()
	defer r.mu.Unlock()
	type cand struct {
		k     objKey
		alert bool
		since time.Time
	}
	var cs []cand
	for k, s := range r.objects {
		if !s.dirty || s.busy {
			continue
		}
		wait := r.interval
		if s.alert {
			wait = alertInterval
		}
		if all || now.Sub(s.written) >= wait {
			cs = append(cs, cand{k, s.alert, s.since})
		}
	}
	slices.SortFunc(cs, func(a, b cand) int {
		if a.alert != b.alert {
			if a.alert {
				return -1
			}
			return 1
		}
		return a.since.Compare(b.since)
	})
	out := make([]objKey, len(cs))
	for i, c := range cs {
		out[i] = c.k
	}
	return out
}

// take marks k busy for a write and returns its charge sequence and latest
// charge time; ok is false when it is already being written.
func (r *Recorder) take(k objKey) (seq uint64, last time.Time, ok bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := r.objects[k]
	if s == nil || s.busy {
		return 0, time.Time{}, false
	}
	s.busy = true
	return s.seq, s.last, true
}

// done records the end of a write of k that saw the charges up to seq. It
// returns the owner's mark to clear, when the write covered it.
func (r *Recorder) done(k objKey, seq uint64, out outcome) OwnedMark {
	now := r.now()
	r.mu.Lock()
	defer r.mu.Unlock()
	s := r.objects[k]
	s.busy = false
	switch out {
	case dropped:
		delete(r.objects, k)
		return s.mark
	case written:
		s.written = now
		if s.seq == seq {
			s.dirty, s.alert = false, false
			return s.mark
		}
	case failed:
		// Kept dirty: the next turn retries. written moves so that a failing
		// object waits its interval instead of spinning.
		s.written = now
	}
	return OwnedMark{}
}

// markStale marks dirty the objects whose status shows a window that has
// ended: the proxy owns status.usage, so it rolls windows over. They wait
// behind every object that was charged.
func (r *Recorder) markStale(keys []objKey) {
	if len(keys) == 0 {
		return
	}
	now := r.now()
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, k := range keys {
		if s := r.objects[k]; s != nil && s.dirty {
			continue
		}
		if r.owners != nil && !r.owners.Owns(k.String()) {
			continue // its owner rolls it over
		}
		s := r.objects[k]
		if s == nil {
			s = &objState{}
			r.objects[k] = s
		}
		// A turn behind every charged object: written when the rate allows.
		s.dirty, s.since, s.written = true, now, time.Time{}
		s.seq++
	}
}

// forgetQuiet drops the state of objects that have nothing to write and
// were last written more than an interval ago, so that memory is bounded
// by the objects in use.
func (r *Recorder) forgetQuiet(now time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for k, s := range r.objects {
		if !s.dirty && !s.busy && now.Sub(s.written) > 2*r.interval {
			delete(r.objects, k)
		}
	}
}

// Start writes due objects at the write rate until ctx is done, and marks
// for roll-over, every interval, the objects whose status shows an ended
// window. It implements controller-runtime's manager.Runnable. It does not
// write on the way out: requests still in flight would charge after it. The
// owner drains the proxy first and then calls [Recorder.Flush].
func (r *Recorder) Start(ctx context.Context) error {
	t := time.NewTicker(tick)
	defer t.Stop()
	work := make(chan objKey)
	var wg sync.WaitGroup
	defer wg.Wait()
	defer close(work)
	for range r.workers {
		wg.Go(func() {
			for k := range work {
				// A failed write stays dirty and comes round again; writeOne
				// logged it.
				_ = r.writeOne(ctx, k)
			}
		})
	}
	nextScan := r.now()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		now := r.now()
		if r.owners != nil {
			// Marks go out every tick, so that a replica killed loses at
			// most a tick of them; the lease and this replica's own marks
			// every ownersSync.
			var err error
			if !now.Before(r.nextSync) {
				r.nextSync = now.Add(ownersSync)
				err = r.syncOwners(ctx)
			} else {
				err = r.owners.Send(ctx)
			}
			if err != nil {
				r.log.V(1).Info("Exchanging the changed objects with their writers failed", "error", err.Error())
			}
		}
		if !now.Before(nextScan) {
			nextScan = now.Add(r.interval)
			r.markStale(r.stale(ctx, now))
			r.forgetQuiet(now)
		}
		if !r.turn(ctx, now, work) {
			return nil
		}
	}
}

// turn hands the workers the objects due now, as many as the write rate
// allows; it returns false when ctx ended.
func (r *Recorder) turn(ctx context.Context, now time.Time, work chan<- objKey) bool {
	for _, k := range r.due(now, false) {
		if !r.limiter.AllowN(now, 1) {
			return true
		}
		select {
		case work <- k:
		case <-ctx.Done():
			return false
		}
	}
	return true
}

// NeedLeaderElection returns false: every replica writes what it charged.
func (r *Recorder) NeedLeaderElection() bool { return false }

// Flush writes every object with something to write now, without waiting
// for its interval or the write rate, and waits for the writes: the final
// flush on the way out, and tests. It returns an error when some could not
// be written; they stay dirty, so calling Flush again retries them.
func (r *Recorder) Flush(ctx context.Context) error {
	if r.owners != nil {
		if err := r.syncOwners(ctx); err != nil {
			return fmt.Errorf("usage: flushing: %w", err)
		}
	}
	keys := r.due(r.now(), true)
	work := make(chan objKey)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var firstErr error
	failures := 0
	for range min(r.workers, len(keys)) {
		wg.Go(func() {
			for k := range work {
				if err := r.writeOne(ctx, k); err != nil {
					mu.Lock()
					failures++
					firstErr = cmp.Or(firstErr, err)
					mu.Unlock()
				}
			}
		})
	}
	for _, k := range keys {
		work <- k
	}
	close(work)
	wg.Wait()
	if failures > 0 {
		return fmt.Errorf("usage: %d of %d status writes failed, they are retried: %w", failures, len(keys), firstErr)
	}
	return nil
}

// outcome is how the write of one object ended.
type outcome uint8

const (
	written outcome = iota
	// dropped: the object is gone (or was replaced), and its usage with it.
	dropped
	failed
)

// writeOne writes k's status and records how it went.
func (r *Recorder) writeOne(ctx context.Context, k objKey) error {
	seq, last, ok := r.take(k)
	if !ok {
		return nil
	}
	out, err := r.write(ctx, k, last)
	if m := r.done(k, seq, out); m.value != "" {
		if err := r.owners.Written(ctx, m); err != nil {
			// The mark stays: the object is written again, to the same totals.
			r.log.V(1).Info("Clearing a written object's mark failed", "object", m.Key, "error", err.Error())
		}
	}
	if out == failed {
		r.log.V(1).Info("Usage write failed", "kind", k.kind.String(), "namespace", k.namespace, "name", k.name, "error", err.Error())
	}
	return err
}
