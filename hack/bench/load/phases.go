package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// target is where one arm's traffic goes.
type target struct {
	name  string // direct, reverseproxy, full or noauth
	addr  string
	pid   int    // the proxy process; 0 for direct
	stats string // the proxy's charge counters
	// sets are the encoded requests of each kind (chat, stream, ...), one
	// per user token; reqs is the set in use. Workers take them round-robin
	// so that the full arm serves many users.
	sets [][][]byte
	reqs [][]byte
	// served counts the successful requests of every phase.
	served *atomic.Int64
}

// with returns t sending requests of set i.
func (t *target) with(i int) target {
	c := *t
	c.reqs = t.sets[i]
	return c
}

// errCount counts failed requests and keeps the first failure's story.
type errCount struct {
	n     atomic.Int64
	mu    sync.Mutex
	first string
}

func (e *errCount) add(format string, args ...any) {
	if e.n.Add(1) == 1 {
		e.mu.Lock()
		e.first = fmt.Sprintf(format, args...)
		e.mu.Unlock()
	}
}

func (e *errCount) String() string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.first
}

const requestTimeout = 30 * time.Second

// closedLoop keeps conc requests in flight until total have completed (0:
// no count) or until has passed, whichever comes first; each worker owns one
// keep-alive connection. It returns the successful requests and the time
// taken.
func closedLoop(t target, conc, total int, until time.Time, errs *errCount) (ok int64, elapsed time.Duration) {
	var (
		claimed atomic.Int64
		done    atomic.Int64
		wg      sync.WaitGroup
	)
	start := time.Now()
	for w := range conc {
		wg.Go(func() {
			var c *conn
			defer func() {
				if c != nil {
					c.close()
				}
			}()
			for i := w; ; i += conc {
				if total > 0 && claimed.Add(1) > int64(total) {
					return
				}
				if !time.Now().Before(until) {
					return
				}
				if c == nil {
					var err error
					if c, err = dial(t.addr); err != nil {
						errs.add("%s: dial: %v", t.name, err)
						time.Sleep(10 * time.Millisecond) // bounded by until
						continue
					}
				}
				status, n, reusable, err := c.do(t.reqs[i%len(t.reqs)], requestTimeout)
				switch {
				case err != nil:
					errs.add("%s: %v", t.name, err)
				case status != 200 || n == 0:
					errs.add("%s: status %d, %d body bytes", t.name, status, n)
				default:
					done.Add(1)
					t.served.Add(1)
				}
				if !reusable {
					c.close()
					c = nil
				}
			}
		})
	}
	wg.Wait()
	return done.Load(), time.Since(start)
}

// sequential sends one request at a time on one connection: warm requests
// first (not recorded), then up to n recorded ones, within maxDur.
func sequential(t target, warm, n int, maxDur time.Duration, errs *errCount) []time.Duration {
	c, err := dial(t.addr)
	if err != nil {
		errs.add("%s: dial: %v", t.name, err)
		return nil
	}
	defer func() { c.close() }()
	lats := make([]time.Duration, 0, n)
	deadline := time.Now().Add(maxDur)
	for i := 0; i < warm+n && time.Now().Before(deadline); i++ {
		start := time.Now()
		status, nb, reusable, err := c.do(t.reqs[i%len(t.reqs)], requestTimeout)
		lat := time.Since(start)
		switch {
		case err != nil:
			errs.add("%s: %v", t.name, err)
		case status != 200 || nb == 0:
			errs.add("%s: status %d", t.name, status)
		default:
			t.served.Add(1)
			if i >= warm {
				lats = append(lats, lat)
			}
		}
		if !reusable {
			c.close()
			if c, err = dial(t.addr); err != nil {
				errs.add("%s: dial: %v", t.name, err)
				return lats
			}
		}
	}
	return lats
}

// openResult is one run at a fixed arrival rate.
type openResult struct {
	lats     []time.Duration
	sent, ok int
	// dropped counts arrivals not sent because maxInFlight were pending.
	dropped int
	// achieved is successful requests per second, from the first arrival to
	// the last completion.
	achieved float64
}

