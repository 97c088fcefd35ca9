package proxy

import (
	"crypto/rand"
	"encoding/hex"
	"strconv"
	"sync"
	"sync/atomic"

	"github.com/llm-user-operator/llm-user-operator/internal/metrics"
)

// requestIDs names every request the proxy handles: a random prefix per
// process and a counter, unique across replicas without coordination and
// cheap enough for every request.
type requestIDs struct {
	prefix string
	n      atomic.Uint64
}

func newRequestIDs() requestIDs {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return requestIDs{prefix: "llmp-" + hex.EncodeToString(b[:]) + "-"}
}

func (r *requestIDs) next() string {
	return r.prefix + strconv.FormatUint(r.n.Add(1), 36)
}

// gates count each user's requests in flight on this replica, from before
// the body is read until the request is settled. They refuse early what the
// shared counter would refuse at admission anyway, so that a user at their
// limit cannot make the proxy read and hold more bodies.
type gates struct {
	m sync.Map // user key → *atomic.Int64
}

// enter takes a slot under limit; it returns the count before, and false
// when the user is at the limit.
func (g *gates) enter(key string, limit int64) (int64, bool) {
	v, ok := g.m.Load(key)
	if !ok {
		v, _ = g.m.LoadOrStore(key, new(atomic.Int64))
	}
	c := v.(*atomic.Int64)
	if n := c.Add(1); n > limit {
		c.Add(-1)
		return n - 1, false
	}
	return 0, true
}

func (g *gates) leave(key string) {
	if v, ok := g.m.Load(key); ok {
		v.(*atomic.Int64).Add(-1)
	}
}

// dryRun counts what a DryRun quota would have refused or shortened, and
// tells the notifier (Events).
func (p *Proxy) dryRun(u *User, reason, message string) {
	p.metrics.Reject(u.Namespace, u.Name, metrics.DryRunPrefix+reason)
	if p.dryRunNotifier != nil {
		p.dryRunNotifier.Notify(u, reason, message)
	}
}
