package monitoring_test

import (
	"context"
	"fmt"
	"math"
	"net/http"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/openai/openai-go/v3"
	promv1 "github.com/prometheus/client_golang/api/prometheus/v1"
	"github.com/prometheus/common/model"
	"k8s.io/utils/ptr"

	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	llmv1alpha1 "github.com/llm-user-operator/llm-user-operator/api/v1alpha1"
	"github.com/llm-user-operator/llm-user-operator/internal/operatorconfig"
	"github.com/llm-user-operator/llm-user-operator/internal/testutil/poll"
	"github.com/llm-user-operator/llm-user-operator/internal/testutil/redisserver"
	"github.com/llm-user-operator/llm-user-operator/test/harness"
)

const (
	modelID = "mon-org/sim-chat-1b"
	// maxTokens keeps answers short; the usage account's quota refuses more
	// than maxTokensPerRequest.
	maxTokens           = 16
	maxTokensPerRequest = 64
	dayTokens           = 1_000_000
	// rateInterval and rangeVar stand in for Grafana's $__rate_interval and
	// $__range: both reach back past Prometheus' start.
	rateInterval = "10m"
	rangeVar     = "1h"
)

// sender is one account on one proxy, with what its client was told it
// spent: the ground truth the panels must show.
type sender struct {
	*harness.Account
	job    string
	client openai.Client
	tokens int64 // total_tokens the client was told, summed
	ok     int   // requests answered 200
}

func (s *sender) chat(t *testing.T, wantCode int) {
	t.Helper()
	resp, err := s.client.Chat.Completions.New(t.Context(), harness.ChatParams(modelID, "Say something short.", maxTokens))
	s.check(t, wantCode, err)
	if err == nil {
		s.tokens += resp.Usage.TotalTokens
		s.ok++
	}
}

// stream sends a streamed request asking for usage, which records a time
// to first token.
func (s *sender) stream(t *testing.T) {
	t.Helper()
	params := harness.ChatParams(modelID, "Tell a very short story.", maxTokens)
	params.StreamOptions = openai.ChatCompletionStreamOptionsParam{IncludeUsage: openai.Bool(true)}
	st := s.client.Chat.Completions.NewStreaming(t.Context(), params)
	var usage int64
	for st.Next() {
		if c := st.Current(); c.JSON.Usage.Valid() {
			usage = c.Usage.TotalTokens
		}
	}
	if err := st.Err(); err != nil {
		t.Fatalf("%s: stream: %v", s.Namespace, err)
	}
	if usage == 0 {
		t.Fatalf("%s: the stream reported no usage", s.Namespace)
	}
	s.tokens += usage
	s.ok++
}

// tooLong asks for more than maxTokensPerRequest: refused with 400.
func (s *sender) tooLong(t *testing.T) {
	t.Helper()
	_, err := s.client.Chat.Completions.New(t.Context(), harness.ChatParams(modelID, "Say something long.", maxTokensPerRequest*10))
	s.check(t, http.StatusBadRequest, err)
}

func (s *sender) check(t *testing.T, wantCode int, err error) {
	t.Helper()
	if wantCode == http.StatusOK {
		if err != nil {
			t.Fatalf("%s via %s: %v", s.Namespace, s.job, err)
		}
		return
	}
	harness.RequireAPIError(t, err, wantCode)
}

func limits(tokens, requests int64) []llmv1alpha1.QuotaLimit {
	return []llmv1alpha1.QuotaLimit{{Window: llmv1alpha1.WindowDay, Tokens: ptr.To(tokens), Requests: ptr.To(requests)}}
}