// openLoop sends requests at rate per second for dur regardless of how fast
// answers come (open loop), on as many connections as are needed (at most
// maxInFlight). Latency runs from the request's write to its last byte;
// arrivals follow the schedule even when the generator wakes late, so the
// offered rate holds.
func openLoop(t target, rate int, dur time.Duration, maxInFlight int, errs *errCount) openResult {
	var (
		mu       sync.Mutex
		res      openResult
		lastDone time.Time
		idle     = make(chan *conn, maxInFlight)
		inFlight atomic.Int64
		wg       sync.WaitGroup
	)
	interval := time.Second / time.Duration(rate)
	start := time.Now()
	for i := 0; ; i++ {
		at := start.Add(time.Duration(i) * interval)
		if at.Sub(start) >= dur {
			break
		}
		if d := time.Until(at); d > 0 {
			time.Sleep(d)
		}
		if inFlight.Load() >= int64(maxInFlight) {
			res.dropped++
			continue
		}
		inFlight.Add(1)
		res.sent++
		req := t.reqs[i%len(t.reqs)]
		wg.Go(func() {
			defer inFlight.Add(-1)
			var c *conn
			select {
			case c = <-idle:
			default:
				var err error
				if c, err = dial(t.addr); err != nil {
					errs.add("%s: dial: %v", t.name, err)
					return
				}
			}
			sent := time.Now()
			status, n, reusable, err := c.do(req, requestTimeout)
			end := time.Now()
			switch {
			case err != nil:
				errs.add("%s: %v", t.name, err)
			case status != 200 || n == 0:
				errs.add("%s: status %d", t.name, status)
			default:
				t.served.Add(1)
				mu.Lock()
				res.lats = append(res.lats, end.Sub(sent))
				res.ok++
				if end.After(lastDone) {
					lastDone = end
				}
				mu.Unlock()
			}
			if reusable {
				select {
				case idle <- c:
					return
				default:
				}
			}
			c.close()
		})
	}
	wg.Wait()
	close(idle)
	for c := range idle {
		c.close()
	}
	if span := lastDone.Sub(start); res.ok > 0 && span > 0 {
		// The last arrival is at (ok-1) intervals; count the span up to
		// the next, so a server that keeps up scores exactly the rate.
		res.achieved = float64(res.ok) / (span + interval).Seconds()
	}
	return res
}

// streams runs conc concurrent streams, each worker one after another on its
// own connection, until count streams have run (0: no count) or until has
// passed. Each connection's first stream is not returned: it pays for the
// connections' setup (the client's, and the proxy's to its upstream, which
// its idle timeout has closed since the arm's last phase), which a
// long-lived client does not.
func streams(t target, conc, count int, until time.Time, minText int, errs *errCount) []streamResult {
	var (
		mu      sync.Mutex
		out     []streamResult
		claimed atomic.Int64
		wg      sync.WaitGroup
	)
	for w := range conc {
		wg.Go(func() {
			var c *conn
			defer func() {
				if c != nil {
					c.close()
				}
			}()
			timed := false
			for i := w; ; i += conc {
				if timed && count > 0 && claimed.Add(1) > int64(count) {
					return
				}
				if !time.Now().Before(until) {
					return
				}
				if c == nil {
					var err error
					if c, err = dial(t.addr); err != nil {
						errs.add("%s: dial: %v", t.name, err)
						time.Sleep(10 * time.Millisecond)
						continue
					}
					timed = false
				}
				r, err := c.stream(t.reqs[i%len(t.reqs)], requestTimeout, nil)
				switch {
				case err != nil:
					errs.add("%s: stream: %v", t.name, err)
					c.close()
					c = nil
					continue
				case r.status != 200 || !r.done || len(r.gaps)+1 < minText:
					errs.add("%s: stream: status %d, done %v, %d text events, want %d", t.name, r.status, r.done, len(r.gaps)+1, minText)
					c.close()
					c = nil
					continue
				}
				t.served.Add(1)
				if timed {
					mu.Lock()
					out = append(out, r)
					mu.Unlock()
				}
				timed = true
			}
		})
	}
	wg.Wait()
	return out
}

