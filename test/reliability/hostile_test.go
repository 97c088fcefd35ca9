package reliability_test

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/llm-user-operator/llm-user-operator/internal/testutil/poll"
	"github.com/llm-user-operator/llm-user-operator/internal/testutil/redisserver"
	"github.com/llm-user-operator/llm-user-operator/test/harness"
)

// testLease: a replica killed while it holds reservations in Redis (an OOM
// kill, a lost node) pins them only until its lease expires: the budget it
// held is free again for the other replicas.
func (s *suite) testLease(t *testing.T) {
	t.Parallel()
	const (
		limit     = 1000
		maxTokens = 250
		lease     = 3 * time.Second
	)
	a := s.NewAccount(t, harness.DayTokens(limit))
	redis := redisserver.New(t)
	sim := s.StartSimulator(t, "simulator-lease", "--mode", "echo", "--time-to-first-token", "100ms", "--inter-token-latency", "100ms")
	flags := []string{"--counter=redis", "--redis-addr", redis.Addr(), "--redis-lease", lease.String(), "--flush-interval", "1s"}
	doomed := s.StartProxy(t, "proxy-doomed", harness.ProxyConfig{Upstream: sim.URL, Flags: flags})
	survivor := s.StartProxy(t, "proxy-survivor", harness.ProxyConfig{Upstream: sim.URL, Flags: flags})

	// Three long streams hold three reservations of about 270 tokens each
	// on the doomed replica.
	dc := harness.NewClient(doomed.BaseURL, a.APIKey())
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	var wg sync.WaitGroup
	defer wg.Wait()
	for range 3 {
		wg.Go(func() {
			stream := dc.Chat.Completions.NewStreaming(ctx, chatParams(echoPrompt, maxTokens))
			for stream.Next() {
			}
		})
	}
	poll.Until(t, 30*time.Second, func() error {
		running, _ := harness.Scrape(t, sim.URL+"/metrics").Value("vllm:num_requests_running")
		return poll.Check(running == 3, fmt.Sprintf("the simulator runs %v requests, want 3", running))
	})

	sc := harness.NewClient(survivor.BaseURL, a.APIKey())
	ask := func() error {
		_, err := sc.Chat.Completions.New(t.Context(), chatParams("Hello", maxTokens))
		return err
	}
	// While the doomed replica lives, its holds leave no room for a fourth.
	harness.RequireAPIError(t, ask(), http.StatusTooManyRequests)

	doomed.Kill(t)
	killed := time.Now()
	// Its lease has not expired yet: the holds still count.
	if err := ask(); err == nil && time.Since(killed) < lease/2 {
		t.Fatal("admitted at once after the kill: the dead replica's holds were dropped before its lease expired")
	}
	var admitted time.Duration
	poll.Until(t, 30*time.Second, func() error {
		err := ask()
		admitted = time.Since(killed)
		return err
	})
	t.Logf("the dead replica's holds were released %s after SIGKILL (lease %s)", admitted.Round(100*time.Millisecond), lease)

	// Nothing of the dead replica is left in Redis, nor of the survivor's
	// requests once each has settled (a settle can land just after the
	// client has read the whole answer).
	rc := goredis.NewClient(&goredis.Options{Addr: redis.Addr()})
	defer rc.Close()
	poll.Until(t, 10*time.Second, func() error {
		keys, err := rc.Keys(t.Context(), "llmq:user/*").Result()
		if err != nil {
			return err
		}
		var held []string
		for _, k := range keys {
			fields, err := rc.HGetAll(t.Context(), k).Result()
			if err != nil {
				return err
			}
			for f := range fields {
				if strings.HasPrefix(f, "q:") || strings.HasPrefix(f, "i:") || strings.HasPrefix(f, "o:") {
					held = append(held, fmt.Sprintf("%s %s = %s", k, f, fields[f]))
				}
			}
		}
		return poll.Check(len(held) == 0, fmt.Sprintf("still held after every request ended: %v", held))
	})
}

// testGraceExpiry: a proxy whose shutdown grace runs out while a stream is
// in flight cuts the stream, and still charges it and writes the charge to
// status before it exits.
func (s *suite) testGraceExpiry(t *testing.T) {
	t.Parallel()
	a := s.NewAccount(t, harness.DayTokens(1_000_000))
	sim := s.StartSimulator(t, "simulator-grace", "--mode", "echo", "--time-to-first-token", "100ms", "--inter-token-latency", "100ms")
	p := s.StartProxy(t, "proxy-grace", harness.ProxyConfig{Upstream: sim.URL,
		Flags: []string{"--flush-interval", "1h", "--shutdown-grace", "1s"}})
	c := harness.NewClient(p.BaseURL, a.APIKey())

	var chunks atomic.Int64
	started := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		stream := c.Chat.Completions.NewStreaming(t.Context(), chatParams(echoPrompt, echoMaxTokens))
		for stream.Next() {
			if chunks.Add(1) == 3 {
				close(started)
			}
		}
		done <- stream.Err()
	}()
	select {
	case <-started:
	case err := <-done:
		t.Fatalf("the stream ended before the shutdown: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("no chunk within 30s")
	}
	if err := p.Terminate(t, 30*time.Second); err != nil {
		t.Errorf("proxy exited with %v after SIGTERM, want status 0", err)
	}
	if err := <-done; err == nil {
		t.Fatalf("the stream ended cleanly after %d chunks although the grace period was shorter than it", chunks.Load())
	}
	// The process is gone: its final flush is done.
	st := s.ReadStatus(t, a)
	lt := st.Lifetime
	if lt == nil || lt.Requests != 1 || lt.InputTokens == 0 || lt.OutputTokens < chunks.Load()-1 || lt.OutputTokens >= echoMaxTokens {
		t.Fatalf("status lifetime %s after a stream cut at %d chunks, want 1 request with its prompt and the chunks generated", harness.ToJSON(lt), chunks.Load())
	}
}