// TestDashboardsAndAlerts sends known traffic through four proxies, each in
// a state an alert is about, has a real Prometheus scrape them, and checks
// every panel query and every alert expression of the chart's files.
//
//	main           the proxy Deployment's pod, as the operator reconciled it;
//	               healthy; users at 90% and 96% of their requests, a user
//	               and a Shared quota spent, refusals for max_tokens
//	upstream-down  its simulator is stopped: every request gets 502
//	redis          shared counters on a Redis that is then stopped: 503
//	readonly       an identity that may not write status: usage flushes fail
func TestDashboardsAndAlerts(t *testing.T) {
	env := harness.Start(t, harness.Options{Issuer: "https://monitoring", Model: modelID, NamespacePrefix: "mon",
		FlushWait: 10 * time.Second, ControllerManager: true})
	sim := env.StartSimulator(t, "simulator", "--mode", "random")
	doomed := env.StartSimulator(t, "simulator-doomed", "--mode", "random")
	redis := redisserver.New(t)
	// The operator reconciles the proxy workload; "main" is its Deployment's
	// pod, the others run with the RBAC it reconciled for the proxy.
	mgr := env.StartManager(t, harness.ManagerConfig{Proxy: func(p *operatorconfig.Proxy) {
		p.Upstreams = []string{sim.URL}
		p.FlushInterval = metav1.Duration{Duration: time.Second}
		// Every request of the main proxy goes through a fair queue.
		p.FairQueue.MaxInFlight = 64
	}})

	flush := []string{"--flush-interval=1s"}
	proxies := map[string]harness.Proxy{
		"main":          env.StartReconciledProxy(t, "proxy-main", mgr),
		"upstream-down": env.StartProxy(t, "proxy-upstream-down", harness.ProxyConfig{Upstream: doomed.URL, Flags: flush}),
		"redis": env.StartProxy(t, "proxy-redis", harness.ProxyConfig{Upstream: sim.URL,
			Flags: append([]string{"--counter=redis", "--redis-addr=" + redis.Addr()}, flush...)}),
		"readonly": env.StartProxy(t, "proxy-readonly", harness.ProxyConfig{Upstream: sim.URL, Flags: flush,
			Kubeconfig: readOnlyKubeconfig(t, env)}),
	}
	var targets []target
	for job, p := range proxies {
		targets = append(targets, target{job: job, addr: urlHost(t, p.MetricsURL)})
	}
	prom := startPrometheus(t, targets)
	if err := doomed.Terminate(t, 10*time.Second); err != nil {
		t.Logf("simulator-doomed exited: %v", err)
	}

	on := func(job string, q llmv1alpha1.LLMQuotaSpec) *sender {
		a := env.NewAccount(t, q)
		return &sender{Account: a, job: job, client: harness.NewClient(proxies[job].BaseURL, a.APIKey())}
	}
	perUser := func(requests int64) llmv1alpha1.LLMQuotaSpec {
		return llmv1alpha1.LLMQuotaSpec{Limits: limits(dayTokens, requests), MaxTokensPerRequest: ptr.To[int64](maxTokensPerRequest)}
	}
	// The usage account's quota prices every token at 3 USD a million, so
	// its cost is exactly 0.000003 USD per token the client was told of.
	priced := perUser(10)
	priced.Pricing = &llmv1alpha1.Pricing{Currency: "USD", Models: []llmv1alpha1.ModelPrice{
		{Model: "*", Input: "3", CachedInput: ptr.To[llmv1alpha1.Decimal]("3"), Output: "3"}}}
	var (
		usage   = on("main", priced)
		near    = on("main", perUser(25))
		spent   = on("main", perUser(2))
		pool    = on("main", llmv1alpha1.LLMQuotaSpec{Limits: limits(dayTokens, 2), Scope: llmv1alpha1.ScopeShared})
		down    = on("upstream-down", perUser(100))
		counted = on("redis", perUser(100))
		unflush = on("readonly", perUser(100))
		// owl's one request a day is a soft limit: the rest is overflow.
		owl = on("main", llmv1alpha1.LLMQuotaSpec{Limits: []llmv1alpha1.QuotaLimit{
			{Window: llmv1alpha1.WindowDay, Requests: ptr.To[int64](1), Overage: llmv1alpha1.OverageDemote}},
			MaxTokensPerRequest: ptr.To[int64](maxTokensPerRequest)})
		served = []*sender{usage, near, spent, pool, counted, unflush, owl}
	)

	// Phase 1 creates every series the rates are taken over, and waits
	// until Prometheus has scraped them: a counter's increments before its
	// first scrape are invisible to rate().
	usage.chat(t, http.StatusOK)
	usage.stream(t)
	usage.tooLong(t)
	near.chat(t, http.StatusOK)
	spent.chat(t, http.StatusOK)
	pool.chat(t, http.StatusOK)
	down.chat(t, http.StatusBadGateway)
	counted.chat(t, http.StatusOK)
	unflush.chat(t, http.StatusOK)
	owl.chat(t, http.StatusOK)
	owlInQuota := owl.tokens
	owl.chat(t, http.StatusOK)
	for _, expr := range []string{
		fmt.Sprintf(`llm_proxy_tokens_total{job="main", namespace=%q}`, usage.Namespace),
		fmt.Sprintf(`llm_proxy_rejections_total{job="main", namespace=%q}`, usage.Namespace),
		`gen_ai_server_time_to_first_token_seconds_count{job="main"}`,
		`gen_ai_client_operation_duration_seconds_count{job="main"}`,
		`llm_proxy_responses_total{job="upstream-down", code="502"}`,
		`llm_proxy_status_writes_total{job="readonly", result="error"}`,
		`llm_proxy_status_writes_total{job="main", result="success"}`,
	} {
		waitFor(t, prom, expr, func(vec model.Vector) error { return nonEmpty(vec) })
	}

	// Phase 2: the rest of the traffic.
	for range 6 {
		usage.chat(t, http.StatusOK)
	}
	usage.stream(t)
	usage.tooLong(t)
	for range 23 {
		near.chat(t, http.StatusOK)
	}
	spent.chat(t, http.StatusOK)
	spent.chat(t, http.StatusTooManyRequests)
	pool.chat(t, http.StatusOK)
	pool.chat(t, http.StatusTooManyRequests)
	down.chat(t, http.StatusBadGateway)
	unflush.chat(t, http.StatusOK)
	redis.Stop()
	counted.chat(t, http.StatusServiceUnavailable)
	owl.chat(t, http.StatusOK)
	owlOverflow := float64(owl.tokens - owlInQuota)

	// Wait until Prometheus holds the final counts.
	for _, s := range served {
		waitFor(t, prom, fmt.Sprintf(`sum(llm_proxy_tokens_total{namespace=%q})`, s.Namespace), equals(float64(s.tokens)))
	}
	waitFor(t, prom, `sum(llm_proxy_responses_total{job="upstream-down", code="502"})`, equals(2))
	waitFor(t, prom, fmt.Sprintf(`sum(llm_proxy_overflow_tokens_total{namespace=%q})`, owl.Namespace), equals(owlOverflow))
	waitFor(t, prom, `llm_proxy_counter_available{job="redis"}`, equals(0))
	waitFor(t, prom, fmt.Sprintf(`min(llm_proxy_budget_remaining_requests{namespace=%q})`, near.Namespace), equals(1))

	tokensOf := func(ss ...*sender) map[string]float64 {
		m := map[string]float64{}
		for _, s := range ss {
			m[s.Namespace+"/"+s.Name] = float64(s.tokens)
		}
		return m
	}
	usageNS := usage.Namespace
	user := func(s *sender) map[string]string { return map[string]string{"namespace": s.Namespace, "user": s.Name} }
	with := func(m map[string]string, kv ...string) map[string]string {
		out := map[string]string{}
		for k, v := range m {
			out[k] = v
		}
		for i := 0; i+1 < len(kv); i += 2 {
			out[kv[i]] = kv[i+1]
		}
		return out
	}
	dayLeft := func(s *sender) float64 { return float64(dayTokens - s.tokens) }

	panels := map[string]check{
		// Admin, every namespace.
		"llm-user-operator-admin / Tokens per user / A": exactly([]string{"namespace", "user"}, tokensOf(served...)),
		"llm-user-operator-admin / Top users / A":       exactly([]string{"namespace", "user"}, tokensOf(served...)),
		// Only the priced account has a cost series.
		"llm-user-operator-admin / Cost per user / A": exactly([]string{"namespace", "user", "currency"},
			map[string]float64{usage.Namespace + "/" + usage.Name + "/USD": 0.000003 * float64(usage.tokens)}),
		"llm-user-operator-admin / Token rate per user / A": all(
			has(user(usage), positive), has(user(near), positive)),
		"llm-user-operator-admin / Token rate per model / A": all(
			has(map[string]string{"model": modelID, "type": "input"}, positive),
			has(map[string]string{"model": modelID, "type": "output"}, positive)),
		"llm-user-operator-admin / Remaining tokens per user / A": all(
			has(with(user(usage), "window", "Day", "quota", "quota"), equal(dayLeft(usage))),
			has(with(user(near), "window", "Day"), equal(dayLeft(near))),
			// A user below every alert threshold has no budget gauges
			// (the proxy's default --metrics-user-budgets=alerting).
			none(user(unflush)),
			none(map[string]string{"user": ""})),
		"llm-user-operator-admin / Remaining requests per user / A": all(
			has(with(user(usage), "window", "Day"), equal(1)),
			has(with(user(near), "window", "Day"), equal(1)),
			has(with(user(spent), "window", "Day"), equal(0))),
		"llm-user-operator-admin / Remaining budget per Shared quota / A": all(
			has(map[string]string{"namespace": pool.Namespace, "quota": "quota", "window": "Day"}, equal(dayLeft(pool))),
			none(map[string]string{"namespace": usageNS})),
		"llm-user-operator-admin / Remaining budget per Shared quota / B": has(
			map[string]string{"namespace": pool.Namespace, "quota": "quota", "window": "Day"}, equal(0)),
		"llm-user-operator-admin / Rejections by reason / A": all(
			has(map[string]string{"reason": "max_tokens"}, positive),
			has(map[string]string{"reason": "insufficient_quota"}, atLeast(0))),
		"llm-user-operator-admin / Request rate by model / A": all(
			has(map[string]string{"model": modelID, "code": "200"}, positive),
			has(map[string]string{"model": modelID, "code": "502"}, positive),
			has(map[string]string{"code": "429"}, atLeast(0))),
		"llm-user-operator-admin / Request latency by model / A":     has(map[string]string{"gen_ai_request_model": modelID}, positive),
		"llm-user-operator-admin / Request latency by model / B":     has(map[string]string{"gen_ai_request_model": modelID}, positive),
		"llm-user-operator-admin / Time to first token by model / A": has(map[string]string{"gen_ai_request_model": modelID}, positive),
		"llm-user-operator-admin / Time to first token by model / B": has(map[string]string{"gen_ai_request_model": modelID}, positive),
		"llm-user-operator-admin / Upstream errors / A": all(
			has(map[string]string{"model": modelID, "code": "502"}, positive),
			only(map[string]string{"code": "502"})),
		"llm-user-operator-admin / Usage flush: status writes / A": all(
			has(map[string]string{"kind": "LLMUser", "result": "success"}, positive),
			has(map[string]string{"kind": "LLMUser", "result": "error"}, positive)),
		"llm-user-operator-admin / Usage flush lag / A": has(map[string]string{"instance": urlHost(t, proxies["readonly"].MetricsURL)}, atLeast(1)),
		"llm-user-operator-admin / Redis available / A": all(
			has(map[string]string{"instance": urlHost(t, proxies["redis"].MetricsURL)}, equal(0)),
			has(map[string]string{"instance": urlHost(t, proxies["main"].MetricsURL)}, equal(1))),
		"llm-user-operator-admin / Redis errors / A": has(map[string]string{"action": "refused"}, atLeast(0)),
		// Shares of the output tokens, every proxy together.
		"llm-user-operator-admin / Who has the GPU / A": all(
			has(user(usage), between(0.01, 0.99)), has(user(near), between(0.01, 0.99))),
		// Only the main proxy has a fair queue: tier 0 (no priority), and
		// owl's overflow.
		"llm-user-operator-admin / Dispatches by tier / A": all(count(2), has(map[string]string{"tier": "0"}, positive),
			has(map[string]string{"tier": "overflow"}, positive)),
		"llm-user-operator-admin / Queue wait by tier / A": all(count(2), has(map[string]string{"tier": "0"}, atLeast(0)),
			has(map[string]string{"tier": "overflow"}, atLeast(0))),
		"llm-user-operator-admin / Overflow by quota / A": exactly([]string{"namespace", "quota"},
			map[string]float64{owl.Namespace + "/quota": owlOverflow}),
		"llm-user-operator-admin / Requests waiting / A": all(
			has(map[string]string{"instance": urlHost(t, proxies["main"].MetricsURL)}, equal(0))),
		// Nothing waited long enough to be refused.
		"llm-user-operator-admin / Queue refusals / A": count(0),

		// My usage, for the usage account.
		"llm-user-operator-my-usage / Tokens used / A":        exactly(nil, map[string]float64{"": float64(usage.tokens)}),
		"llm-user-operator-my-usage / Remaining tokens / A":   exactly([]string{"window"}, map[string]float64{"Day": dayLeft(usage)}),
		"llm-user-operator-my-usage / Remaining requests / A": exactly([]string{"window"}, map[string]float64{"Day": 1}),
		"llm-user-operator-my-usage / Window resets in / A":   all(has(map[string]string{"window": "Day"}, between(1, 86400)), count(1)),
		"llm-user-operator-my-usage / Budget used / A": exactly([]string{"window"},
			map[string]float64{"Day": 100 * float64(usage.tokens) / dayTokens}),
		"llm-user-operator-my-usage / Tokens per model / A": exactly([]string{"model"}, map[string]float64{modelID: float64(usage.tokens)}),
		"llm-user-operator-my-usage / Cost per model / A": exactly([]string{"model", "currency"},
			map[string]float64{modelID + "/USD": 0.000003 * float64(usage.tokens)}),
		"llm-user-operator-my-usage / Token rate per model / A": has(map[string]string{"model": modelID, "type": "output"}, positive),
		"llm-user-operator-my-usage / Requests per model / A":   has(map[string]string{"model": modelID}, positive),
		"llm-user-operator-my-usage / Rejections by reason / A": all(count(1), has(map[string]string{"reason": "max_tokens"}, positive)),
	}
	vars := map[string]grafanaVars{
		"llm-user-operator-admin":    {"namespace": ".*", "__rate_interval": rateInterval, "__range": rangeVar},
		"llm-user-operator-my-usage": {"namespace": usageNS, "user": usage.Name, "__rate_interval": rateInterval, "__range": rangeVar},
	}
	t.Run("Panels", func(t *testing.T) {
		seen := map[string]bool{}
		for _, file := range []string{"admin.json", "my-usage.json"} {
			for _, q := range panelQueries(t, file) {
				seen[q.key()] = true
				c, ok := panels[q.key()]
				if !ok {
					t.Errorf("%s: no expectation in this test: add one", q.key())
					continue
				}
				expr := vars[q.dashboard].expand(q.expr)
				t.Run(q.key(), func(t *testing.T) { waitFor(t, prom, expr, c.fn) })
			}
		}
		for k := range panels {
			if !seen[k] {
				t.Errorf("expectation %q matches no panel query of the dashboards", k)
			}
		}
	})

	// The usage account's status agrees with the per-model panels above:
	// its window's split by model holds the tokens the client was told of
	// (the panel's figure), the requests answered, and their cost.
	t.Run("StatusAgreesWithPanels", func(t *testing.T) {
		// 3 µUSD a token, written as status writes decimals.
		micros := 3 * usage.tokens
		wantCost := strings.TrimRight(strings.TrimRight(fmt.Sprintf("%d.%06d", micros/1_000_000, micros%1_000_000), "0"), ".")
		poll.Until(t, 30*time.Second, func() error {
			var u llmv1alpha1.LLMUser
			if err := env.Client.Get(t.Context(), client.ObjectKey{Namespace: usage.Namespace, Name: usage.Name}, &u); err != nil {
				return err
			}
			if len(u.Status.Usage) != 1 || len(u.Status.Usage[0].Models) != 1 {
				return fmt.Errorf("status.usage = %+v, want one window split into one model", u.Status.Usage)
			}
			w := u.Status.Usage[0]
			m := w.Models[0]
			if m.Model != modelID || m.InputTokens+m.OutputTokens != usage.tokens || m.Requests != int64(usage.ok) || m.Cost != wantCost ||
				w.Cost != wantCost || w.Currency != "USD" {
				return fmt.Errorf("status window cost %s %s, model %+v; want %s: %d tokens, %d requests, cost %s USD",
					w.Cost, w.Currency, m, modelID, usage.tokens, usage.ok, wantCost)
			}
			return nil
		})
	})

	alerts := map[string]check{
		"LLMBudgetThresholdReached 80": all(
			has(with(user(usage), "window", "Day", "resource", "requests"), equal(0.9)),
			none(with(user(near), "resource", "requests"))),
		"LLMBudgetThresholdReached 95": all(
			has(with(user(near), "window", "Day", "resource", "requests"), equal(0.96)),
			none(with(user(usage), "resource", "requests"))),
		"LLMUserBudgetExhausted": all(
			has(with(user(spent), "window", "Day", "resource", "requests"), equal(0)),
			none(map[string]string{"namespace": pool.Namespace})),
		"LLMSharedQuotaExhausted": all(
			has(map[string]string{"namespace": pool.Namespace, "quota": "quota", "window": "Day", "resource": "requests"}, equal(0)),
			count(1)),
		"LLMProxyHighErrorRate":      all(has(map[string]string{"job": "upstream-down"}, equal(1)), none(map[string]string{"job": "main"})),
		"LLMUpstreamDown":            all(has(map[string]string{"job": "upstream-down", "model": modelID}, positive), count(1)),
		"LLMCounterStoreUnavailable": all(has(map[string]string{"job": "redis"}, equal(0)), count(1)),
		"LLMUsageFlushFailing":       all(has(map[string]string{"job": "readonly"}, positive), count(1)),
		"LLMUsageFlushLagging":       all(has(map[string]string{"job": "readonly"}, atLeast(1)), count(1)),
	}
	t.Run("Alerts", func(t *testing.T) {
		seen := map[string]bool{}
		for _, r := range alertRules(t) {
			seen[r.key()] = true
			c, ok := alerts[r.key()]
			if !ok {
				t.Errorf("alert %s: no expectation in this test: add one", r.key())
				continue
			}
			t.Run(r.key(), func(t *testing.T) { waitFor(t, prom, r.Expr, c.fn) })
		}
		for k := range alerts {
			if !seen[k] {
				t.Errorf("expectation %q matches no alert rule", k)
			}
		}
	})

	// Prometheus loaded the chart's rules and evaluates them without error.
	t.Run("RulesHealthy", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
		defer cancel()
		res, err := prom.api.Rules(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, g := range res.Groups {
			for _, r := range g.Rules {
				if a, ok := r.(promv1.AlertingRule); ok {
					n++
					if a.Health != "ok" {
						t.Errorf("rule %s: health %s: %s", a.Name, a.Health, a.LastError)
					}
				}
			}
		}
		if want := len(alertRules(t)); n != want {
			t.Errorf("Prometheus loaded %d alerting rules, want %d", n, want)
		}
	})
}

