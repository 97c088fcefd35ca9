package proxy

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	llmv1alpha1 "github.com/llm-user-operator/llm-user-operator/api/v1alpha1"
	"github.com/llm-user-operator/llm-user-operator/internal/metrics"
	"github.com/llm-user-operator/llm-user-operator/internal/openaiapi"
	"github.com/llm-user-operator/llm-user-operator/internal/quota"
	"github.com/llm-user-operator/llm-user-operator/internal/testutil/poll"
	"github.com/llm-user-operator/llm-user-operator/internal/token"
)

// TestHostileRequests sends, concurrently against a small budget, every
// request shape found that asks for more than a naive reading of it would
// reserve, to a fake vLLM that generates the most vLLM could for each. The
// promise: no admitted request uses more than it reserved, and the budget is
// never exceeded (the fake's prompts are never larger than the proxy's
// estimate of them, so the estimate error adds nothing).
func TestHostileRequests(t *testing.T) {
	const limit = 2000
	prompts := func(n int) string {
		return `["` + strings.TrimSuffix(strings.Repeat(`a","`, n), `","`) + `"]`
	}
	ids := make([]string, 300)
	for i := range ids {
		ids[i] = fmt.Sprint(i + 1)
	}
	tokenIDs := "[" + strings.Join(ids, ",") + "]"
	for _, tc := range []struct {
		name, path, body string
		// maxPer is the quota's maxTokensPerRequest (0: none).
		maxPer int64
		// codes are the statuses allowed; refused: every request must be
		// refused with this status.
		codes   []int
		refused int
	}{
		{name: "max_completion_tokens 0", path: "/v1/chat/completions", body: `{"model":"m","messages":[{"role":"user","content":"hi"}],"max_completion_tokens":0}`, maxPer: 100, codes: []int{200, 429}},
		{name: "max_completion_tokens 0.0", path: "/v1/chat/completions", body: `{"model":"m","messages":[{"role":"user","content":"hi"}],"max_completion_tokens":0.0}`, maxPer: 100, codes: []int{200, 429}},
		{name: `max_completion_tokens "0"`, path: "/v1/chat/completions", body: `{"model":"m","messages":[{"role":"user","content":"hi"}],"max_completion_tokens":"0"}`, maxPer: 100, codes: []int{200, 429}},
		{name: "max_completion_tokens 0e0", path: "/v1/chat/completions", body: `{"model":"m","messages":[{"role":"user","content":"hi"}],"max_completion_tokens":0e0}`, maxPer: 100, codes: []int{200, 429}},
		{name: "max_tokens negative", path: "/v1/chat/completions", body: `{"model":"m","messages":[{"role":"user","content":"hi"}],"max_tokens":-1}`, maxPer: 100, codes: []int{200, 429}},
		{name: "max_tokens fraction", path: "/v1/completions", body: `{"model":"m","prompt":"hi","max_tokens":1.5}`, maxPer: 100, codes: []int{200, 429}},
		{name: "max_tokens null", path: "/v1/completions", body: `{"model":"m","prompt":"hi","max_tokens":null}`, maxPer: 100, codes: []int{200, 429}},
		{name: "duplicate key, last is 0", path: "/v1/chat/completions", body: `{"model":"m","messages":[],"max_tokens":10,"max_tokens":0}`, maxPer: 100, codes: []int{200, 429}},
		{name: "escaped key", path: "/v1/chat/completions", body: `{"model":"m","messages":[],"max_completion\u005ftokens":0}`, maxPer: 100, codes: []int{200, 429}},
		{name: "0 shadows max_tokens", path: "/v1/chat/completions", body: `{"model":"m","messages":[],"max_tokens":90,"max_completion_tokens":0}`, maxPer: 100, codes: []int{200, 429}},
		{name: "50 prompts, max_tokens at the cap", path: "/v1/completions", body: `{"model":"m","prompt":` + prompts(50) + `,"max_tokens":100}`, maxPer: 100, refused: 400},
		{name: "50 prompts, no max_tokens", path: "/v1/completions", body: `{"model":"m","prompt":` + prompts(50) + `,"max_tokens":null}`, maxPer: 100, codes: []int{200, 429}},
		{name: "200 prompts under a cap of 100", path: "/v1/completions", body: `{"model":"m","prompt":` + prompts(200) + `}`, maxPer: 100, refused: 400},
		{name: "n 8 at the cap", path: "/v1/chat/completions", body: `{"model":"m","messages":[],"max_tokens":100,"n":8}`, maxPer: 100, refused: 400},
		{name: "n 8, no max_tokens", path: "/v1/chat/completions", body: `{"model":"m","messages":[],"n":8}`, maxPer: 100, codes: []int{200, 429}},
		{name: "best_of 4", path: "/v1/completions", body: `{"model":"m","prompt":"hi","max_tokens":30,"best_of":4}`, maxPer: 100, refused: 400},
		{name: "no cap anywhere", path: "/v1/chat/completions", body: `{"model":"m","messages":[{"role":"user","content":"tell me everything"}]}`, codes: []int{200, 429}},
		{name: "no cap, n 3", path: "/v1/chat/completions", body: `{"model":"m","messages":[],"n":3}`, codes: []int{200, 429}},
		{name: "no cap, 7 prompts", path: "/v1/completions", body: `{"model":"m","prompt":` + prompts(7) + `,"max_tokens":0}`, codes: []int{200, 429}},
		{name: "token ids", path: "/v1/completions", body: `{"model":"m","prompt":` + tokenIDs + `,"max_tokens":0}`, codes: []int{200, 429}},
		{name: "huge max_tokens", path: "/v1/chat/completions", body: `{"model":"m","messages":[],"max_tokens":100000000}`, refused: 429},
		{name: "stream, n 2, no usage asked", path: "/v1/chat/completions", body: `{"model":"m","messages":[],"n":2,"stream":true}`, maxPer: 100, codes: []int{200, 429}},
		{name: "stream, usage asked", path: "/v1/completions", body: `{"model":"m","prompt":"hi","max_tokens":0,"stream":true,"stream_options":{"include_usage":true}}`, codes: []int{200, 429}},
		{name: "responses, max_output_tokens 0", path: "/v1/responses", body: `{"model":"m","input":"hi","max_output_tokens":0}`, maxPer: 100, codes: []int{200, 429}},
		{name: "responses, background", path: "/v1/responses", body: `{"model":"m","input":"hi","background":true}`, refused: 400},
		{name: "responses, server-side tool", path: "/v1/responses", body: `{"model":"m","input":"hi","tools":[{"type":"code_interpreter"}]}`, refused: 400},
	} {
		t.Run(tc.name, func(t *testing.T) {
			up := newVLLMUpstream(t, "m", fakeContext)
			audit := &auditCounter{Counter: quota.NewMemory(testClock)}
			e := newEnv(t, func(o *Options) { o.Counter = audit }, up.fakeUpstream)
			u := aliceUser()
			if tc.maxPer > 0 {
				u.MaxTokensPerRequest = ptr(tc.maxPer)
			}
			u.Budgets = []quota.Budget{quota.UserBudget("team-a", "alice", "uid-alice", []quota.Limit{
				{Window: llmv1alpha1.WindowDay, Tokens: ptr[int64](limit)},
			}, false)}
			e.dir.set(u)

			var wg sync.WaitGroup
			var mu sync.Mutex
			codes := map[int]int{}
			for range 16 {
				wg.Go(func() {
					for range 3 {
						resp := e.do(t, "POST", tc.path, tc.body)
						b := readAll(t, resp)
						mu.Lock()
						codes[resp.StatusCode]++
						mu.Unlock()
						if resp.StatusCode >= 400 && !strings.Contains(string(b), `"error":{"message":`) {
							t.Errorf("status %d is not OpenAI-shaped: %s", resp.StatusCode, b)
						}
					}
				})
			}
			wg.Wait()
			for code := range codes {
				if tc.refused != 0 && code != tc.refused || tc.refused == 0 && !contains(tc.codes, code) {
					t.Errorf("statuses %v, want only %v (refused: %d)", codes, tc.codes, tc.refused)
				}
			}
			var charged int64
			for _, c := range e.sink.all() {
				charged += c.Amount.Total()
			}
			if charged > limit {
				t.Errorf("charged %d tokens against a limit of %d", charged, limit)
			}
			for _, s := range audit.all() {
				if s.actual.OutputTokens > s.reserved.OutputTokens || s.actual.InputTokens > s.reserved.InputTokens {
					t.Errorf("a request used %+v after reserving %+v", s.actual, s.reserved)
				}
			}
			if tc.refused == 0 && codes[200] == 0 {
				t.Errorf("no request was admitted (%v): the row tests nothing", codes)
			}
		})
	}
}

