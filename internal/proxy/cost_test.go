package proxy

import (
	"encoding/json"
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

// movingClock is a fake clock a test moves on.
type movingClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *movingClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *movingClock) set(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = t
}

// llamaPricing prices meta-llama models at 2 USD per million input tokens,
// 0.5 per million cached ones and 8 per million output tokens: 2,000,000,
// 500,000 and 8,000,000 pico-USD a token.
func llamaPricing() *quota.Pricing {
	return &quota.Pricing{Currency: "USD", Models: []quota.ModelPrice{
		{Pattern: "meta-llama/*", Price: quota.Price{Input: 2_000_000, CachedInput: 500_000, Output: 8_000_000}},
	}}
}

// costEnv is a proxy whose user alice has a priced quota with a Day cost
// budget of capPico, on a clock the test moves.
func costEnv(t *testing.T, capPico int64, dryRun bool, start time.Time) (*env, *movingClock) {
	t.Helper()
	clk := &movingClock{now: start}
	mem := quota.NewMemory(clk.Now)
	e := newEnv(t, func(o *Options) { o.Now, o.Counter = clk.Now, mem })
	e.mem = mem
	u := aliceUser()
	u.QuotaName = "priced"
	u.DryRun = dryRun
	u.Pricing = llamaPricing()
	u.Budgets = []quota.Budget{quota.UserBudget("team-a", "alice", "uid-alice",
		[]quota.Limit{{Window: llmv1alpha1.WindowDay, Cost: ptr(capPico)}}, dryRun)}
	e.dir.set(u)
	return e, clk
}

const cappedChat = `{"model":"meta-llama/Llama-3.1-8B","messages":[{"role":"user","content":"Hello"}],"max_tokens":10}`

// TestCostBudget: requests are charged their price (chatJSON reports 11
// prompt and 7 completion tokens: 22 + 56 = 78 µUSD), a Day cost budget
// refuses the request whose worst case no longer fits with 429
// insufficient_quota naming the budget, its currency and its reset, and
// admits again once the day has turned.
func TestCostBudget(t *testing.T) {
	start := time.Date(2026, 5, 1, 23, 58, 0, 0, time.UTC)
	e, clk := costEnv(t, 200_000_000, false, start) // 0.0002 USD
	for i := range 2 {
		resp := e.do(t, http.MethodPost, "/v1/chat/completions", cappedChat)
		expectStatus(t, resp, http.StatusOK)
		readAll(t, resp)
		if c := e.sink.wait(t); c.Amount.Cost != 78_000_000 {
			t.Fatalf("request %d charged %d pico-USD, want 78000000", i, c.Amount.Cost)
		}
	}
	// 156 µUSD used; this request may cost its prompt estimate at 2 µUSD a
	// token and 10 output tokens at 8: more than the 44 left.
	resp := e.do(t, http.MethodPost, "/v1/chat/completions", cappedChat)
	expectStatus(t, resp, http.StatusTooManyRequests)
	if got := resp.Header.Get("Retry-After"); got != "120" {
		t.Errorf("Retry-After = %q, want 120 (the day ends in two minutes)", got)
	}
	er := readErr(t, resp)
	if er.Error.Type != "insufficient_quota" || str(er.Error.Code) != "insufficient_quota" {
		t.Errorf("error type/code = %s/%s, want insufficient_quota", er.Error.Type, str(er.Error.Code))
	}
	for _, want := range []string{
		"Day cost budget", "LLMUser team-a/alice", "budget 0.0002 USD", "used 0.000156 USD", "0.000044 USD left",
		"resets at 2026-05-02T00:00:00Z (in 2m0s)",
	} {
		if !strings.Contains(er.Error.Message, want) {
			t.Errorf("message %q lacks %q", er.Error.Message, want)
		}
	}
	if n := e.ups[0].count(); n != 2 {
		t.Errorf("upstream saw %d requests, want 2: the refused one must not go upstream", n)
	}

	// The next day the budget is whole again.
	clk.set(start.Add(2 * time.Minute))
	resp = e.do(t, http.MethodPost, "/v1/chat/completions", cappedChat)
	expectStatus(t, resp, http.StatusOK)
	readAll(t, resp)
	e.sink.wait(t)
	ws, err := e.mem.Status(t.Context(), e.dir.users["team-a/alice"].Budgets[0])
	if err != nil {
		t.Fatal(err)
	}
	if ws[0].Used.Cost != 78_000_000 || ws[0].Start != time.Date(2026, 5, 2, 0, 0, 0, 0, time.UTC) {
		t.Errorf("the new day holds %d pico-USD from %s, want 78000000 from 2026-05-02", ws[0].Used.Cost, ws[0].Start)
	}
}

