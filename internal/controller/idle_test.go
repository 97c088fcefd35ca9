package controller_test

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"sync"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	ctrlmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"

	llmv1alpha1 "github.com/llm-user-operator/llm-user-operator/api/v1alpha1"
	"github.com/llm-user-operator/llm-user-operator/internal/testutil/envtest"
	"github.com/llm-user-operator/llm-user-operator/internal/testutil/poll"
)

// writeLog records the requests of one operator that would change
// something, as "METHOD path status".
type writeLog struct {
	mu     sync.Mutex
	writes []string
}

func (l *writeLog) config(base *rest.Config) *rest.Config {
	cfg := rest.CopyConfig(base)
	cfg.WrapTransport = func(rt http.RoundTripper) http.RoundTripper {
		return roundTripFunc(func(r *http.Request) (*http.Response, error) {
			resp, err := rt.RoundTrip(r)
			if r.Method != http.MethodGet {
				code := 0
				if resp != nil {
					code = resp.StatusCode
				}
				l.mu.Lock()
				l.writes = append(l.writes, fmt.Sprintf("%s %s %d", r.Method, r.URL.Path, code))
				l.mu.Unlock()
			}
			return resp, err
		})
	}
	return cfg
}

func (l *writeLog) list() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.writes)
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// controllerMetric sums a controller-runtime metric over the series of one controller.
func controllerMetric(t *testing.T, name, controller string) float64 {
	t.Helper()
	families, err := ctrlmetrics.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			if !hasLabel(m, "controller", controller) && !hasLabel(m, "name", controller) {
				continue
			}
			switch {
			case m.Counter != nil:
				sum += m.Counter.GetValue()
			case m.Gauge != nil:
				sum += m.Gauge.GetValue()
			}
		}
	}
	return sum
}

func hasLabel(m *dto.Metric, k, v string) bool {
	for _, l := range m.GetLabel() {
		if l.GetName() == k && l.GetValue() == v {
			return true
		}
	}
	return false
}

// TestConvergedOperatorWritesNothing: once every user is settled, an
// operator writes nothing, not even when it starts over (a restart or a
// failover reconciles every key, user and quota again, and must find them
// right as they are).
func TestConvergedOperatorWritesNothing(t *testing.T) {
	env := apiServer(t)
	envtest.EnsureNamespace(t, env.Client, opNamespace)
	ctx := context.Background()
	ns := envtest.NewNamespace(t, env.Client, "idle")
	c := env.Client
	if err := c.Create(ctx, newQuota(ns, "q")); err != nil {
		t.Fatal(err)
	}
	const n = 20
	for i := range n {
		u := newUser(ns, fmt.Sprintf("user-%02d", i), "q")
		switch i {
		case 0:
			u.Spec.Suspended = true
		case 1:
			u.Spec.QuotaRef.Name = "missing"
		}
		if err := c.Create(ctx, u); err != nil {
			t.Fatal(err)
		}
	}
	// One user has usage, as the proxy writes it.
	used := getUser(t, ns, "user-02")
	orig := used.DeepCopy()
	now := time.Now().UTC()
	day := time.Date(now.Year(), now.Month(), now.Day(), 0, 0, 0, 0, time.UTC)
	used.Status.Usage = []llmv1alpha1.WindowUsage{{
		Window: llmv1alpha1.WindowDay, WindowStart: metav1.NewTime(day), ResetAt: metav1.NewTime(day.Add(24 * time.Hour)),
		Requests: 3, InputTokens: 400, OutputTokens: 450, TotalTokens: 850,
	}}
	if err := c.Status().Patch(ctx, used, client.MergeFrom(orig)); err != nil {
		t.Fatal(err)
	}

	first := &writeLog{}
	_, stop := runOperator(t, first.config(env.Config))
	settled := func() error {
		for i := range n {
			u := getUser(t, ns, fmt.Sprintf("user-%02d", i))
			want, reason := metav1.ConditionTrue, llmv1alpha1.ReasonIssued
			switch i {
			case 0:
				want, reason = metav1.ConditionFalse, llmv1alpha1.ReasonSuspended
			case 1:
				want, reason = metav1.ConditionFalse, llmv1alpha1.ReasonQuotaNotFound
			}
			if err := wantCondition(u, llmv1alpha1.ConditionReady, want, reason); err != nil {
				return fmt.Errorf("%s: %w", u.Name, err)
			}
		}
		if len(getUser(t, ns, "user-02").Status.Alerts) == 0 {
			return fmt.Errorf("usage not judged yet: no alert for 85%% of the Day")
		}
		return nil
	}
	poll.Until(t, 30*time.Second, settled)
	// Onboarding costs each user one status write: no other controller
	// writes to a user that has no usage yet.
	for i := range n {
		path := fmt.Sprintf("PATCH /apis/llm.userops.dev/v1alpha1/namespaces/%s/llmusers/user-%02d/status 200", ns, i)
		want := 1
		if i == 2 {
			want = 2 // and the usage judged: the 80% alert
		}
		if got := count(first.list(), path); got != want {
			t.Errorf("user-%02d: %d status writes, want %d: %v", i, got, want, first.list())
		}
	}
	stop()

	// Start over on the settled state and wait until every controller has
	// been through everything and has nothing left to do.
	controllers := []string{"llmuser-token", "llmquota", "llmuser-usage", "signingkeys", "signingkeys-loader"}
	before := map[string]float64{}
	for _, name := range controllers {
		before[name] = controllerMetric(t, "controller_runtime_reconcile_total", name)
	}
	second := &writeLog{}
	_, stop = runOperator(t, second.config(env.Config))
	defer stop()
	poll.Until(t, 30*time.Second, func() error {
		// Every user (all namespaces' users are reconciled, at least these),
		// the quotas, the user with usage, the keys.
		for name, least := range map[string]float64{"llmuser-token": n, "llmquota": 1, "llmuser-usage": 1, "signingkeys": 1, "signingkeys-loader": 1} {
			if got := controllerMetric(t, "controller_runtime_reconcile_total", name) - before[name]; got < least {
				return fmt.Errorf("%s reconciled %v times since the restart, want %v or more", name, got, least)
			}
		}
		for _, name := range controllers {
			if busy := controllerMetric(t, "controller_runtime_active_workers", name) + controllerMetric(t, "workqueue_depth", name); busy != 0 {
				return fmt.Errorf("%s still has %v items in flight or queued", name, busy)
			}
		}
		return nil
	})
	if err := settled(); err != nil {
		t.Fatal(err)
	}
	if w := second.list(); len(w) != 0 {
		t.Errorf("a restarted operator over a settled cluster wrote %d times: %v", len(w), w)
	}
}

func count(list []string, s string) int {
	n := 0
	for _, v := range list {
		if v == s {
			n++
		}
	}
	return n
}