func contains(list []int, v int) bool {
	for _, x := range list {
		if x == v {
			return true
		}
	}
	return false
}

// TestShortenedToTheBudget: a request with no cap of its own, near the end
// of its budget, is sent with the cap that fits what is left: a shorter
// answer, never an overshoot.
func TestShortenedToTheBudget(t *testing.T) {
	up := newVLLMUpstream(t, "m", fakeContext)
	e := newEnv(t, nil, up.fakeUpstream)
	u := aliceUser()
	u.Budgets = []quota.Budget{quota.UserBudget("team-a", "alice", "uid-alice", []quota.Limit{
		{Window: llmv1alpha1.WindowDay, Tokens: ptr[int64](400)},
	}, false)}
	e.dir.set(u)
	// 373 used: 27 left; the prompt estimate is 8 (messages [] is 2 bytes).
	charge(t, e, u.Budgets, quota.Amount{Requests: 1, InputTokens: 200, OutputTokens: 173})
	resp := e.do(t, "POST", "/v1/chat/completions", `{"model":"m","messages":[],"n":2}`)
	expectStatus(t, resp, 200)
	readAll(t, resp)
	// 27 - 8 = 19 tokens of output, 9 for each of the 2 sequences.
	if got, want := string(up.last(t).body), `{"model":"m","messages":[],"n":2,"max_completion_tokens":9}`; got != want {
		t.Errorf("upstream got %s\nwant          %s", got, want)
	}
	// An explicit cap too large for what is left is refused, saying what fits.
	resp = e.do(t, "POST", "/v1/chat/completions", `{"model":"m","messages":[],"max_tokens":64}`)
	expectStatus(t, resp, http.StatusTooManyRequests)
	ae := readErr(t, resp)
	// The first answer was 4 + 18 tokens: 395 used, 5 left, under the prompt.
	for _, want := range []string{"Day quota of tokens", "limit 400, used 395 (including requests in flight), 5 left", "Lower max_tokens to at most", "Shorten the prompt or wait for the reset"} {
		if strings.Contains(want, "Lower") {
			if strings.Contains(ae.Error.Message, want) {
				t.Errorf("message %q suggests an impossible max_tokens", ae.Error.Message)
			}
			continue
		}
		if !strings.Contains(ae.Error.Message, want) {
			t.Errorf("message %q lacks %q", ae.Error.Message, want)
		}
	}
}

