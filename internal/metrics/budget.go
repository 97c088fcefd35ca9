package metrics

import "github.com/prometheus/client_golang/prometheus"

// BudgetSample is one window of one budget at scrape time. A user's own
// budget has User set; a Shared quota's pool has User "" and Quota set.
type BudgetSample struct {
	Namespace, Quota, User string
	// Window is the window name, e.g. "Minute" or "Month".
	Window string
	// LimitTokens and RemainingTokens describe the tightest token cap of the
	// window; nil when the window caps no tokens (no series is emitted).
	LimitTokens, RemainingTokens *int64
	// LimitRequests and RemainingRequests likewise for the requests cap.
	LimitRequests, RemainingRequests *int64
}

var budgetLabels = []string{"namespace", "quota", "user", "window"}

var (
	descRemainingTokens = prometheus.NewDesc("llm_proxy_budget_remaining_tokens",
		"Tokens left in the window under its tightest token cap, including reservations of requests in flight.", budgetLabels, nil)
	descLimitTokens = prometheus.NewDesc("llm_proxy_budget_limit_tokens",
		"The window's tightest token cap.", budgetLabels, nil)
	descRemainingRequests = prometheus.NewDesc("llm_proxy_budget_remaining_requests",
		"Requests left in the window, including requests in flight.", budgetLabels, nil)
	descLimitRequests = prometheus.NewDesc("llm_proxy_budget_limit_requests",
		"The window's requests cap.", budgetLabels, nil)
)

// budgetCollector asks its source for the current budgets on every scrape,
// so a deleted user's gauges vanish with the user rather than going stale.
type budgetCollector struct {
	source func() []BudgetSample
}

// NewBudgetCollector returns a collector of the llm_proxy_budget_* gauges,
// computed by calling source at every scrape. source must not return two
// samples with the same labels (the registry rejects duplicates), so with a
// user label that is disabled elsewhere it should report pools only.
func NewBudgetCollector(source func() []BudgetSample) prometheus.Collector {
	return &budgetCollector{source: source}
}

func (c *budgetCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- descRemainingTokens
	ch <- descLimitTokens
	ch <- descRemainingRequests
	ch <- descLimitRequests
}

func (c *budgetCollector) Collect(ch chan<- prometheus.Metric) {
	for _, s := range c.source() {
		lv := []string{s.Namespace, s.Quota, s.User, s.Window}
		emit := func(d *prometheus.Desc, v *int64) {
			if v != nil {
				ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, float64(*v), lv...)
			}
		}
		emit(descRemainingTokens, s.RemainingTokens)
		emit(descLimitTokens, s.LimitTokens)
		emit(descRemainingRequests, s.RemainingRequests)
		emit(descLimitRequests, s.LimitRequests)
	}
}