// readOnlyKubeconfig is the identity of a ServiceAccount allowed
// everything the proxy needs except writing status, so that its usage
// flushes fail the way they would with broken RBAC.
func readOnlyKubeconfig(t *testing.T, env *harness.Env) string {
	t.Helper()
	const name = "monitoring-readonly-proxy"
	env.MustCreate(t, &rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: name}, Rules: []rbacv1.PolicyRule{
		{APIGroups: []string{llmv1alpha1.GroupVersion.Group}, Resources: []string{"llmusers", "llmquotas"}, Verbs: []string{"get", "list", "watch"}},
		{APIGroups: []string{""}, Resources: []string{"configmaps"}, Verbs: []string{"get", "list", "watch"}},
		{APIGroups: []string{"events.k8s.io"}, Resources: []string{"events"}, Verbs: []string{"create", "patch"}},
	}})
	env.MustCreate(t, &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: name},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Name: name, Namespace: harness.OperatorNamespace}},
	})
	return env.ServiceAccountKubeconfig(t, harness.OperatorNamespace, name)
}

// check is what a query's result must satisfy.
type check struct {
	fn func(model.Vector) error
}

func all(cs ...check) check {
	return check{func(v model.Vector) error {
		var errs []string
		for _, c := range cs {
			if err := c.fn(v); err != nil {
				errs = append(errs, err.Error())
			}
		}
		if len(errs) > 0 {
			return fmt.Errorf("%s", strings.Join(errs, "; "))
		}
		return nil
	}}
}