// charge reserves and settles amount in the env's counter at once: usage
// charged by earlier requests.
func charge(t *testing.T, e *env, budgets []quota.Budget, a quota.Amount) {
	t.Helper()
	r, d, err := e.proxy.counter.Reserve(t.Context(), quota.Request{Budgets: budgets, Estimate: a})
	if err != nil || !d.Allowed {
		t.Fatalf("Reserve(%+v): %v %+v", a, err, d.Exceeded)
	}
	if err := e.proxy.counter.Settle(t.Context(), r, a); err != nil {
		t.Fatal(err)
	}
}

// TestQuotaMessageSaysWhatToLower: the 429 names the window, what is left
// and the most the request's own cap may be.
func TestQuotaMessageSaysWhatToLower(t *testing.T) {
	up := newVLLMUpstream(t, "m", fakeContext)
	e := newEnv(t, nil, up.fakeUpstream)
	u := aliceUser()
	u.Budgets = []quota.Budget{quota.UserBudget("team-a", "alice", "uid-alice", []quota.Limit{
		{Window: llmv1alpha1.WindowDay, Tokens: ptr[int64](400)},
	}, false)}
	e.dir.set(u)
	charge(t, e, u.Budgets, quota.Amount{Requests: 1, InputTokens: 200, OutputTokens: 173})
	resp := e.do(t, "POST", "/v1/chat/completions", `{"model":"m","messages":[],"max_tokens":64}`)
	expectStatus(t, resp, http.StatusTooManyRequests)
	ae := readErr(t, resp)
	const want = "You exceeded your Day quota of tokens of LLMUser team-a/alice: limit 400, used 373 (including requests in flight), 27 left. " +
		"This request needs up to 72 (a prompt of about 8 and up to 64 output). Lower max_tokens to at most 19, or omit it to get what is left."
	if !strings.HasPrefix(ae.Error.Message, want) || ae.Error.Type != openaiapi.TypeInsufficientQuota {
		t.Errorf("message\n got %q\nwant %q...", ae.Error.Message, want)
	}
}