// memResult is a proxy's memory with many streams open at once.
type memResult struct {
	streams, opened int
	idleRSS         int64 // before the streams
	peakRSS         int64 // the highest VmRSS sampled while they were opening and open
	hwm             int64 // VmHWM when they were all open
	// idleGo and openGo are the Go runtime's view, idle and with the
	// streams open (zero when the arm could not say).
	idleGo, openGo goMem
}

// goMem is what the proxy's runtime says of its memory (proxyarm /memstats).
type goMem struct {
	HeapInuse  int64 `json:"heap_inuse"`
	StackInuse int64 `json:"stack_inuse"`
	Goroutines int64 `json:"goroutines"`
}

func fetchGoMem(statsAddr string) goMem {
	var m goMem
	c := &http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get("http://" + statsAddr + "/memstats")
	if err != nil {
		return m
	}
	defer func() { _ = resp.Body.Close() }()
	_ = json.NewDecoder(resp.Body).Decode(&m)
	return m
}

// perStream is the conservative figure: the kernel's peak RSS over idle.
func (m memResult) perStream() float64 {
	return float64(m.hwm-m.idleRSS) / float64(max(m.opened, 1))
}

func (m memResult) perStreamSampled() float64 {
	return float64(m.peakRSS-m.idleRSS) / float64(max(m.opened, 1))
}

// openStreams opens n long streams through t at once, waits (up to
// openTimeout) until every one has received text, samples the proxy's RSS
// for hold, then cuts them all.
func openStreams(t target, n int, openTimeout, hold time.Duration, errs *errCount) (memResult, error) {
	m := memResult{streams: n, idleGo: fetchGoMem(t.stats)}
	var err error
	if m.idleRSS, _, err = memStatus(t.pid); err != nil {
		return m, err
	}
	var (
		opened, ended atomic.Int64
		mu            sync.Mutex
		conns         []*conn
		cut           bool
		wg            sync.WaitGroup
		stop          = make(chan struct{})
	)
	sampled := make(chan int64)
	go func() {
		var peak int64
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for {
			if rss, _, err := memStatus(t.pid); err == nil && rss > peak {
				peak = rss
			}
			select {
			case <-stop:
				sampled <- peak
				return
			case <-tick.C:
			}
		}
	}()
	for i := range n {
		wg.Go(func() {
			c, err := dial(t.addr)
			if err != nil {
				errs.add("%s: dial: %v", t.name, err)
				return
			}
			mu.Lock()
			if cut { // dialled too late: the measurement is over
				mu.Unlock()
				c.close()
				return
			}
			conns = append(conns, c)
			mu.Unlock()
			_, _ = c.stream(t.reqs[i%len(t.reqs)], openTimeout+hold+requestTimeout, func() { opened.Add(1) })
			mu.Lock()
			if !cut {
				ended.Add(1)
			}
			mu.Unlock()
		})
	}
	deadline := time.Now().Add(openTimeout)
	for opened.Load() < int64(n) && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	m.opened = int(opened.Load())
	time.Sleep(hold)
	_, m.hwm, err = memStatus(t.pid)
	m.openGo = fetchGoMem(t.stats)
	close(stop)
	m.peakRSS = <-sampled
	mu.Lock()
	cut = true
	for _, c := range conns {
		c.close()
	}
	mu.Unlock()
	wg.Wait()
	switch {
	case err != nil:
	case m.opened < n:
		err = fmt.Errorf("%s: only %d of %d streams were open within %v", t.name, m.opened, n, openTimeout)
	case ended.Load() > 0:
		err = fmt.Errorf("%s: %d streams ended before the measurement did; make them longer", t.name, ended.Load())
	}
	return m, err
}