func matches(s *model.Sample, want map[string]string) bool {
	for k, v := range want {
		if string(s.Metric[model.LabelName(k)]) != v {
			return false
		}
	}
	return true
}

// has: some sample carries every label of want, and its value passes ok.
func has(want map[string]string, ok valueCheck) check {
	return check{func(v model.Vector) error {
		for _, s := range v {
			if matches(s, want) {
				return ok(float64(s.Value))
			}
		}
		return fmt.Errorf("no sample with %v in %v", want, v)
	}}
}

// none: no sample carries every label of want.
func none(want map[string]string) check {
	return check{func(v model.Vector) error {
		for _, s := range v {
			if matches(s, want) {
				return fmt.Errorf("unexpected sample %s = %v", labels(s), s.Value)
			}
		}
		return nil
	}}
}

// only: every sample carries every label of want.
func only(want map[string]string) check {
	return check{func(v model.Vector) error {
		for _, s := range v {
			if !matches(s, want) {
				return fmt.Errorf("sample %s lacks %v", labels(s), want)
			}
		}
		return nil
	}}
}

func count(n int) check {
	return check{func(v model.Vector) error {
		if len(v) != n {
			return fmt.Errorf("%d samples, want %d: %v", len(v), n, v)
		}
		return nil
	}}
}

