// Package monitoring_test proves the chart's Grafana dashboards and alert
// rules against a real Prometheus: it scrapes real proxies (test/harness: a
// real API server, the operator, llm-d-inference-sim) that served known
// traffic, and every panel's and every alert's expression, read from the
// generated files the chart ships, is evaluated through Prometheus' HTTP API.
// The alert rules also get promtool's unit tests.
package monitoring_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	promapi "github.com/prometheus/client_golang/api"
	promv1 "github.com/prometheus/client_golang/api/prometheus/v1"
	"github.com/prometheus/common/model"
	"sigs.k8s.io/yaml"

	"github.com/llm-user-operator/llm-user-operator/internal/testutil/envtest"
	"github.com/llm-user-operator/llm-user-operator/test/harness"
)

// tool finds a binary of the Debian prometheus package, which
// hack/install-deps.sh installs: a test that needs it fails rather than skips.
func tool(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Fatalf("%s not found: run hack/install-deps.sh (it installs Debian's prometheus package)", name)
	}
	return p
}

func chartFile(parts ...string) string {
	return filepath.Join(append([]string{envtest.RepoRoot(), "charts", "llm-user-operator"}, parts...)...)
}

// TestAlertRules checks the generated rule file and runs its promtool unit
// tests (testdata/alerts_test.yaml).
func TestAlertRules(t *testing.T) {
	promtool := tool(t, "promtool")
	for _, args := range [][]string{
		{"check", "rules", chartFile("rules", "alerts.yaml")},
		{"test", "rules", filepath.Join("testdata", "alerts_test.yaml")},
	} {
		out, err := exec.CommandContext(t.Context(), promtool, args...).CombinedOutput()
		if err != nil {
			t.Errorf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
}

// target is one proxy Prometheus scrapes, as a job of its own so that the
// per-job alerts tell the proxies apart.
type target struct {
	job, addr string
}

// prometheus is a running Prometheus and a client of its HTTP API.
type prometheus struct {
	api promv1.API
}

// startPrometheus runs Prometheus scraping targets every second and
// evaluating the chart's alert rules, until t ends.
func startPrometheus(t *testing.T, targets []target) *prometheus {
	t.Helper()
	dir := t.TempDir()
	type staticConfig struct {
		Targets []string `json:"targets"`
	}
	type scrapeConfig struct {
		JobName string `json:"job_name"`
		// honor_labels keeps the proxy's own namespace label, as the
		// proxy's ServiceMonitor must (honorLabels: true).
		HonorLabels   bool           `json:"honor_labels"`
		StaticConfigs []staticConfig `json:"static_configs"`
	}
	cfg := struct {
		Global        map[string]string `json:"global"`
		RuleFiles     []string          `json:"rule_files"`
		ScrapeConfigs []scrapeConfig    `json:"scrape_configs"`
	}{
		Global:    map[string]string{"scrape_interval": "1s", "evaluation_interval": "1s"},
		RuleFiles: []string{chartFile("rules", "alerts.yaml")},
	}
	for _, tg := range targets {
		cfg.ScrapeConfigs = append(cfg.ScrapeConfigs, scrapeConfig{JobName: tg.job, HonorLabels: true, StaticConfigs: []staticConfig{{Targets: []string{tg.addr}}}})
	}
	data, err := yaml.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(file, data, 0o600); err != nil {
		t.Fatal(err)
	}
	addr := harness.FreeAddr(t)
	p := harness.StartProcess(t, "prometheus", tool(t, "prometheus"),
		"--config.file="+file, "--storage.tsdb.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+addr, "--log.level=warn")
	p.WaitHTTP(t, "http://"+addr+"/-/ready")
	c, err := promapi.NewClient(promapi.Config{Address: "http://" + addr})
	if err != nil {
		t.Fatal(err)
	}
	return &prometheus{api: promv1.NewAPI(c)}
}

// query evaluates expr now.
func (p *prometheus) query(ctx context.Context, expr string) (model.Vector, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	v, _, _, err := p.api.Query(ctx, expr, time.Now())
	if err != nil {
		return nil, fmt.Errorf("%s: %w", expr, err)
	}
	vec, ok := v.(model.Vector)
	if !ok {
		return nil, fmt.Errorf("%s: a %s, want an instant vector", expr, v.Type())
	}
	return vec, nil
}

// panelQuery is one query of one dashboard panel.
type panelQuery struct {
	dashboard, panel, refID, expr string
}

func (q panelQuery) key() string { return q.dashboard + " / " + q.panel + " / " + q.refID }

// panelQueries reads every query of a generated dashboard.
func panelQueries(t *testing.T, file string) []panelQuery {
	t.Helper()
	data, err := os.ReadFile(chartFile("dashboards", file))
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		UID    string `json:"uid"`
		Panels []struct {
			Title   string `json:"title"`
			Type    string `json:"type"`
			Targets []struct {
				RefID string `json:"refId"`
				Expr  string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(data, &d); err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	var qs []panelQuery
	for _, p := range d.Panels {
		if p.Type != "row" && len(p.Targets) == 0 {
			t.Errorf("%s: panel %q has no query", file, p.Title)
		}
		for _, tg := range p.Targets {
			qs = append(qs, panelQuery{dashboard: d.UID, panel: p.Title, refID: tg.RefID, expr: tg.Expr})
		}
	}
	return qs
}

// alertRule is one alerting rule of the generated rule file.
type alertRule struct {
	Alert  string            `json:"alert"`
	Expr   string            `json:"expr"`
	Labels map[string]string `json:"labels"`
}

func (r alertRule) key() string {
	if th := r.Labels["threshold"]; th != "" {
		return r.Alert + " " + th
	}
	return r.Alert
}

func alertRules(t *testing.T) []alertRule {
	t.Helper()
	data, err := os.ReadFile(chartFile("rules", "alerts.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var f struct {
		Groups []struct {
			Rules []alertRule `json:"rules"`
		} `json:"groups"`
	}
	if err := yaml.Unmarshal(data, &f); err != nil {
		t.Fatal(err)
	}
	var rules []alertRule
	for _, g := range f.Groups {
		rules = append(rules, g.Rules...)
	}
	return rules
}

// grafanaVars are the values Grafana would substitute for the dashboards'
// variables. $__range reaches back past Prometheus' start, so "over the
// selected range" means "since the test began"; $__rate_interval likewise
// spans every sample.
type grafanaVars map[string]string

var grafanaVar = regexp.MustCompile(`\$\{?(__rate_interval|__range|namespace|user)\}?`)

func (v grafanaVars) expand(expr string) string {
	return grafanaVar.ReplaceAllStringFunc(expr, func(m string) string {
		name := strings.Trim(m, "${}")
		if val, ok := v[name]; ok {
			return val
		}
		return m
	})
}

// labels renders a sample's labels for messages.
func labels(s *model.Sample) string { return s.Metric.String() }

// urlHost is the host:port of a URL.
func urlHost(t *testing.T, raw string) string {
	t.Helper()
	u, err := url.Parse(raw)
	if err != nil {
		t.Fatal(err)
	}
	return u.Host
}
