package proxy

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	llmv1alpha1 "github.com/llm-user-operator/llm-user-operator/api/v1alpha1"
	"github.com/llm-user-operator/llm-user-operator/internal/metrics"
	"github.com/llm-user-operator/llm-user-operator/internal/quota"
)

// metricValue sums the counter values, or histogram sample counts, of name's
// series whose labels include want.
func metricValue(t *testing.T, reg *prometheus.Registry, name string, want map[string]string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	series:
		for _, m := range mf.GetMetric() {
			for k, v := range want {
				if !hasLabel(m, k, v) {
					continue series
				}
			}
			switch {
			case m.Counter != nil:
				sum += m.Counter.GetValue()
			case m.Gauge != nil:
				sum += m.Gauge.GetValue()
			case m.Histogram != nil:
				sum += float64(m.Histogram.GetSampleCount())
			}
		}
	}
	return sum
}

func hasLabel(m *dto.Metric, k, v string) bool {
	for _, l := range m.GetLabel() {
		if l.GetName() == k {
			return l.GetValue() == v
		}
	}
	return false
}

func TestProxyMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	e := newEnv(t, func(o *Options) { o.Metrics = metrics.New(reg, metrics.Options{UserLabel: true, Now: testClock}) }, newUpstream(t, "m"))
	u := aliceUser()
	u.Budgets = []quota.Budget{quota.UserBudget("team-a", "alice", "uid-alice", []quota.Limit{
		{Window: llmv1alpha1.WindowMinute, Requests: ptr[int64](2)},
	}, false)}
	e.dir.set(u)

	resp := e.do(t, "POST", "/v1/chat/completions", `{"model":"m","messages":[]}`)
	expectStatus(t, resp, 200)
	readAll(t, resp)
	resp = e.do(t, "POST", "/v1/chat/completions", `{"model":"m","messages":[],"stream":true}`)
	expectStatus(t, resp, 200)
	readAll(t, resp)
	resp = e.do(t, "POST", "/v1/chat/completions", `{"model":"m","messages":[]}`)
	expectStatus(t, resp, 429)
	readAll(t, resp)
	resp = e.do(t, "POST", "/v1/chat/completions", `{"model":"not-served","messages":[]}`)
	expectStatus(t, resp, 404)
	readAll(t, resp)

	alice := map[string]string{"namespace": "team-a", "user": "alice"}
	with := func(kv ...string) map[string]string {
		m := map[string]string{"namespace": "team-a", "user": "alice"}
		for i := 0; i < len(kv); i += 2 {
			m[kv[i]] = kv[i+1]
		}
		return m
	}
	for _, c := range []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"llm_proxy_requests_total", with("model", "m"), 3},
		{"llm_proxy_requests_total", with("model", ""), 1}, // the unknown name is not a label
		{"llm_proxy_responses_total", map[string]string{"namespace": "team-a", "model": "m", "code": "200"}, 2},
		{"llm_proxy_responses_total", map[string]string{"namespace": "team-a", "model": "m", "code": "429"}, 1},
		{"llm_proxy_responses_total", map[string]string{"namespace": "team-a", "model": "", "code": "404"}, 1},
		{"llm_proxy_tokens_total", with("model", "m", "type", "input"), 11 + 12},
		{"llm_proxy_tokens_total", with("model", "m", "type", "output"), 7 + 4},
		{"llm_proxy_rejections_total", with("reason", "rate_limit"), 1},
		// The second request took the Minute's requests past the first alert
		// threshold: the window has gauges now, with nothing left.
		{"llm_proxy_budget_remaining_requests", with("quota", "gold", "window", "Minute"), 0},
		{"llm_proxy_budget_limit_requests", with("quota", "gold", "window", "Minute"), 2},
		{"gen_ai_client_token_usage", map[string]string{"gen_ai_token_type": "output", "gen_ai_request_model": "m", "gen_ai_operation_name": "chat"}, 2},
		{"gen_ai_server_time_to_first_token_seconds", map[string]string{"gen_ai_request_model": "m"}, 1},
		{"gen_ai_client_operation_duration_seconds", map[string]string{"gen_ai_request_model": "m", "error_type": ""}, 2},
	} {
		if got := metricValue(t, reg, c.name, c.labels); got != c.want {
			t.Errorf("%s%v = %v, want %v", c.name, c.labels, got, c.want)
		}
	}
	e.proxy.metrics.ForgetUser("team-a", "alice")
	if got := metricValue(t, reg, "llm_proxy_requests_total", alice); got != 0 {
		t.Errorf("alice's series survived ForgetUser: %v", got)
	}
}