// exactly: the samples, keyed by the values of keys joined with "/", are
// exactly want.
func exactly(keys []string, want map[string]float64) check {
	return check{func(v model.Vector) error {
		got := map[string]float64{}
		for _, s := range v {
			var parts []string
			for _, k := range keys {
				parts = append(parts, string(s.Metric[model.LabelName(k)]))
			}
			got[strings.Join(parts, "/")] = float64(s.Value)
		}
		if len(got) != len(want) {
			return fmt.Errorf("got %v, want %v", sorted(got), sorted(want))
		}
		for k, w := range want {
			if g, ok := got[k]; !ok || math.Abs(g-w) > 1e-9 {
				return fmt.Errorf("got %v, want %v", sorted(got), sorted(want))
			}
		}
		return nil
	}}
}

func sorted(m map[string]float64) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	for _, k := range keys {
		fmt.Fprintf(&b, "%s=%g ", k, m[k])
	}
	return b.String()
}

type valueCheck func(float64) error

func positive(v float64) error {
	if !(v > 0) {
		return fmt.Errorf("value %v, want > 0", v)
	}
	return nil
}

func atLeast(min float64) valueCheck {
	return func(v float64) error {
		if !(v >= min) {
			return fmt.Errorf("value %v, want >= %v", v, min)
		}
		return nil
	}
}