// TestOversizedEventStillMetered: one event too large to inspect (echo and
// logprobs of a long prompt) is passed on, and the usage chunk after it is
// read and hidden from a client that did not ask for it.
func TestOversizedEventStillMetered(t *testing.T) {
	up := newUpstream(t, "m")
	big := `data: {"choices":[{"index":0,"text":"` + strings.Repeat("echo ", 1<<20) + `","logprobs":{}}]}` + "\n\n"
	up.handle = func(w http.ResponseWriter, r *http.Request, body []byte) {
		w.Header().Set("Content-Type", "text/event-stream")
		io.WriteString(w, big)
		io.WriteString(w, `data: {"choices":[],"usage":{"prompt_tokens":6000,"completion_tokens":4000,"total_tokens":10000}}`+"\n\n")
		io.WriteString(w, doneEvent)
	}
	e := newEnv(t, nil, up)
	resp := e.do(t, "POST", "/v1/completions", `{"model":"m","prompt":"x","echo":true,"logprobs":5,"max_tokens":4000,"stream":true}`)
	expectStatus(t, resp, 200)
	if got := string(readAll(t, resp)); got != big+doneEvent {
		t.Errorf("client saw %d bytes ending %q, want the big event and [DONE] only", len(got), got[max(len(got)-80, 0):])
	}
	if c := e.sink.wait(t); c.Amount != (quota.Amount{Requests: 1, InputTokens: 6000, OutputTokens: 4000}) {
		t.Errorf("charge = %+v, want the reported 6000/4000", c.Amount)
	}
}

// TestContinuousUsageChargesACutStream: a client that leaves mid-stream is
// charged the usage of the last chunk it got, which vLLM reports when asked
// for continuous usage stats.
func TestContinuousUsageChargesACutStream(t *testing.T) {
	up := newUpstream(t, "m")
	up.handle = func(w http.ResponseWriter, r *http.Request, body []byte) {
		_, continuous := streamOptions(body)
		w.Header().Set("Content-Type", "text/event-stream")
		for i := 1; ; i++ {
			ev := `data: {"choices":[{"index":0,"delta":{"content":"tok"}}]}` + "\n\n"
			if continuous {
				ev = withUsage(ev, 21, i*50) // 50 tokens a chunk (stream_interval 50)
			}
			if _, err := io.WriteString(w, ev); err != nil {
				return
			}
			w.(http.Flusher).Flush()
			if i == 3 {
				<-r.Context().Done()
				return
			}
		}
	}
	e := newEnv(t, nil, up)
	req, _ := http.NewRequestWithContext(t.Context(), "POST", e.srv.URL+"/v1/chat/completions",
		strings.NewReader(`{"model":"m","messages":[],"max_tokens":1000,"stream":true,"stream_interval":50}`))
	req.Header.Set("Authorization", "Bearer "+alice)
	resp, err := e.srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(resp.Body)
	for seen := 0; seen < 3; {
		line, err := br.ReadString('\n')
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(line, "usage") {
			t.Errorf("the client got usage it did not ask for: %q", line)
		}
		if line == "\n" {
			seen++
		}
	}
	resp.Body.Close()
	if c := e.sink.wait(t); c.Amount != (quota.Amount{Requests: 1, InputTokens: 21, OutputTokens: 150}) {
		t.Errorf("charge = %+v, want the last chunk's usage: 21 in, 150 out", c.Amount)
	}
}

