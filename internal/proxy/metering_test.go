package proxy

import (
	"context"

	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	llmv1alpha1 "github.com/llm-user-operator/llm-user-operator/api/v1alpha1"
	"github.com/llm-user-operator/llm-user-operator/internal/metrics"
	"github.com/llm-user-operator/llm-user-operator/internal/quota"
)

// streamRequest sends body to path as alice and reads output events until
// it has read want of them (all, when want < 0), then hangs up. It returns
// the tokens the client was delivered.
func streamRequest(t *testing.T, e *env, path, body string, want int) int64 {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "POST", e.srv.URL+path, strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+alice)
	resp, err := e.srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	expectStatus(t, resp, 200)
	tokens, _ := readDelivered(t, resp.Body, want)
	return tokens
}

// TestMeteringHoles: each row of the metering review (issue 14) against an
// upstream that streams as vLLM does. Before this change each was charged
// the last chunk's numbers, or 1–2 tokens, or nothing of its output.
func TestMeteringHoles(t *testing.T) {
	for _, tc := range []struct {
		name      string
		up        vllmStream
		path      string
		body      string
		read      int // output events the client reads before it leaves (-1: to the end)
		delivered int64
		want      quota.Amount
		basis     string
	}{
		{
			name: "row 1: chat n 8, the client leaves before the final usage",
			up:   vllmStream{path: "/v1/chat/completions", prompts: []int64{12}, n: 8, steps: 49, hold: true},
			path: "/v1/chat/completions", body: `{"model":"m","messages":[{"role":"user","content":"hi"}],"n":8,"max_tokens":49,"stream":true}`,
			read: 392, delivered: 392, want: quota.Amount{Requests: 1, InputTokens: 12, OutputTokens: 392}, basis: metrics.BasisContinuous,
		},
		{
			name: "row 1: completions of 4 prompts × n 4, the client leaves before the final usage",
			up:   vllmStream{path: "/v1/completions", prompts: []int64{3, 5, 7, 9}, n: 4, steps: 49, hold: true},
			path: "/v1/completions", body: `{"model":"m","prompt":["a","b","c","d"],"n":4,"max_tokens":49,"stream":true}`,
			read: 784, delivered: 784, want: quota.Amount{Requests: 1, InputTokens: 24, OutputTokens: 784}, basis: metrics.BasisContinuous,
		},
		{
			name: "row 1: completions of 4 prompts × n 4, the client leaves half-way",
			up:   vllmStream{path: "/v1/completions", prompts: []int64{3, 5, 7, 9}, n: 4, steps: 49, hold: true},
			path: "/v1/completions", body: `{"model":"m","prompt":["a","b","c","d"],"n":4,"max_tokens":49,"stream":true}`,
			// 24 steps of 16 sequences, then 8 sequences of the 25th.
			read: 392, delivered: 392, basis: metrics.BasisContinuous,
		},
		{
			name: "row 2: beam search streamed as one event of the whole response",
			up:   vllmStream{path: "/v1/completions", prompts: []int64{6}, n: 8, steps: 8192, beam: true},
			path: "/v1/completions", body: `{"model":"m","prompt":"x","n":8,"max_tokens":8192,"use_beam_search":true,"stream":true}`,
			read: -1, delivered: 65536, want: quota.Amount{Requests: 1, InputTokens: 6, OutputTokens: 65536}, basis: metrics.BasisUsage,
		},
		{
			name: "row 2: chat beam search, each choice's answer in one chunk, the client leaves before the final usage",
			up:   vllmStream{path: "/v1/chat/completions", prompts: []int64{30}, n: 2, steps: 8000, beam: true, hold: true},
			path: "/v1/chat/completions", body: `{"model":"m","messages":[{"role":"user","content":"hi"}],"n":2,"max_tokens":8000,"use_beam_search":true,"stream":true}`,
			read: 2, delivered: 16000, want: quota.Amount{Requests: 1, InputTokens: 30, OutputTokens: 16000}, basis: metrics.BasisContinuous,
		},
		{
			name: "row 2: response.completed with a large metadata and a usage inside it",
			up:   vllmStream{path: "/v1/responses", prompts: []int64{10}, reasoning: 500, text: 2, metadata: 200 << 10},
			path: "/v1/responses", body: `{"model":"m","input":"hi","max_output_tokens":1000,"stream":true}`,
			read: -1, delivered: 502, want: quota.Amount{Requests: 1, InputTokens: 10, OutputTokens: 502}, basis: metrics.BasisUsage,
		},
		{
			name: "row 3: a reasoning stream cut by the client",
			up:   vllmStream{path: "/v1/responses", prompts: []int64{10}, reasoning: 300, hold: true},
			path: "/v1/responses", body: `{"model":"m","input":"hi","max_output_tokens":1000,"stream":true}`,
			// The prompt estimate: "hi" as JSON, 4 bytes, and the overhead.
			read: 300, delivered: 300, want: quota.Amount{Requests: 1, InputTokens: 9, OutputTokens: 300}, basis: metrics.BasisDelivered,
		},
		{
			name: "row 3: function call arguments cut by the client",
			up:   vllmStream{path: "/v1/responses", prompts: []int64{10}, args: 120, hold: true},
			path: "/v1/responses", body: `{"model":"m","input":"hi","max_output_tokens":1000,"stream":true}`,
			read: 120, delivered: 120, want: quota.Amount{Requests: 1, InputTokens: 9, OutputTokens: 120}, basis: metrics.BasisDelivered,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			up := newUpstream(t, "m")
			v := tc.up
			up.handle = v.serve
			reg := prometheus.NewRegistry()
			e := newEnv(t, func(o *Options) { o.Metrics = metrics.New(reg, metrics.Options{UserLabel: true}) }, up)
			got := streamRequest(t, e, tc.path, tc.body, tc.read)
			if got != tc.delivered {
				t.Fatalf("the client was delivered %d tokens, want %d", got, tc.delivered)
			}
			c := e.sink.wait(t)
			if tc.want != (quota.Amount{}) && c.Amount != tc.want {
				t.Errorf("charge = %+v, want %+v", c.Amount, tc.want)
			}
			if c.Amount.OutputTokens < tc.delivered {
				t.Errorf("charged %d output tokens, below the %d delivered", c.Amount.OutputTokens, tc.delivered)
			}
			if n := metricValue(t, reg, "llm_proxy_charges_total", map[string]string{"basis": tc.basis}); n != 1 {
				t.Errorf("llm_proxy_charges_total{basis=%q} = %v, want 1", tc.basis, n)
			}
		})
	}
}