func between(lo, hi float64) valueCheck {
	return func(v float64) error {
		if !(v >= lo && v <= hi) {
			return fmt.Errorf("value %v, want in [%v, %v]", v, lo, hi)
		}
		return nil
	}
}

func equal(want float64) valueCheck {
	return func(v float64) error {
		if math.Abs(v-want) > 1e-9 {
			return fmt.Errorf("value %v, want %v", v, want)
		}
		return nil
	}
}

func equals(want float64) func(model.Vector) error {
	return func(v model.Vector) error {
		if len(v) != 1 {
			return fmt.Errorf("%d samples, want 1 (%v): %v", len(v), want, v)
		}
		return equal(want)(float64(v[0].Value))
	}
}

func nonEmpty(v model.Vector) error {
	if len(v) == 0 {
		return fmt.Errorf("no samples")
	}
	return nil
}

// waitFor evaluates expr until its result passes ok: a scrape or a rule
// evaluation may be a second behind.
func waitFor(t *testing.T, prom *prometheus, expr string, ok func(model.Vector) error) {
	t.Helper()
	poll.Until(t, 30*time.Second, func() error {
		vec, err := prom.query(t.Context(), expr)
		if err != nil {
			return err
		}
		if err := ok(vec); err != nil {
			return fmt.Errorf("%s: %w", expr, err)
		}
		return nil
	})
}
