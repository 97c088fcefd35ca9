// Package usage owns usage accumulation and the batched write-back to status:
// the proxy charges every settled request to a [Recorder] in memory, and the
// Recorder folds what accumulated into status.usage, status.lifetime and
// status.lastRequestAt of the LLMUser (and, for Shared quotas, of the
// LLMQuota) at most once per object per flush interval. [SeedFromStatus] goes
// the other way: it restores a [quota.Counter] from what status recorded, so
// a restarted replica still enforces the budget already spent.
//
// Usage follows objects by uid: a charge names the uid of the LLMUser (and
// LLMQuota) it belongs to, and is written to nobody's status when that
// object was deleted, even if another took its name.
package usage

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	llmv1alpha1 "github.com/llm-user-operator/llm-user-operator/api/v1alpha1"
	"github.com/llm-user-operator/llm-user-operator/internal/quota"
)

// Options configures [New]. Zero fields take defaults.
type Options struct {
	// FlushInterval is how often [Recorder.Start] writes status (default 10s).
	FlushInterval time.Duration
	// MaxConcurrentWrites bounds the status writes in flight (default 8).
	MaxConcurrentWrites int
	// Now is the clock that places charges and flushes in windows (default time.Now).
	Now func() time.Time
	// FieldOwner is the field manager of the status writes (default "llm-user-proxy").
	FieldOwner string
	// Logger receives flush failures (default: discard).
	Logger logr.Logger
	// Limits returns a quota's limits, in spec order, so that a user's
	// windows and remaining budget can be written without reading the
	// LLMQuota; ok=false (or a nil func) falls back to reading it with the
	// client, once per quota per flush.
	Limits func(namespace, quotaName string) (limits []quota.Limit, ok bool)
	// APIReader re-reads an object after a write conflict (default: the
	// client). With a cache-backed client, pass the manager's API reader so
	// that the retry sees the write that won.
	APIReader client.Reader
	// Registerer receives the Recorder's metrics; nil registers none. New
	// panics if they are registered already, like prometheus.MustRegister.
	Registerer prometheus.Registerer
}

// DefaultFieldOwner is the field manager of the proxy's status writes.
const DefaultFieldOwner = "llm-user-proxy"

// maxAttempts bounds the writes of one object in one flush: the first and its
// retries after conflicts. Past it the delta waits for the next flush.
const maxAttempts = 4

// Recorder accumulates charges in memory and writes them to status in
// batches: one status write per charged object per flush (plus one more for
// each write conflict), none for idle objects, at most MaxConcurrentWrites in
// flight. A charge is not lost to a failed write: its delta waits for the
// next flush. It is not counted twice: each write carries the
// resourceVersion it was computed from, and a conflict recomputes from the
// fresh object. The one exception is a write that fails ambiguously (the
// connection drops after the API server applied it): its delta is retried
// and counts twice in status, never in the quota counter.
//
// Recorder is a controller-runtime manager.Runnable that needs no leader
// election: every proxy replica writes its own deltas. It is safe for
// concurrent use.
type Recorder struct {
	client     client.Client
	reader     client.Reader
	interval   time.Duration
	workers    int
	now        func() time.Time
	fieldOwner string
	log        logr.Logger
	limits     func(namespace, quotaName string) ([]quota.Limit, bool)
	metrics    *recorderMetrics

	// flushMu serializes flushes, so that an object is written by one of
	// them at a time and a flush sees every earlier flush's leftovers.
	flushMu sync.Mutex

	mu sync.Mutex
	// pending holds the deltas not yet taken by a flush.
	pending map[objKey]*delta
	// inflight is the batch of the running flush, until each write is done.
	inflight map[objKey]*delta
}