// TestMeteringMatrix: every streaming endpoint × every way a stream ends ×
// one or several sequences, against an upstream that streams as vLLM does.
// Whatever happens, the charge is at least what the client was delivered
// and at most the reservation (the input as reported, within the estimate
// here, since the fake's prompts are shorter than their estimate).
func TestMeteringMatrix(t *testing.T) {
	type shape struct {
		name string
		up   vllmStream
		path string
		body string
		out  int // output events in the whole stream
	}
	shapes := []shape{
		{"chat", vllmStream{path: "/v1/chat/completions", prompts: []int64{5}, n: 1, steps: 40}, "/v1/chat/completions",
			`{"model":"m","messages":[{"role":"user","content":"hello there"}],"max_tokens":40,"stream":true}`, 40},
		{"chat n 3", vllmStream{path: "/v1/chat/completions", prompts: []int64{5}, n: 3, steps: 40}, "/v1/chat/completions",
			`{"model":"m","messages":[{"role":"user","content":"hello there"}],"n":3,"max_tokens":40,"stream":true}`, 120},
		{"completions 2 prompts × n 2", vllmStream{path: "/v1/completions", prompts: []int64{2, 3}, n: 2, steps: 40}, "/v1/completions",
			`{"model":"m","prompt":["hello","there"],"n":2,"max_tokens":40,"stream":true}`, 160},
		{"responses", vllmStream{path: "/v1/responses", prompts: []int64{4}, reasoning: 20, args: 10, text: 10}, "/v1/responses",
			`{"model":"m","input":"hello there","max_output_tokens":40,"stream":true}`, 40},
	}
	type end struct {
		name   string
		adjust func(v *vllmStream, out int) (read int)
	}
	ends := []end{
		{"completed", func(v *vllmStream, out int) int { return -1 }},
		{"client leaves half-way", func(v *vllmStream, out int) int { v.hold = true; return out / 2 }},
		{"client leaves before the final usage", func(v *vllmStream, out int) int { v.hold = true; return out }},
		{"upstream breaks half-way", func(v *vllmStream, out int) int { v.breakAfter = out/2 + 4; return -1 }},
		{"upstream without usage, client leaves", func(v *vllmStream, out int) int { v.noUsage, v.hold = true, true; return out / 2 }},
		{"upstream without usage, completed", func(v *vllmStream, out int) int { v.noUsage = true; return -1 }},
	}
	for _, sh := range shapes {
		for _, en := range ends {
			t.Run(sh.name+"/"+en.name, func(t *testing.T) {
				v := sh.up
				read := en.adjust(&v, sh.out)
				up := newUpstream(t, "m")
				up.handle = v.serve
				audit := &auditCounter{Counter: quota.NewMemory(testClock)}
				e := newEnv(t, func(o *Options) { o.Counter = audit }, up)
				delivered := streamRequest(t, e, sh.path, sh.body, read)
				c := e.sink.wait(t)
				poll := time.Now().Add(5 * time.Second)
				for len(audit.all()) == 0 && time.Now().Before(poll) {
					time.Sleep(time.Millisecond)
				}
				s := audit.all()
				if len(s) != 1 {
					t.Fatalf("%d settlements, want 1", len(s))
				}
				res := s[0].reserved
				if c.Amount.OutputTokens < delivered {
					t.Errorf("charged %d output tokens, below the %d delivered", c.Amount.OutputTokens, delivered)
				}
				if c.Amount.OutputTokens > res.OutputTokens || c.Amount.InputTokens > res.InputTokens {
					t.Errorf("charged %+v, above the reservation %+v", c.Amount, res)
				}
				if c.Amount.Requests != 1 || c.Amount.InputTokens == 0 {
					t.Errorf("charged %+v, want one request and its prompt", c.Amount)
				}
			})
		}
	}
}