// TestCostDryRun: a DryRun quota counts cost past its budget and refuses
// nothing, telling the client what would have been refused.
func TestCostDryRun(t *testing.T) {
	e, _ := costEnv(t, 200_000_000, true, testNow) // 0.0002 USD
	var dry []string
	for range 4 {
		resp := e.do(t, http.MethodPost, "/v1/chat/completions", cappedChat)
		expectStatus(t, resp, http.StatusOK)
		readAll(t, resp)
		e.sink.wait(t)
		dry = append(dry, resp.Header.Get(headerDryRunExceeded))
	}
	if strings.Join(dry, ",") != ",,insufficient_quota,insufficient_quota" {
		t.Errorf("dry-run headers = %q, want none twice, then insufficient_quota twice (as TestCostBudget refuses the third)", dry)
	}
	ws, err := e.mem.Status(t.Context(), e.dir.users["team-a/alice"].Budgets[0])
	if err != nil {
		t.Fatal(err)
	}
	if ws[0].Used.Cost != 312_000_000 {
		t.Errorf("counted %d pico-USD, want 312000000 (four requests at 78 µUSD)", ws[0].Used.Cost)
	}
}

// TestCachedTokensPriced: prompt_tokens_details.cached_tokens is charged at
// the cached-input price; a model no price matches is free.
func TestCachedTokensPriced(t *testing.T) {
	up := newUpstream(t, "meta-llama/Llama-3.1-8B", "qwen/Qwen3-8B")
	up.handle = func(w http.ResponseWriter, r *http.Request, body []byte) {
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"id":"c","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"Hi"},"finish_reason":"stop"}],`+
			`"usage":{"prompt_tokens":11,"completion_tokens":7,"total_tokens":18,"prompt_tokens_details":{"cached_tokens":8}}}`)
	}
	reg := prometheus.NewRegistry()
	e := newEnv(t, func(o *Options) { o.Metrics = metrics.New(reg, metrics.Options{UserLabel: true, Now: testClock}) }, up)
	u := aliceUser()
	u.Pricing = llamaPricing()
	e.dir.set(u)

	resp := e.do(t, http.MethodPost, "/v1/chat/completions", chatBody)
	expectStatus(t, resp, http.StatusOK)
	readAll(t, resp)
	// 3 uncached at 2, 8 cached at 0.5, 7 out at 8: 6 + 4 + 56 = 66 µUSD.
	c := e.sink.wait(t)
	if want := (quota.Amount{Requests: 1, InputTokens: 11, CachedInputTokens: 8, OutputTokens: 7, Cost: 66_000_000}); c.Amount != want || c.Model != "meta-llama/Llama-3.1-8B" {
		t.Errorf("charge %s %+v, want meta-llama/Llama-3.1-8B %+v", c.Model, c.Amount, want)
	}

	resp = e.do(t, http.MethodPost, "/v1/chat/completions", `{"model":"qwen/Qwen3-8B","messages":[{"role":"user","content":"Hello"}]}`)
	expectStatus(t, resp, http.StatusOK)
	readAll(t, resp)
	if c := e.sink.wait(t); c.Amount.Cost != 0 || c.Amount.CachedInputTokens != 8 {
		t.Errorf("an unpriced model charged %+v, want cost 0 and its 8 cached tokens counted", c.Amount)
	}
	for model, want := range map[string]float64{"meta-llama/Llama-3.1-8B": 0.000066, "qwen/Qwen3-8B": 0} {
		labels := map[string]string{"namespace": "team-a", "user": "alice", "model": model, "currency": "USD"}
		if got := metricValue(t, reg, "llm_user_cost_total", labels); got != want {
			t.Errorf("llm_user_cost_total%v = %v, want %v", labels, got, want)
		}
	}
}