// testSlowClients: 200 clients that trickle a large body and 200 that stop
// reading a stream, against one proxy under the chart's memory limit. The
// proxy's memory stays under the limit, another user's requests keep
// succeeding, and every reservation the attack made is settled and charged:
// nothing stays held.
func (s *suite) testSlowClients(t *testing.T) {
	const (
		memoryLimit = 512 << 20 // the chart's default limit for the proxy
		budget      = 10_000_000
	)
	// One user trickles bodies, another stalls streams, a third is served.
	trickler := s.NewAccount(t, harness.DayTokens(budget))
	attacker := s.NewAccount(t, harness.DayTokens(budget))
	victim := s.NewAccount(t, harness.DayTokens(budget))
	p := s.StartProxy(t, "proxy-slow-clients", harness.ProxyConfig{Upstream: s.fast.URL,
		Flags: []string{"--memory-limit", "512Mi", "--body-read-timeout", "20s", "--write-timeout", "3s", "--flush-interval", "1s",
			"--metrics-user-budgets", "all"}}) // the attacker's budget is far from its thresholds

	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	dial := func() net.Conn {
		c, err := net.Dial("tcp", p.Listen)
		if err != nil {
			t.Fatalf("dialing the proxy: %v", err)
		}
		conns = append(conns, c)
		return c
	}
	// Slow bodies: 10 MiB declared, 1 MiB sent, then nothing.
	mib := strings.Repeat(" ", 1<<20)
	for range 200 {
		c := dial()
		fmt.Fprintf(c, "POST /v1/chat/completions HTTP/1.1\r\nHost: proxy\r\nAuthorization: Bearer %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n{%s",
			trickler.APIKey(), 10<<20, mib)
	}
	// Streams nobody reads.
	body := fmt.Sprintf(`{"model":%q,"messages":[{"role":"user","content":"Write a long story."}],"max_tokens":900,"stream":true}`, modelID)
	for range 200 {
		c := dial()
		fmt.Fprintf(c, "POST /v1/chat/completions HTTP/1.1\r\nHost: proxy\r\nAuthorization: Bearer %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s",
			attacker.APIKey(), len(body), body)
	}

	// Meanwhile another user is served.
	vc := harness.NewClient(p.BaseURL, victim.APIKey())
	var l harness.Ledger
	for i := range 30 {
		res, err := vc.Chat.Completions.New(t.Context(), chatParams("Hello", 16))
		if err != nil {
			t.Fatalf("the victim's request %d failed during the attack: %v", i, err)
		}
		l.Add(res.Usage)
		time.Sleep(200 * time.Millisecond)
	}
	// Every attacker connection gets an answer: 408 for the trickled bodies
	// (503 at once for those past the attacker's share of the body memory),
	// and the streams that nobody reads are written into the kernel's
	// buffers or cut by the write deadline.
	for i, c := range conns {
		_ = c.SetReadDeadline(time.Now().Add(60 * time.Second))
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if i < 200 {
			if err != nil || (resp.StatusCode != http.StatusRequestTimeout && resp.StatusCode != http.StatusServiceUnavailable) {
				t.Errorf("slow body %d: %v %v, want 408 or 503", i, statusOf(resp), err)
			}
			continue
		}
		if err != nil || resp.StatusCode != http.StatusOK {
			t.Errorf("stream %d: %v %v, want 200 then a cut", i, statusOf(resp), err)
		}
	}
	peak := p.PeakRSS(t)
	t.Logf("peak RSS of the proxy under 200 slow bodies and 200 stalled streams: %d MiB", peak>>20)
	if peak >= memoryLimit {
		t.Errorf("peak RSS %d MiB, over the %d MiB limit", peak>>20, memoryLimit>>20)
	}

	s.WaitCharged(t, victim, l.Total())
	// Nothing the attack reserved is still held: what is left of the budget
	// is the limit less exactly what status says was used.
	poll.Until(t, 30*time.Second, func() error {
		st := s.ReadStatus(t, attacker)
		if len(st.Usage) == 0 {
			return fmt.Errorf("no usage in status yet")
		}
		m := harness.Scrape(t, p.MetricsURL)
		left, ok := m.Value("llm_proxy_budget_remaining_tokens", "namespace="+attacker.Namespace, "user="+attacker.Name)
		want := float64(budget - st.Usage[0].TotalTokens)
		return poll.Check(ok && left == want, "remaining "+strconv.FormatFloat(left, 'f', 0, 64)+", want "+strconv.FormatFloat(want, 'f', 0, 64)+" (limit less the usage in status)")
	})
	st := s.ReadStatus(t, attacker)
	if st.Usage[0].Requests == 0 || st.Usage[0].OutputTokens == 0 {
		t.Errorf("the stalled streams were charged nothing: %s", harness.ToJSON(st.Usage))
	}
}

func statusOf(r *http.Response) string {
	if r == nil {
		return "no response"
	}
	return r.Status
}