// TestHangUpBeforeTheAnswer: a client that leaves a non-streamed request
// before its answer does not stop the upstream, and is charged exactly the
// usage the upstream reports, not the prompt alone.
func TestHangUpBeforeTheAnswer(t *testing.T) {
	left := make(chan struct{})
	upstreamCanceled := make(chan bool, 1)
	up := newUpstream(t, "m")
	up.handle = func(w http.ResponseWriter, r *http.Request, body []byte) {
		<-left
		time.Sleep(50 * time.Millisecond) // the proxy has seen the client go
		upstreamCanceled <- r.Context().Err() != nil
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"id":"c","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"`+strings.Repeat("t", 3000)+`"}}],"usage":{"prompt_tokens":11,"completion_tokens":3000,"total_tokens":3011}}`)
	}
	e := newEnv(t, nil, up)
	ctx, cancel := context.WithCancel(t.Context())
	req, _ := http.NewRequestWithContext(ctx, "POST", e.srv.URL+"/v1/chat/completions", strings.NewReader(`{"model":"m","messages":[],"max_tokens":4000}`))
	req.Header.Set("Authorization", "Bearer "+alice)
	go func() {
		for up.count() == 0 {
			time.Sleep(time.Millisecond)
		}
		cancel()
		close(left)
	}()
	if _, err := e.srv.Client().Do(req); err == nil {
		t.Fatal("the request completed; the client was to hang up first")
	}
	if <-upstreamCanceled {
		t.Error("the upstream request was canceled when the client left")
	}
	if c := e.sink.wait(t); c.Amount != (quota.Amount{Requests: 1, InputTokens: 11, OutputTokens: 3000}) {
		t.Errorf("charge = %+v, want the reported 11 in, 3000 out", c.Amount)
	}
}

// TestBodyWithoutUsageChargesTheReservation: an answer that says nothing of
// its usage is charged the bound it was admitted with.
func TestBodyWithoutUsageChargesTheReservation(t *testing.T) {
	up := newUpstream(t, "m")
	up.handle = func(w http.ResponseWriter, r *http.Request, body []byte) {
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"id":"c","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"hi"}}]}`)
	}
	e := newEnv(t, nil, up)
	resp := e.do(t, "POST", "/v1/chat/completions", `{"model":"m","messages":[],"max_tokens":300}`)
	expectStatus(t, resp, 200)
	readAll(t, resp)
	// The prompt estimate: "[]", 2 bytes, and the overhead.
	if c := e.sink.wait(t); c.Amount != (quota.Amount{Requests: 1, InputTokens: 8, OutputTokens: 300}) {
		t.Errorf("charge = %+v, want the reservation: 8 in, 300 out", c.Amount)
	}
}