// TestPriorityRewrite: the upstream sees the quota's priority, never the
// client's, however the client wrote it.
func TestPriorityRewrite(t *testing.T) {
	const model = `"model":"meta-llama/Llama-3.1-8B"`
	const msgs = `"messages":[{"role":"user","content":"\"priority\":-100"}]`
	for _, tc := range []struct {
		name     string
		path     string
		body     string
		priority *int32
		// want is the priority the upstream reads (Python's json: the last
		// duplicate wins), nil when it must find none.
		want *int
	}{
		{"none sent, none set", "/v1/chat/completions", `{` + model + `,` + msgs + `}`, nil, nil},
		{"none sent, quota sets it", "/v1/chat/completions", `{` + model + `,` + msgs + `}`, ptr[int32](5), ptr(5)},
		{"client's dropped, quota has none", "/v1/chat/completions", `{` + model + `,"priority":-100,` + msgs + `}`, nil, nil},
		{"client's first", "/v1/chat/completions", `{"priority":-100,` + model + `,` + msgs + `}`, ptr[int32](5), ptr(5)},
		{"client's last", "/v1/chat/completions", `{` + model + `,` + msgs + ` , "priority" : -100 }`, ptr[int32](-3), ptr(-3)},
		{"client's duplicated around the rest", "/v1/chat/completions", `{"priority":-1,"priority":-2,` + model + `,"priority":-3,"priority":-4,` + msgs + `,"priority":-5}`, ptr[int32](7), ptr(7)},
		{"client's escaped", "/v1/chat/completions", `{` + model + `,"pr\u0069ority":-100,` + msgs + `}`, ptr[int32](1), ptr(1)},
		{"client's as a string", "/v1/completions", `{` + model + `,"prompt":"hi","priority":"-100"}`, nil, nil},
		{"embeddings", "/v1/embeddings", `{` + model + `,"input":"hi","priority":-100}`, ptr[int32](2), ptr(2)},
		{"tokenize takes none", "/tokenize", `{` + model + `,"prompt":"hi","priority":-100}`, ptr[int32](2), nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, nil)
			u := aliceUser()
			u.Priority = tc.priority
			e.dir.set(u)
			resp := e.do(t, http.MethodPost, tc.path, tc.body)
			expectStatus(t, resp, http.StatusOK)
			readAll(t, resp)
			got := e.ups[0].last(t).body
			var m map[string]json.RawMessage
			if err := json.Unmarshal(got, &m); err != nil {
				t.Fatalf("upstream got invalid JSON %s: %v", got, err)
			}
			if n := strings.Count(string(got), `"priority":`); n > 1 || (n == 1) != (tc.want != nil) {
				t.Errorf("upstream body %s has %d priority members, want %d", got, n, map[bool]int{true: 1}[tc.want != nil])
			}
			raw, ok := m["priority"]
			switch {
			case tc.want == nil && ok:
				t.Errorf("upstream read priority %s from %s, want none", raw, got)
			case tc.want != nil && string(raw) != itoa(*tc.want):
				t.Errorf("upstream read priority %s from %s, want %d", raw, got, *tc.want)
			}
			if !strings.Contains(string(got), `"content":"\"priority\":-100"`) && strings.Contains(tc.body, msgs) {
				t.Errorf("the prompt was changed: %s", got)
			}
		})
	}
}

func itoa(v int) string {
	b, _ := json.Marshal(v)
	return string(b)
}
