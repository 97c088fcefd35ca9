package harness

import (
	"net/http"
	"strings"
	"testing"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// MetricSet is one scrape of a Prometheus endpoint.
type MetricSet map[string]*dto.MetricFamily

// Scrape reads url's metrics.
func Scrape(t testing.TB, url string) MetricSet {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("scraping %s: %v", url, err)
	}
	defer func() { _ = resp.Body.Close() }()
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("parsing %s: %v", url, err)
	}
	return fams
}

// Each calls f with the labels and the value of every counter or gauge
// named name whose labels include every pair of want (label=value).
func (m MetricSet) Each(name string, f func(labels map[string]string, v float64), want ...string) {
	for _, s := range m[name].GetMetric() {
		labels := map[string]string{}
		for _, l := range s.GetLabel() {
			labels[l.GetName()] = l.GetValue()
		}
		match := true
		for _, kv := range want {
			k, val, _ := strings.Cut(kv, "=")
			match = match && labels[k] == val
		}
		if match {
			f(labels, s.GetCounter().GetValue()+s.GetGauge().GetValue())
		}
	}
}

// Value sums the counters or gauges named name whose labels include every
// pair of want (label=value). ok is false when no series matched.
func (m MetricSet) Value(name string, want ...string) (v float64, ok bool) {
	m.Each(name, func(_ map[string]string, x float64) {
		ok = true
		v += x
	}, want...)
	return v, ok
}

// UserMetrics are one user's series of the proxy's per-user counters.
type UserMetrics struct {
	// InputTokens and OutputTokens are llm_proxy_tokens_total over every model.
	InputTokens, OutputTokens int64
	// Requests is llm_proxy_requests_total over every model.
	Requests int64
}

// ScrapeUser reads the per-user counters of ns/user from the proxy's /metrics.
func ScrapeUser(t testing.TB, metricsURL, ns, user string) UserMetrics {
	t.Helper()
	m := Scrape(t, metricsURL)
	var um UserMetrics
	who := []string{"namespace=" + ns, "user=" + user}
	m.Each("llm_proxy_tokens_total", func(l map[string]string, v float64) {
		switch l["type"] {
		case "input":
			um.InputTokens += int64(v)
		case "output":
			um.OutputTokens += int64(v)
		}
	}, who...)
	m.Each("llm_proxy_requests_total", func(_ map[string]string, v float64) { um.Requests += int64(v) }, who...)
	return um
}