// TestSlowBodiesHoldLittleMemory: clients that declare a large body and
// send a byte hold a buffer of what arrived, not of what they declared, and
// are cut off after the body timeout.
func TestSlowBodiesHoldLittleMemory(t *testing.T) {
	e := newEnv(t, func(o *Options) { o.Timeouts.BodyRead = 2 * time.Second })
	addr := strings.TrimPrefix(e.srv.URL, "http://")
	var conns []net.Conn
	for range 10 {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
		fmt.Fprintf(c, "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\nContent-Length: 10485760\r\n\r\n{", alice)
	}
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	poll.Until(t, 5*time.Second, func() error {
		return poll.Check(e.proxy.bodyMem.all.used.Load() == 10*bodyInitial,
			fmt.Sprintf("body memory %d, want 10 buffers of %d", e.proxy.bodyMem.all.used.Load(), bodyInitial))
	})
	for _, c := range conns {
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatalf("no answer to a trickled body: %v", err)
		}
		if resp.StatusCode != http.StatusRequestTimeout {
			t.Errorf("status %d, want 408", resp.StatusCode)
		}
		resp.Body.Close()
	}
	poll.Until(t, 5*time.Second, func() error {
		return poll.Check(e.proxy.bodyMem.all.used.Load() == 0, fmt.Sprintf("body memory %d after the timeouts, want 0", e.proxy.bodyMem.all.used.Load()))
	})
}

// TestBodyMemoryIsBounded: bodies in flight together cannot hold more than
// MaxBodyMemory; the request that would go past it gets 503.
func TestBodyMemoryIsBounded(t *testing.T) {
	const maxBody = 64 << 10
	e := newEnv(t, func(o *Options) {
		o.MaxRequestBody = maxBody
		o.MaxBodyMemory = MinBodyMemory(maxBody) // 192 KiB
		o.MaxBodyMemoryPerUser = o.MaxBodyMemory
	})
	addr := strings.TrimPrefix(e.srv.URL, "http://")
	// Three bodies of 60 KiB each, sent all but their last byte, hold
	// 3 × 64 KiB: all of it.
	var conns []net.Conn
	for range 3 {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		conns = append(conns, c)
		fmt.Fprintf(c, "POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\nContent-Length: %d\r\n\r\n%s", alice, 60<<10, strings.Repeat(" ", 60<<10-1))
	}
	poll.Until(t, 5*time.Second, func() error {
		return poll.Check(e.proxy.bodyMem.all.used.Load() == 3*(64<<10), fmt.Sprintf("body memory %d, want 3 × 64 KiB", e.proxy.bodyMem.all.used.Load()))
	})
	resp := e.do(t, "POST", "/v1/completions", `{"model":"qwen/Qwen3-8B","prompt":"hi"}`)
	expectStatus(t, resp, http.StatusServiceUnavailable)
	if ae := readErr(t, resp); str(ae.Error.Code) != openaiapi.CodeServerBusy || resp.Header.Get("Retry-After") != "1" {
		t.Errorf("error %+v, Retry-After %q", ae.Error, resp.Header.Get("Retry-After"))
	}
	for _, c := range conns {
		c.Write([]byte(" "))
	}
}