// New returns a Recorder that writes status through c. Start it (or call
// [Recorder.Flush]) to write anything.
func New(c client.Client, opts Options) *Recorder {
	r := &Recorder{
		client:     c,
		reader:     opts.APIReader,
		interval:   opts.FlushInterval,
		workers:    opts.MaxConcurrentWrites,
		now:        opts.Now,
		fieldOwner: opts.FieldOwner,
		log:        opts.Logger,
		limits:     opts.Limits,
		pending:    make(map[objKey]*delta),
	}
	if r.reader == nil {
		r.reader = c
	}
	if r.interval <= 0 {
		r.interval = 10 * time.Second
	}
	if r.workers <= 0 {
		r.workers = 8
	}
	if r.now == nil {
		r.now = time.Now
	}
	if r.fieldOwner == "" {
		r.fieldOwner = DefaultFieldOwner
	}
	if r.log.GetSink() == nil {
		r.log = logr.Discard()
	}
	r.metrics = newRecorderMetrics(opts.Registerer, r.Pending)
	return r
}

// kind says which object a delta is written to.
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

// objKey names one object with pending usage, by uid: a delta is written
// only to the object it was charged to.
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

// bucket is what was charged in one minute. Every window starts on a whole
// UTC minute, so a minute lies in exactly one instance of each window and
// the per-window sums computed from buckets are exact.
type bucket struct {
	minute time.Time
	amount quota.Amount
}

// delta is one object's usage not yet in its status.
type delta struct {
	// buckets are per minute, almost always in order: charges arrive with
	// the clock, so the last bucket is the one a charge adds to.
	buckets []bucket
	// last is the time of the latest charge.
	last time.Time
	// shared is whether the latest charge to a user also went to a Shared
	// pool; the user's own entries then carry no remaining, which only the
	// pool's entries can tell.
	shared bool
}

func (d *delta) add(minute time.Time, a quota.Amount) {
	for i := len(d.buckets) - 1; i >= 0; i-- {
		if d.buckets[i].minute.Equal(minute) {
			d.buckets[i].amount = d.buckets[i].amount.Add(a)
			return
		}
	}
	d.buckets = append(d.buckets, bucket{minute: minute, amount: a})
}

// merge adds o into d; o is older than d when both exist.
func (d *delta) merge(o *delta) {
	for _, b := range o.buckets {
		d.add(b.minute, b.amount)
	}
	if o.last.After(d.last) {
		d.last = o.last
	}
}

// compact folds the buckets too old to count in any window current at now
// into one, which then counts in lifetime only. It bounds the memory of a
// delta that keeps failing to be written (a long outage, missing RBAC) to
// the minutes of the current week and month.
func (d *delta) compact(now time.Time) {
	horizon := quota.WindowStart(llmv1alpha1.WindowMonth, now)
	if w := quota.WindowStart(llmv1alpha1.WindowWeek, now); w.Before(horizon) {
		horizon = w
	}
	old := -1
	kept := d.buckets[:0]
	for _, b := range d.buckets {
		switch {
		case !b.minute.Before(horizon):
			kept = append(kept, b)
		case old < 0:
			old = len(kept)
			kept = append(kept, b)
		default:
			kept[old].amount = kept[old].amount.Add(b.amount)
		}
	}
	clear(d.buckets[len(kept):])
	d.buckets = kept
}

// total is everything the delta counts: what lifetime grows by.
func (d *delta) total() quota.Amount {
	var t quota.Amount
	for _, b := range d.buckets {
		t = t.Add(b.amount)
	}
	return t
}

// in is what the delta counts in the window w that started at start.
func (d *delta) in(w llmv1alpha1.Window, start time.Time) quota.Amount {
	var t quota.Amount
	for _, b := range d.buckets {
		if quota.WindowStart(w, b.minute).Equal(start) {
			t = t.Add(b.amount)
		}
	}
	return t
}

// Charge records c for the next flush. It never blocks on the API server: it
// takes one mutex for a map update. Zero amounts, and charges to no user, are
// ignored.
func (r *Recorder) Charge(c quota.Charge) {
	if c.Amount.IsZero() || c.User == "" {
		return
	}
	at := c.At
	if at.IsZero() {
		at = r.now()
	}
	at = at.UTC()
	minute := at.Truncate(time.Minute)
	r.mu.Lock()
	defer r.mu.Unlock()
	r.addLocked(objKey{kindUser, c.Namespace, c.User, c.UserUID}, minute, at, c.Amount, c.Pool)
	if c.Pool && c.Quota != "" {
		r.addLocked(objKey{kindQuota, c.Namespace, c.Quota, c.QuotaUID}, minute, at, c.Amount, true)
	}
}

