package metrics

import (
	"fmt"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// BudgetMode chooses which users' budget windows have gauges.
type BudgetMode string

// Budget modes.
const (
	// BudgetsAlerting exports a user's window once it passes its budget's
	// first alert threshold: the users an admin must look at, and every
	// series the threshold and exhaustion alerts need.
	BudgetsAlerting BudgetMode = "alerting"
	// BudgetsAll exports every window of every user who made a request in
	// it (several series per active user).
	BudgetsAll BudgetMode = "all"
	// BudgetsNone exports Shared pools only.
	BudgetsNone BudgetMode = "none"
)

// ParseBudgetMode checks a --metrics-user-budgets value.
func ParseBudgetMode(s string) (BudgetMode, error) {
	switch m := BudgetMode(s); m {
	case BudgetsAlerting, BudgetsAll, BudgetsNone:
		return m, nil
	}
	return "", fmt.Errorf("%q is not one of alerting, all, none", s)
}

// BudgetSample is one window of one budget. A user's own budget has User
// set; a Shared quota's pool has User "" and Quota set.
type BudgetSample struct {
	Namespace, Quota, User string
	// Window is the window name, e.g. "Minute" or "Month".
	Window string
	// ResetAt is when the window ends; the sample is dropped then.
	ResetAt time.Time
	// LimitTokens and RemainingTokens describe the tightest token cap of the
	// window; nil when the window caps no tokens (no series is emitted).
	LimitTokens, RemainingTokens *int64
	// LimitRequests and RemainingRequests likewise for the requests cap.
	LimitRequests, RemainingRequests *int64
}

var budgetLabels = []string{"namespace", "quota", "user", "window"}

var (
	descRemainingTokens = prometheus.NewDesc("llm_proxy_budget_remaining_tokens",
		"Tokens left in the window under its tightest token cap, including reservations of requests in flight, as of the budget's last admission on this replica.", budgetLabels, nil)
	descLimitTokens = prometheus.NewDesc("llm_proxy_budget_limit_tokens",
		"The window's tightest token cap.", budgetLabels, nil)
	descRemainingRequests = prometheus.NewDesc("llm_proxy_budget_remaining_requests",
		"Requests left in the window, including requests in flight, as of the budget's last admission on this replica.", budgetLabels, nil)
	descLimitRequests = prometheus.NewDesc("llm_proxy_budget_limit_requests",
		"The window's requests cap.", budgetLabels, nil)
)

type budgetID struct{ namespace, quota, user, window string }

// budgetBoard keeps the last sample of each budget window that qualifies for
// gauges. It is filled on the request path (each admission knows its
// windows), so a scrape reads memory and never the counter store, whatever
// the number of users.
type budgetBoard struct {
	mode BudgetMode
	now  func() time.Time
	mu   sync.Mutex
	m    map[budgetID]BudgetSample
}

func newBudgetBoard(mode BudgetMode, now func() time.Time) *budgetBoard {
	return &budgetBoard{mode: mode, now: now, m: map[budgetID]BudgetSample{}}
}

// ObserveBudget records a budget window as an admission found it. alerting
// says whether the window is past its first alert threshold: a user's window
// gets gauges from then on under [BudgetsAlerting]. Pools always do.
func (m *Metrics) ObserveBudget(s BudgetSample, alerting bool) {
	if m == nil {
		return
	}
	m.budgets.observe(s, alerting)
}

func (b *budgetBoard) observe(s BudgetSample, alerting bool) {
	id := budgetID{s.Namespace, s.Quota, s.User, s.Window}
	b.mu.Lock()
	defer b.mu.Unlock()
	if _, ok := b.m[id]; !ok && s.User != "" {
		switch b.mode {
		case BudgetsNone:
			return
		case BudgetsAlerting:
			if !alerting {
				return
			}
		}
	}
	b.m[id] = s
}

func (b *budgetBoard) forget(namespace, user string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for id := range b.m {
		if id.namespace == namespace && id.user == user {
			delete(b.m, id)
		}
	}
}

func (b *budgetBoard) Describe(ch chan<- *prometheus.Desc) {
	ch <- descRemainingTokens
	ch <- descLimitTokens
	ch <- descRemainingRequests
	ch <- descLimitRequests
}

func (b *budgetBoard) Collect(ch chan<- prometheus.Metric) {
	now := b.now()
	b.mu.Lock()
	samples := make([]BudgetSample, 0, len(b.m))
	for id, s := range b.m {
		if !now.Before(s.ResetAt) {
			delete(b.m, id) // the window ended: its gauges go with it
			continue
		}
		samples = append(samples, s)
	}
	b.mu.Unlock()
	for _, s := range samples {
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