// TestBodyMemoryPerUser: one user holding their share of the body memory
// cannot take the rest: their next body gets 503, another user's does not.
func TestBodyMemoryPerUser(t *testing.T) {
	const maxBody = 64 << 10
	e := newEnv(t, func(o *Options) {
		o.MaxRequestBody = maxBody
		o.MaxBodyMemory = 4 * MinBodyMemory(maxBody)
		o.MaxBodyMemoryPerUser = MinBodyMemory(maxBody) // 192 KiB
	})
	bob := aliceUser()
	bob.Name, bob.UID = "bob", "uid-bob"
	e.dir.set(bob)
	e.verifier().claims["tok-bob"] = &token.Claims{Namespace: "team-a", Name: "bob", UID: "uid-bob", Generation: 2}
	addr := strings.TrimPrefix(e.srv.URL, "http://")
	for range 3 {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		fmt.Fprintf(c, "POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\nContent-Length: %d\r\n\r\n%s", alice, 60<<10, strings.Repeat(" ", 60<<10-1))
	}
	poll.Until(t, 5*time.Second, func() error {
		return poll.Check(e.proxy.bodyMem.all.used.Load() == 3*(64<<10), fmt.Sprintf("body memory %d, want alice's 3 × 64 KiB", e.proxy.bodyMem.all.used.Load()))
	})
	resp := e.do(t, "POST", "/v1/completions", `{"model":"qwen/Qwen3-8B","prompt":"hi"}`)
	expectStatus(t, resp, http.StatusServiceUnavailable)
	readAll(t, resp)
	resp = e.do(t, "POST", "/v1/completions", `{"model":"qwen/Qwen3-8B","prompt":"hi"}`, "tok-bob")
	expectStatus(t, resp, http.StatusOK)
	readAll(t, resp)
}