func (r *Recorder) addLocked(k objKey, minute, at time.Time, a quota.Amount, shared bool) {
	d := r.pending[k]
	if d == nil {
		d = &delta{}
		r.pending[k] = d
	}
	d.add(minute, a)
	if at.After(d.last) {
		d.last = at
	}
	d.shared = shared
}

// Pending returns the number of objects with usage not yet written to status,
// including those a running flush is writing.
func (r *Recorder) Pending() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := len(r.pending)
	for k := range r.inflight {
		if _, ok := r.pending[k]; !ok {
			n++
		}
	}
	return n
}

// Start flushes every FlushInterval until ctx is done, implementing
// controller-runtime's manager.Runnable. It does not flush on the way out:
// requests still in flight would charge after it. The owner drains the
// proxy first and then calls [Recorder.Flush] with a fresh context.
func (r *Recorder) Start(ctx context.Context) error {
	t := time.NewTicker(r.interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			if err := r.Flush(ctx); err != nil && ctx.Err() == nil {
				r.log.Error(err, "Writing usage to status failed; retrying at the next flush")
			}
		}
	}
}

// NeedLeaderElection returns false: every replica writes the usage it counted.
func (r *Recorder) NeedLeaderElection() bool { return false }

// outcome is how the write of one object ended.
type outcome uint8

const (
	written outcome = iota
	// dropped: the object is gone, and its usage with it.
	dropped
	failed
)

// Flush writes every pending delta now and waits for the writes. It returns
// an error when some could not be written; their deltas are kept for the next
// flush, so calling Flush again retries them.
func (r *Recorder) Flush(ctx context.Context) error {
	r.flushMu.Lock()
	defer r.flushMu.Unlock()

	r.mu.Lock()
	batch := r.pending
	if len(batch) == 0 {
		r.mu.Unlock()
		return nil
	}
	r.pending = make(map[objKey]*delta, len(batch))
	// Workers take their deltas from items: batch itself becomes inflight,
	// which they shrink under mu.
	items := make([]item, 0, len(batch))
	for k, d := range batch {
		items = append(items, item{k, d})
	}
	r.inflight = batch
	r.mu.Unlock()

	started := time.Now()
	lookup := &quotaLookup{reader: r.client, entries: make(map[types.NamespacedName]*quotaEntry)}
	work := make(chan item)
	var (
		wg       sync.WaitGroup
		errMu    sync.Mutex
		firstErr error
		nFailed  int
	)
	for range min(r.workers, len(items)) {
		wg.Go(func() {
			for it := range work {
				k, d := it.key, it.delta
				out, err := r.write(ctx, k, d, lookup)
				if out == failed {
					d.compact(r.now())
				}
				r.mu.Lock()
				if out == failed {
					if p := r.pending[k]; p != nil {
						p.merge(d)
					} else {
						r.pending[k] = d
					}
				}
				delete(r.inflight, k)
				r.mu.Unlock()
				if out == failed {
					r.log.V(1).Info("Usage write failed", "kind", k.kind.String(), "namespace", k.namespace, "name", k.name, "error", err.Error())
					errMu.Lock()
					nFailed++
					if firstErr == nil {
						firstErr = err
					}
					errMu.Unlock()
				}
			}
		})
	}
	for _, it := range items {
		work <- it
	}
	close(work)
	wg.Wait()

	r.mu.Lock()
	r.inflight = nil
	r.mu.Unlock()
	r.log.V(1).Info("Flushed usage", "objects", len(items), "failed", nFailed, "duration", time.Since(started))
	if nFailed > 0 {
		return fmt.Errorf("usage: %d of %d status writes failed, their usage is kept for the next flush: %w", nFailed, len(items), firstErr)
	}
	return nil
}

// item is one object's delta taken by a flush.
type item struct {
	key   objKey
	delta *delta
}
