package proxy

import (
	"encoding/json"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	llmv1alpha1 "github.com/llm-user-operator/llm-user-operator/api/v1alpha1"
	"github.com/llm-user-operator/llm-user-operator/internal/quota"
	"github.com/llm-user-operator/llm-user-operator/internal/token"
)

// TestFairGateOverflowLast: overflow (a flow of its own in the last tier)
// waits while any request within quota waits, of any tier, the same user's
// own included, however early it came; among themselves, overflow flows
// are served by their counters.
func TestFairGateOverflowLast(t *testing.T) {
	s := newSched(t, 1)
	s.send("h0", "heavy", 0, 1) // straight through
	s.send("o1", "owl"+overflowFlow, overflowTier, 1)
	s.send("o2", "owl"+overflowFlow, overflowTier, 1)
	s.send("n1", "night"+overflowFlow, overflowTier, 1)
	s.send("a1", "alice", 5, 1)
	s.send("w1", "owl", 0, 1)
	// owl's overflow counter is 100 once o1 runs: night's first request
	// (lifted to the same 100, nothing running) goes before o2.
	checkOrder(t, "overflow last", s.drain("h0"), []string{"w1", "a1", "o1", "n1", "o2"})
}

// TestSoftLimitThroughTheProxy: past a soft limit a request is served, as
// overflow: x-llm-overage says so, the priority written upstream is after
// every quota's, it waits behind a request within quota that came later,
// and its usage is counted apart (the overflow tally, GET /v1/usage).
func TestSoftLimitThroughTheProxy(t *testing.T) {
	up := newUpstream(t, "meta-llama/Llama-3.1-8B")
	release := make(chan struct{})
	var mu sync.Mutex
	var order []string
	up.handle = func(w http.ResponseWriter, r *http.Request, body []byte) {
		mu.Lock()
		order = append(order, r.Header.Get("X-Client-Request-Id"))
		mu.Unlock()
		if strings.Contains(string(body), "hold") {
			<-release
		}
		defaultHandler(w, r, body)
	}
	e := newEnv(t, func(o *Options) {
		o.FairQueue = FairQueue{MaxInFlight: 1, QueueTimeout: 10 * time.Second}
		o.InferenceObjectivePrefix = "llm-tier-"
	}, up)
	owl := aliceUser()
	owl.Name, owl.UID = "owl", "uid-owl"
	owl.Priority = ptr[int32](-1) // more urgent than alice: only overflow puts it after her
	owl.Budgets = []quota.Budget{quota.UserBudget("team-a", "owl", "uid-owl", []quota.Limit{
		{Window: llmv1alpha1.WindowDay, Requests: ptr[int64](1), Soft: true, Ceiling: &quota.Limit{Requests: ptr[int64](3)}},
	}, false)}
	owl.FairnessID = FairnessID("team-a", "owl", "gold", false)
	e.dir.set(owl)
	e.verifier().claims["tok-owl"] = &token.Claims{Namespace: "team-a", Name: "owl", UID: "uid-owl", Generation: 2}
	g := e.proxy.fair.gate(up.URL)

	send := func(tok, id, content string) *http.Response {
		t.Helper()
		body := `{"model":"meta-llama/Llama-3.1-8B","messages":[{"role":"user","content":"` + content + `"}],"max_tokens":10}`
		req, _ := http.NewRequest(http.MethodPost, e.srv.URL+"/v1/chat/completions", strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+tok)
		req.Header.Set("X-Request-Id", id)
		req.Header.Set("X-Gateway-Inference-Objective", "llm-tier--1000") // the client's own: dropped
		resp, err := e.srv.Client().Do(req)
		if err != nil {
			t.Error(err)
			return nil
		}
		readAll(t, resp)
		return resp
	}

	// Within the soft limit: no overage, the quota's own priority.
	resp := send("tok-owl", "in-quota", "hi")
	expectStatus(t, resp, http.StatusOK)
	if h := resp.Header.Get("X-Llm-Overage"); h != "" {
		t.Errorf("within the soft limit: x-llm-overage %q, want none", h)
	}
	if b := string(up.last(t).body); !strings.Contains(b, `"priority":-1`) {
		t.Errorf("within the soft limit, upstream body %s, want priority -1", b)
	}

	// alice holds the only slot; owl's overflow queues first, then
	// alice's second request within quota: hers goes first.
	held := make(chan *http.Response, 1)
	go func() { held <- send(alice, "holder", "hold") }()
	waitDepth(t, g, 0, 1)
	over := make(chan *http.Response, 1)
	go func() { over <- send("tok-owl", "overflow", "hi") }()
	waitDepth(t, g, 1, 1)
	later := make(chan *http.Response, 1)
	go func() { later <- send(alice, "later", "hi") }()
	waitDepth(t, g, 2, 1)
	close(release)
	expectStatus(t, <-held, http.StatusOK)
	expectStatus(t, <-later, http.StatusOK)
	resp = <-over
	expectStatus(t, resp, http.StatusOK)
	if h := resp.Header.Get("X-Llm-Overage"); h != "true" {
		t.Errorf("past the soft limit: x-llm-overage %q, want true", h)
	}
	mu.Lock()
	got := strings.Join(order, ",")
	mu.Unlock()
	if got != "in-quota,holder,later,overflow" {
		t.Errorf("upstream served %s, want in-quota,holder,later,overflow", got)
	}
	if b := string(up.last(t).body); !strings.Contains(b, `"priority":1001`) {
		t.Errorf("overflow upstream body %s, want priority 1001", b)
	}
	// The tier names the InferenceObjective for a scheduler behind the proxy.
	objectives := map[string]string{}
	up.mu.Lock()
	for _, r := range up.requests {
		objectives[r.header.Get("X-Client-Request-Id")] = strings.Join(r.header.Values("X-Gateway-Inference-Objective"), ",")
	}
	up.mu.Unlock()
	for id, want := range map[string]string{"in-quota": "llm-tier--1", "holder": "llm-tier-0", "overflow": "llm-tier-overflow"} {
		if objectives[id] != want {
			t.Errorf("%s went upstream with objective %q, want %q", id, objectives[id], want)
		}
	}

	// One more overflow, then the ceiling of 3 requests refuses.
	expectStatus(t, send("tok-owl", "overflow-2", "hi"), http.StatusOK)
	refused := e.do(t, http.MethodPost, "/v1/chat/completions", `{"model":"meta-llama/Llama-3.1-8B","messages":[{"role":"user","content":"hi"}],"max_tokens":10}`, "tok-owl")
	expectStatus(t, refused, http.StatusTooManyRequests)
	if h := refused.Header.Get("X-Llm-Overage"); h != "" {
		t.Errorf("refused at the ceiling: x-llm-overage %q, want none", h)
	}
	// The ceiling refuses as any hard limit does, in OpenAI's shape.
	if e := readErr(t, refused); e.Error.Type != "insufficient_quota" || str(e.Error.Code) != "insufficient_quota" ||
		!strings.Contains(e.Error.Message, "Day quota of requests") || !strings.Contains(e.Error.Message, "limit 3, used 3") {
		t.Errorf("refused at the ceiling: %+v, want insufficient_quota naming the Day ceiling of 3 requests", e.Error)
	}

	// Each request was charged 11 input and 7 output tokens (chatJSON).
	ob := quota.OverflowBudget(owl.Budgets[0])
	if ws, _ := e.mem.Status(t.Context(), ob); ws[0].Used != (quota.Amount{Requests: 2, InputTokens: 22, OutputTokens: 14}) {
		t.Errorf("overflow tally %+v, want 2 requests, 22 input and 14 output tokens", ws[0].Used)
	}
	if ws, _ := e.mem.Status(t.Context(), owl.Budgets[0]); ws[0].Used != (quota.Amount{Requests: 3, InputTokens: 33, OutputTokens: 21}) {
		t.Errorf("budget %+v, want 3 requests, 33 input and 21 output tokens", ws[0].Used)
	}

	var u Usage
	if err := json.Unmarshal(readAll(t, e.do(t, http.MethodGet, "/v1/usage", "", "tok-owl")), &u); err != nil {
		t.Fatal(err)
	}
	w := u.Windows[0]
	if w.Overage != llmv1alpha1.OverageDemote || w.HardLimit == nil || w.HardLimit.Requests == nil || *w.HardLimit.Requests != 3 {
		t.Errorf("/v1/usage window overage %q hard limit %+v, want Demote with 3 requests", w.Overage, w.HardLimit)
	}
	if w.Overflow == nil || *w.Overflow != (UsageAmount{Requests: 2, InputTokens: 22, OutputTokens: 14, TotalTokens: 36}) {
		t.Errorf("/v1/usage overflow %+v, want 2 requests, 22 input, 14 output, 36 in all", w.Overflow)
	}
}