// TestNonReadingClientIsCutOff: a client that stops reading a stream is cut
// off after the write timeout; its request is settled and charged what the
// upstream had generated by then.
func TestNonReadingClientIsCutOff(t *testing.T) {
	up := newUpstream(t, "m")
	up.handle = func(w http.ResponseWriter, r *http.Request, body []byte) {
		w.Header().Set("Content-Type", "text/event-stream")
		chunk := `data: {"choices":[{"index":0,"delta":{"content":"` + strings.Repeat("y", 4000) + `"}}]}` + "\n\n"
		for i := 1; ; i++ {
			if _, err := io.WriteString(w, withUsage(chunk, 10, i)); err != nil {
				return
			}
			w.(http.Flusher).Flush()
		}
	}
	e := newEnv(t, func(o *Options) { o.Timeouts.Write = 300 * time.Millisecond }, up)
	c, err := net.Dial("tcp", strings.TrimPrefix(e.srv.URL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	body := `{"model":"m","messages":[],"max_tokens":100000,"stream":true}`
	fmt.Fprintf(c, "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\nContent-Length: %d\r\n\r\n%s", alice, len(body), body)
	// Never read: the socket buffers fill and the proxy's writes block.
	ch := e.sink.wait(t)
	if ch.Amount.Requests != 1 || ch.Amount.InputTokens != 10 || ch.Amount.OutputTokens < 10 || ch.Amount.OutputTokens >= 100000 {
		t.Errorf("charge = %+v, want 10 in and the chunks generated before the cut", ch.Amount)
	}
	poll.Until(t, 5*time.Second, func() error {
		st, _ := e.mem.Status(t.Context(), aliceUser().Budgets[0])
		return poll.Check(st[0].Reserved.IsZero(), fmt.Sprintf("still reserved: %+v", st[0].Reserved))
	})
}

// TestConcurrencyLimit: a user at their limit of requests in flight gets
// 429 at once; when one finishes, the next is admitted.
func TestConcurrencyLimit(t *testing.T) {
	release := make(chan struct{})
	up := newUpstream(t, "m")
	up.handle = func(w http.ResponseWriter, r *http.Request, body []byte) {
		<-release
		io.WriteString(w, chatJSON)
	}
	reg := prometheus.NewRegistry()
	e := newEnv(t, func(o *Options) { o.Metrics = metrics.New(reg, metrics.Options{UserLabel: true}) }, up)
	u := aliceUser()
	u.MaxConcurrentRequests = ptr[int64](2)
	e.dir.set(u)
	var wg sync.WaitGroup
	for range 2 {
		wg.Go(func() {
			resp := e.do(t, "POST", "/v1/chat/completions", `{"model":"m","messages":[]}`)
			expectStatus(t, resp, 200)
			readAll(t, resp)
		})
	}
	poll.Until(t, 5*time.Second, func() error { return poll.Check(up.count() == 2, "two requests not yet upstream") })
	resp := e.do(t, "POST", "/v1/chat/completions", `{"model":"m","messages":[]}`)
	expectStatus(t, resp, http.StatusTooManyRequests)
	ae := readErr(t, resp)
	if str(ae.Error.Code) != openaiapi.CodeConcurrencyLimit || !strings.Contains(ae.Error.Message, "already has 2 requests in flight") ||
		resp.Header.Get("X-Ratelimit-Limit-Concurrency") != "2" || resp.Header.Get("Retry-After") != "1" {
		t.Errorf("error %+v headers %v", ae.Error, resp.Header)
	}
	close(release)
	wg.Wait()
	resp = e.do(t, "POST", "/v1/chat/completions", `{"model":"m","messages":[]}`)
	expectStatus(t, resp, 200)
	readAll(t, resp)
	if got := metricValue(t, reg, "llm_proxy_rejections_total", map[string]string{"reason": "concurrency_limit"}); got != 1 {
		t.Errorf("concurrency_limit rejections = %v, want 1", got)
	}
}

// TestRequestIDs: the upstream gets the proxy's own request id; the
// client's goes along for correlation only, and both come back.
func TestRequestIDs(t *testing.T) {
	e := newEnv(t, nil, newUpstream(t, "m"))
	req, _ := http.NewRequest("POST", e.srv.URL+"/v1/chat/completions", strings.NewReader(`{"model":"m","messages":[]}`))
	req.Header.Set("Authorization", "Bearer "+alice)
	req.Header.Set("X-Request-Id", "someone-elses-request")
	req.Header.Set("X-Data-Parallel-Rank", "3")
	req.Header.Set("Traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
	resp, err := e.srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	expectStatus(t, resp, 200)
	readAll(t, resp)
	ours := resp.Header.Get("X-Request-Id")
	if !strings.HasPrefix(ours, "llmp-") {
		t.Errorf("X-Request-Id = %q, want the proxy's", ours)
	}
	got := e.ups[0].last(t).header
	if got.Get("X-Request-Id") != ours || got.Get("X-Client-Request-Id") != "someone-elses-request" {
		t.Errorf("upstream saw X-Request-Id %q and X-Client-Request-Id %q", got.Get("X-Request-Id"), got.Get("X-Client-Request-Id"))
	}
	if got.Get("X-Data-Parallel-Rank") != "" || got.Get("Traceparent") == "" {
		t.Errorf("upstream headers %v: routing headers must not pass, tracing must", got)
	}
	// A refusal carries one too.
	resp = e.do(t, "POST", "/v1/chat/completions", `{"model":"m"`)
	expectStatus(t, resp, 400)
	readAll(t, resp)
	if id := resp.Header.Get("X-Request-Id"); !strings.HasPrefix(id, "llmp-") || id == ours {
		t.Errorf("refusal X-Request-Id = %q", id)
	}
}

// TestDryRunNotifies: a DryRun quota tells the notifier what it would have
// refused.
func TestDryRunNotifies(t *testing.T) {
	n := &recordingNotifier{}
	e := newEnv(t, func(o *Options) { o.DryRun = n })
	u := aliceUser()
	u.DryRun = true
	u.Budgets = []quota.Budget{quota.UserBudget("team-a", "alice", "uid-alice", []quota.Limit{
		{Window: llmv1alpha1.WindowDay, Requests: ptr[int64](1)},
	}, true)}
	e.dir.set(u)
	for range 2 {
		resp := e.do(t, "POST", "/v1/chat/completions", chatBody)
		expectStatus(t, resp, 200)
		readAll(t, resp)
	}
	if got := n.reasons(); len(got) != 1 || got[0] != "insufficient_quota" {
		t.Errorf("notices %v, want one insufficient_quota", got)
	}
}

type recordingNotifier struct {
	mu   sync.Mutex
	seen []string
}

func (r *recordingNotifier) Notify(u *User, reason, message string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.seen = append(r.seen, reason)
}

func (r *recordingNotifier) reasons() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.seen...)
}