// TestHiddenInputIsReserved (row 4): input the estimate never used to see
// is reserved, so concurrent requests cannot overrun a small budget: eight
// embeddings of a 1,016-token conversation against a 2,000-token day.
func TestHiddenInputIsReserved(t *testing.T) {
	up := newUpstream(t, "m")
	up.handle = func(w http.ResponseWriter, r *http.Request, body []byte) {
		time.Sleep(20 * time.Millisecond)
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"object":"list","data":[{"index":0,"object":"embedding","embedding":[0.1]}],"usage":{"prompt_tokens":1016,"total_tokens":1016,"completion_tokens":0}}`)
	}
	e := newEnv(t, nil, up)
	u := aliceUser()
	u.Budgets = []quota.Budget{quota.UserBudget("team-a", "alice", "uid-alice", []quota.Limit{{Window: llmv1alpha1.WindowDay, Tokens: ptr[int64](2000)}}, false)}
	e.dir.set(u)
	body := `{"model":"m","messages":[{"role":"user","content":"` + strings.Repeat("x", 4000) + `"}]}`
	var wg sync.WaitGroup
	codes := make(chan int, 8)
	for range 8 {
		wg.Go(func() {
			resp := e.do(t, "POST", "/v1/embeddings", body)
			readAll(t, resp)
			codes <- resp.StatusCode
		})
	}
	wg.Wait()
	close(codes)
	ok := 0
	for c := range codes {
		if c == 200 {
			ok++
		}
	}
	var charged int64
	for range ok {
		charged += e.sink.wait(t).Amount.InputTokens
	}
	if ok != 1 || charged != 1016 {
		t.Errorf("%d admitted, %d tokens charged; want 1 admitted at 1016 tokens (the estimate is 1015, so a second does not fit in 2000)", ok, charged)
	}
}

// TestMediaIsReserved (row 4): an image is a few bytes and thousands of
// tokens: it is reserved at the media bound, the model's context length by
// default, so a budget smaller than that refuses it instead of being
// overrun eight times over.
func TestMediaIsReserved(t *testing.T) {
	up := newUpstream(t, "m")
	e := newEnv(t, nil, up)
	u := aliceUser()
	u.Budgets = []quota.Budget{quota.UserBudget("team-a", "alice", "uid-alice", []quota.Limit{{Window: llmv1alpha1.WindowDay, Tokens: ptr[int64](2000)}}, false)}
	e.dir.set(u)
	body := `{"model":"m","max_tokens":10,"messages":[{"role":"user","content":[{"type":"text","text":"what is it?"},{"type":"image_url","image_url":{"url":"http://images/cat.png"}}]}]}`
	resp := e.do(t, "POST", "/v1/chat/completions", body)
	if resp.StatusCode != http.StatusTooManyRequests {
		t.Fatalf("status %d, want 429: the image alone may cost the context length, 8192", resp.StatusCode)
	}
	if ae := readErr(t, resp); !strings.Contains(ae.Error.Message, "8192") {
		t.Errorf("message %q does not say the image's bound", ae.Error.Message)
	}
	// With a bound per item set by the operator, it fits.
	e2 := newEnv(t, func(o *Options) { o.MediaItemTokens = 1500 }, newUpstream(t, "m"))
	e2.dir.set(u)
	resp = e2.do(t, "POST", "/v1/chat/completions", body)
	expectStatus(t, resp, 200)
	readAll(t, resp)
}

// TestPromptEmbedsListIsBounded (row 5): each entry of a prompt_embeds list
// is its own prompt: the output is bounded for all of them together.
func TestPromptEmbedsListIsBounded(t *testing.T) {
	up := newVLLMUpstream(t, "m", 8192)
	audit := &auditCounter{Counter: quota.NewMemory(testClock)}
	e := newEnv(t, func(o *Options) { o.Counter = audit }, up.fakeUpstream)
	u := aliceUser()
	u.MaxTokensPerRequest = ptr[int64](100)
	e.dir.set(u)
	embeds := `["QUJD","REVG","R0hJ","SktM","TU5P","UFFS","U1RV","VldY","WVph","YmNk"]`
	resp := e.do(t, "POST", "/v1/completions", `{"model":"m","prompt_embeds":`+embeds+`,"max_tokens":100}`)
	if resp.StatusCode != 400 {
		t.Fatalf("status %d, want 400: 100 tokens for each of 10 prompts is 1000", resp.StatusCode)
	}
	if ae := readErr(t, resp); !strings.Contains(ae.Error.Message, "10 sequences") {
		t.Errorf("message %q does not count the prompts", ae.Error.Message)
	}
	resp = e.do(t, "POST", "/v1/completions", `{"model":"m","prompt_embeds":`+embeds+`}`)
	expectStatus(t, resp, 200)
	readAll(t, resp)
	c := e.sink.wait(t)
	if c.Amount.OutputTokens != 100 {
		t.Errorf("charged %d output tokens, want 10 prompts × 10", c.Amount.OutputTokens)
	}
	if got := up.last(t).body; !strings.Contains(string(got), `"max_tokens":10}`) {
		t.Errorf("upstream body %s, want a cap of 10 per sequence", got)
	}
}

// TestOwnedMembers (row 6 and the tenants' isolation): the proxy owns
// request_id, cache_salt and kv_transfer_params as it owns priority.
func TestOwnedMembers(t *testing.T) {
	up := newUpstream(t, "m")
	e := newEnv(t, nil, up)
	u := aliceUser()
	u.CacheSalt = CacheSalt("User", u.Namespace, u.Name, u.UID, u.QuotaName, "")
	e.dir.set(u)
	for _, tc := range []struct {
		path, body string
		want       string // ID: the proxy's request id
	}{
		{"/v1/responses", `{"model":"m","input":"hi","max_output_tokens":5,"request_id":"resp_bob","cache_salt":"bob","kv_transfer_params":{"remote_host":"x"}}`,
			`{"model":"m","input":"hi","max_output_tokens":5,"cache_salt":"SALT","request_id":"resp_ID"}`},
		{"/v1/responses", `{"request\u005fid":"resp_bob","model":"m","input":"hi","max_output_tokens":5}`,
			`{"model":"m","input":"hi","max_output_tokens":5,"cache_salt":"SALT","request_id":"resp_ID"}`},
		{"/v1/chat/completions", `{"model":"m","messages":[],"max_tokens":5,"request_id":"x","cache_s\u0061lt":"bob"}`,
			`{"model":"m","messages":[],"max_tokens":5,"cache_salt":"SALT"}`},
		{"/v1/completions", `{"kv_transfer_params":{"do_remote_prefill":true},"model":"m","prompt":"p","max_tokens":5}`,
			`{"model":"m","prompt":"p","max_tokens":5,"cache_salt":"SALT"}`},
		{"/v1/embeddings", `{"model":"m","input":"p","cache_salt":"bob","request_id":"x"}`,
			`{"model":"m","input":"p"}`},
	} {
		resp := e.do(t, "POST", tc.path, tc.body)
		expectStatus(t, resp, 200)
		readAll(t, resp)
		want := strings.NewReplacer("SALT", u.CacheSalt, "ID", resp.Header.Get("X-Request-Id")).Replace(tc.want)
		if got := string(up.last(t).body); got != want {
			t.Errorf("%s %s:\nupstream got %s\nwant        %s", tc.path, tc.body, got, want)
		}
	}
	if len(u.CacheSalt) != 32 {
		t.Errorf("cache salt %q, want 32 hex digits", u.CacheSalt)
	}

	// The verified flow for a scheduler's fair queuing replaces the client's.
	u.FairnessID = FairnessID(u.Namespace, u.Name, u.QuotaName, false)
	e.dir.set(u)
	req, _ := http.NewRequest("POST", e.srv.URL+"/v1/chat/completions", strings.NewReader(`{"model":"m","messages":[],"max_tokens":5}`))
	req.Header.Set("Authorization", "Bearer "+alice)
	req.Header.Set("X-Gateway-Inference-Fairness-Id", "team-b/user/bob")
	fresp, err := e.srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	readAll(t, fresp)
	if got := up.last(t).header.Values("X-Gateway-Inference-Fairness-Id"); len(got) != 1 || got[0] != "team-a/user/alice" {
		t.Errorf("upstream fairness id %q, want team-a/user/alice alone", got)
	}

	// An upstream allowed to take kv_transfer_params gets the client's.
	e2 := newEnv(t, func(o *Options) { o.KVTransferUpstreams = []string{up.URL} }, up)
	resp := e2.do(t, "POST", "/v1/completions", `{"kv_transfer_params":{"do_remote_prefill":true},"model":"m","prompt":"p","max_tokens":5}`)
	expectStatus(t, resp, 200)
	readAll(t, resp)
	if got := string(up.last(t).body); got != `{"kv_transfer_params":{"do_remote_prefill":true},"model":"m","prompt":"p","max_tokens":5}` {
		t.Errorf("allowed upstream got %s", got)
	}

	// previous_response_id names a response stored upstream: refused.
	resp = e.do(t, "POST", "/v1/responses", `{"model":"m","input":"hi","previous_response_id":"resp_1"}`)
	if resp.StatusCode != 400 {
		t.Fatalf("previous_response_id: status %d, want 400", resp.StatusCode)
	}
	if ae := readErr(t, resp); str(ae.Error.Param) != "previous_response_id" {
		t.Errorf("param %q, want previous_response_id", str(ae.Error.Param))
	}
}

// TestCacheSalt: per user by default, per quota when it shares, none at
// all when isolation is off; never a name in clear.
func TestCacheSalt(t *testing.T) {
	a := CacheSalt("User", "team-a", "alice", "uid-1", "gold", "q-1")
	b := CacheSalt("User", "team-a", "bob", "uid-2", "gold", "q-1")
	qa := CacheSalt("Quota", "team-a", "alice", "uid-1", "gold", "q-1")
	qb := CacheSalt("Quota", "team-a", "bob", "uid-2", "gold", "q-1")
	switch {
	case a == b:
		t.Errorf("two users share the salt %q", a)
	case qa != qb:
		t.Errorf("two users of one quota with Quota isolation: %q and %q", qa, qb)
	case qa == a:
		t.Error("a quota's salt equals a user's")
	case CacheSalt("None", "team-a", "alice", "uid-1", "gold", "q-1") != "":
		t.Error("isolation None still salts")
	case CacheSalt("User", "team-a", "alice", "uid-other", "gold", "q-1") == a:
		t.Error("a re-created user (new uid) shares the old one's cache")
	case strings.ContainsAny(a, "@/\\\x00") || strings.Contains(a, "alice"):
		t.Errorf("salt %q is not opaque or not valid for vLLM", a)
	}

}

// TestCutRequestsEndsDetachedAnswers: the upstream requests that outlive
// their client end when the proxy cuts its requests (a shutdown past its
// grace), and are charged then: the prompt, since nothing was answered.
func TestCutRequestsEndsDetachedAnswers(t *testing.T) {
	up := newUpstream(t, "m")
	up.handle = func(w http.ResponseWriter, r *http.Request, body []byte) {
		<-r.Context().Done() // an answer that never comes
	}
	e := newEnv(t, nil, up)
	ctx, cancel := context.WithCancel(t.Context())
	req, _ := http.NewRequestWithContext(ctx, "POST", e.srv.URL+"/v1/chat/completions", strings.NewReader(`{"model":"m","messages":[],"max_tokens":40}`))
	req.Header.Set("Authorization", "Bearer "+alice)
	go func() {
		for up.count() == 0 {
			time.Sleep(time.Millisecond)
		}
		cancel()
	}()
	if _, err := e.srv.Client().Do(req); err == nil {
		t.Fatal("the request completed")
	}
	time.Sleep(50 * time.Millisecond)
	if n := len(e.sink.all()); n != 0 {
		t.Fatalf("%d charges while the upstream still works on the answer, want 0", n)
	}
	e.proxy.CutRequests()
	if c := e.sink.wait(t); c.Amount != (quota.Amount{Requests: 1, InputTokens: 8}) {
		t.Errorf("charge = %+v, want the prompt estimate, 8", c.Amount)
	}
}

// TestLargeAnswerUsageByDepth: a non-streamed answer larger than what the
// proxy keeps is scanned as it passes; its usage is the top-level one, not
// a "usage" the answer carries after it (vLLM's input_messages).
func TestLargeAnswerUsageByDepth(t *testing.T) {
	up := newUpstream(t, "m")
	big := strings.Repeat("t", 200<<10)
	up.handle = func(w http.ResponseWriter, r *http.Request, body []byte) {
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"id":"resp_1","object":"response","output":[{"type":"message","content":[{"type":"output_text","text":"`+big+`"}]}],`+
			`"usage":{"input_tokens":7,"output_tokens":9},"user":null,"input_messages":[{"usage":{"input_tokens":1,"output_tokens":1}},"`+big+`"]}`)
	}
	e := newEnv(t, nil, up)
	resp := e.do(t, "POST", "/v1/responses", `{"model":"m","input":"hi","max_output_tokens":50}`)
	expectStatus(t, resp, 200)
	readAll(t, resp)
	if c := e.sink.wait(t); c.Amount != (quota.Amount{Requests: 1, InputTokens: 7, OutputTokens: 9}) {
		t.Errorf("charge = %+v, want the top-level usage 7/9", c.Amount)
	}
}
