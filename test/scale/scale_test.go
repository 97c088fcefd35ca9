//go:build scale

// Package scale_test measures the product at the scale users run it:
// thousands of users onboarded by the operator, one request each through the
// proxy, their usage written back to status, the proxy's /metrics, and the
// API server's own count of the writes. It is not part of make test: make
// bench-scale runs it (go test -tags scale) and writes the report.
//
// Environment: SCALE_USERS (default 10000), SCALE_REPORT (a file the
// key=value results are appended to).
package scale_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	toolscache "k8s.io/client-go/tools/cache"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	logf "sigs.k8s.io/controller-runtime/pkg/log"

	apischeme "github.com/llm-user-operator/llm-user-operator/api/scheme"
	llmv1alpha1 "github.com/llm-user-operator/llm-user-operator/api/v1alpha1"
	"github.com/llm-user-operator/llm-user-operator/internal/operatorconfig"
	"github.com/llm-user-operator/llm-user-operator/internal/testutil/poll"
	"github.com/llm-user-operator/llm-user-operator/internal/testutil/redisserver"
	"github.com/llm-user-operator/llm-user-operator/test/harness"
)

const (
	modelID = "scale-org/model"
	// Every answer of the upstream reports this usage, so every user's
	// status must show exactly it.
	promptTokens, completionTokens = 10, 16
	namespaces                     = 10
	createConcurrency              = 32
	requestConcurrency             = 64
	// Targets of issue 10.
	targetReady    = 60 * time.Second
	targetFlushLag = 60 * time.Second
	targetScrape   = 250 * time.Millisecond
	targetSeries   = 3.0
)

// report collects key=value results, printed and appended to $SCALE_REPORT.
type report struct {
	t     *testing.T
	lines []string
}

func (r *report) add(key string, v any) {
	line := fmt.Sprintf("%s=%v", key, v)
	r.t.Log(line)
	r.lines = append(r.lines, line)
}

func (r *report) write() {
	f := os.Getenv("SCALE_REPORT")
	if f == "" {
		return
	}
	out, err := os.OpenFile(f, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		r.t.Error(err)
		return
	}
	defer out.Close()
	fmt.Fprintln(out, strings.Join(r.lines, "\n"))
}

func TestScale(t *testing.T) {
	n := 10000
	if v := os.Getenv("SCALE_USERS"); v != "" {
		var err error
		if n, err = strconv.Atoi(v); err != nil {
			t.Fatal(err)
		}
	}
	// SCALE_REPLICAS proxies (default 1) share one Redis, and each user
	// sends one request through each of them: each user's status must
	// still be written once per flush (one writer per object).
	replicas := 1
	if v := os.Getenv("SCALE_REPLICAS"); v != "" {
		var err error
		if replicas, err = strconv.Atoi(v); err != nil || replicas < 1 {
			t.Fatalf("SCALE_REPLICAS=%q: want a number of proxies, at least 1", v)
		}
	}
	logf.SetLogger(logr.Discard())
	rep := &report{t: t}
	defer rep.write()
	rep.add("proxy_replicas", replicas)
	rep.add("proxy_users", n)
	ctx := t.Context()

	up := newUpstream(t)
	env := harness.Start(t, harness.Options{Issuer: "https://scale", Model: modelID, NamespacePrefix: "scale", FlushWait: time.Minute})
	mgr := env.StartManager(t, harness.ManagerConfig{Proxy: func(p *operatorconfig.Proxy) {
		p.Upstreams = []string{up.URL}
	}})
	kc := kubernetes.NewForConfigOrDie(env.RestConfig)

	// Everything the test waits for, it hears through one informer, as a
	// controller would: listing 10,000 users every second would load the
	// API server more than what is measured.
	users := newUserWatch(t, env)

	var nss []string
	for i := range namespaces {
		ns := fmt.Sprintf("scale-%d", i)
		nss = append(nss, ns)
		env.MustCreate(t, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}})
		env.MustCreate(t, &llmv1alpha1.LLMQuota{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "quota"},
			Spec: harness.DayTokens(1_000_000)})
	}

	// Onboarding: N users, 32 clients, until every one is Ready.
	before := apiWrites(t, kc)
	start := time.Now()
	parallel(n, createConcurrency, func(i int) {
		u := &llmv1alpha1.LLMUser{ObjectMeta: metav1.ObjectMeta{Namespace: nss[i%namespaces], Name: fmt.Sprintf("user-%d", i)},
			Spec: llmv1alpha1.LLMUserSpec{QuotaRef: llmv1alpha1.QuotaReference{Name: "quota"}}}
		if err := env.Client.Create(ctx, u); err != nil {
			t.Errorf("creating %s: %v", u.Name, err)
		}
	})
	poll.Until(t, 10*time.Minute, func() error {
		ready := users.count(func(u *llmv1alpha1.LLMUser) bool {
			return meta.IsStatusConditionTrue(u.Status.Conditions, llmv1alpha1.ConditionReady)
		})
		return poll.Check(ready == n, fmt.Sprintf("%d of %d users Ready", ready, n))
	})
	readyIn := time.Since(start)
	rep.add("proxy_ready_seconds", seconds(readyIn))
	rep.add("proxy_ready_target_seconds", seconds(targetReady))
	onboard := apiWrites(t, kc).sub(before)
	rep.add("proxy_onboard_writes", onboard.String())

	tokens := readTokens(t, env, nss, n)

	var ps []harness.Proxy
	if replicas == 1 {
		ps = append(ps, env.StartReconciledProxy(t, "proxy", mgr))
	} else {
		rs := redisserver.New(t)
		for i := range replicas {
			ps = append(ps, env.StartProxy(t, "proxy-"+strconv.Itoa(i), harness.ProxyConfig{Upstream: up.URL,
				Flags: []string{"--counter=redis", "--redis-addr", rs.Addr()}}))
		}
	}
	p := ps[0]
	for _, px := range ps {
		waitModels(t, px.BaseURL, tokens[0])
	}

	// Idle: nothing is written while nobody does anything.
	before = apiWrites(t, kc)
	time.Sleep(20 * time.Second)
	idle := apiWrites(t, kc).sub(before)
	rep.add("idle_writes_20s", idle.total())

	// One request per user and replica, 64 at a time.
	before = apiWrites(t, kc)
	sampler := startSampler(t, kc)
	var failed atomic.Int64
	cl := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: requestConcurrency}}
	body := fmt.Sprintf(`{"model":%q,"messages":[{"role":"user","content":"Hello"}],"max_tokens":%d}`, modelID, completionTokens)
	reqStart := time.Now()
	// A user's requests go one after another, one through each replica, as
	// a client behind a round-robin Service sends them.
	parallel(n*replicas, requestConcurrency, func(j int) {
		i, px := j/replicas, ps[j%replicas]
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, px.BaseURL+"/chat/completions", strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+tokens[i])
		req.Header.Set("Content-Type", "application/json")
		resp, err := cl.Do(req)
		if err != nil {
			failed.Add(1)
			return
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			if failed.Add(1) <= 3 {
				t.Errorf("user-%d: %d", i, resp.StatusCode)
			}
		}
	})
	lastRequest := time.Now()
	rep.add("requests_seconds", seconds(lastRequest.Sub(reqStart)))
	rep.add("requests_failed", failed.Load())

	// Until every user's status shows exactly its requests.
	r := int64(replicas)
	exact := func(u *llmv1alpha1.LLMUser) bool {
		lt := u.Status.Lifetime
		if lt == nil || lt.Requests != r || lt.InputTokens != r*promptTokens || lt.OutputTokens != r*completionTokens || len(u.Status.Usage) != 1 {
			return false
		}
		w := u.Status.Usage[0]
		return w.Requests == r && w.InputTokens == r*promptTokens && w.OutputTokens == r*completionTokens
	}
	poll.Until(t, 15*time.Minute, func() error {
		done := users.count(exact)
		return poll.Check(done == n, fmt.Sprintf("%d of %d users exact in status", done, n))
	})
	flushed := time.Now()
	writes := sampler.stop()
	rep.add("flush_lag_seconds", seconds(flushed.Sub(lastRequest)))
	rep.add("flush_lag_target_seconds", seconds(targetFlushLag))
	patches := apiWrites(t, kc).sub(before).statusPatches
	rep.add("flush_status_patches", patches)
	rep.add("flush_status_patches_per_user", fmt.Sprintf("%.2f", float64(patches)/float64(n)))
	rep.add("flush_write_rate_peak_per_second", fmt.Sprintf("%.1f", writes.peak))
	rep.add("flush_write_rate_mean_per_second", fmt.Sprintf("%.1f", writes.mean))
	rep.add("status_write_rate_cap", 200*replicas) // per replica

	// And nothing more once it is written.
	before = apiWrites(t, kc)
	time.Sleep(20 * time.Second)
	rep.add("after_flush_writes_20s", apiWrites(t, kc).sub(before).total())
	if still := users.count(exact); still != n {
		t.Errorf("%d users exact after the idle period, want %d", still, n)
	}

	// /metrics: size, series, time.
	var durs []time.Duration
	var size, series, userSeries int
	for range 5 {
		s0 := time.Now()
		resp, err := http.Get(p.MetricsURL)
		if err != nil {
			t.Fatal(err)
		}
		data, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		durs = append(durs, time.Since(s0))
		size = len(data)
		series, userSeries = countSeries(t, data)
	}
	slices.Sort(durs)
	rep.add("scrape_median_ms", durs[len(durs)/2].Milliseconds())
	rep.add("scrape_target_ms", targetScrape.Milliseconds())
	rep.add("scrape_bytes", size)
	rep.add("scrape_series", series)
	rep.add("scrape_series_per_active_user", fmt.Sprintf("%.2f", float64(userSeries)/float64(n)))
	rep.add("proxy_peak_rss_mib", p.PeakRSS(t)>>20)

	if failed.Load() > 0 {
		t.Errorf("%d requests failed", failed.Load())
	}
}

func seconds(d time.Duration) string { return strconv.FormatFloat(d.Seconds(), 'f', 1, 64) }

// parallel runs f(0..n-1) on c goroutines.
func parallel(n, c int, f func(i int)) {
	var next atomic.Int64
	var wg sync.WaitGroup
	for range c {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				f(i)
			}
		})
	}
	wg.Wait()
}

// newUpstream is a vLLM stand-in that answers at once, with fixed usage.
func newUpstream(t *testing.T) *httptest.Server {
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		if r.URL.Path == "/v1/models" {
			fmt.Fprintf(w, `{"object":"list","data":[{"id":%q,"object":"model","created":1,"owned_by":"vllm","max_model_len":4096}]}`, modelID)
			return
		}
		_, _ = io.Copy(io.Discard, r.Body)
		fmt.Fprintf(w, `{"id":"c","object":"chat.completion","created":1,"model":%q,"choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"length"}],"usage":{"prompt_tokens":%d,"completion_tokens":%d,"total_tokens":%d}}`,
			modelID, promptTokens, completionTokens, promptTokens+completionTokens)
	}))
	t.Cleanup(s.Close)
	return s
}

func waitModels(t *testing.T, baseURL, token string) {
	poll.Until(t, time.Minute, func() error {
		req, _ := http.NewRequest(http.MethodGet, baseURL+"/models", nil)
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return err
		}
		resp.Body.Close()
		return poll.Check(resp.StatusCode == http.StatusOK, "GET /v1/models: "+resp.Status)
	})
}

// readTokens reads each user's token from its Secret.
func readTokens(t *testing.T, env *harness.Env, nss []string, n int) []string {
	tokens := make([]string, n)
	for _, ns := range nss {
		var list corev1.SecretList
		if err := env.Client.List(t.Context(), &list, client.InNamespace(ns)); err != nil {
			t.Fatal(err)
		}
		for _, s := range list.Items {
			name, ok := strings.CutSuffix(s.Name, "-llm-token")
			if !ok {
				continue
			}
			i, err := strconv.Atoi(strings.TrimPrefix(name, "user-"))
			if err != nil || i >= n {
				continue
			}
			tokens[i] = string(s.Data["OPENAI_API_KEY"])
		}
	}
	for i, tok := range tokens {
		if tok == "" {
			t.Fatalf("user-%d has no token", i)
		}
	}
	return tokens
}

// userWatch keeps every LLMUser as an informer last saw it.
type userWatch struct {
	mu    sync.Mutex
	users map[string]*llmv1alpha1.LLMUser
}

func newUserWatch(t *testing.T, env *harness.Env) *userWatch {
	c, err := cache.New(env.RestConfig, cache.Options{Scheme: apischeme.New()})
	if err != nil {
		t.Fatal(err)
	}
	inf, err := c.GetInformer(t.Context(), &llmv1alpha1.LLMUser{})
	if err != nil {
		t.Fatal(err)
	}
	w := &userWatch{users: map[string]*llmv1alpha1.LLMUser{}}
	set := func(obj any) {
		if u, ok := obj.(*llmv1alpha1.LLMUser); ok {
			w.mu.Lock()
			w.users[u.Namespace+"/"+u.Name] = u
			w.mu.Unlock()
		}
	}
	if _, err := inf.AddEventHandler(toolscache.ResourceEventHandlerFuncs{
		AddFunc: set, UpdateFunc: func(_, n any) { set(n) },
	}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	go func() { _ = c.Start(ctx) }()
	if !c.WaitForCacheSync(t.Context()) {
		t.Fatal("cache did not sync")
	}
	return w
}

func (w *userWatch) count(f func(*llmv1alpha1.LLMUser) bool) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	n := 0
	for _, u := range w.users {
		if f(u) {
			n++
		}
	}
	return n
}

// writeCounts are the API server's own counts of mutating requests
// (apiserver_request_total), by what they wrote.
type writeCounts struct {
	statusPatches, userWrites, secretWrites, other int64
}

func (w writeCounts) sub(o writeCounts) writeCounts {
	return writeCounts{w.statusPatches - o.statusPatches, w.userWrites - o.userWrites, w.secretWrites - o.secretWrites, w.other - o.other}
}

func (w writeCounts) total() int64 { return w.statusPatches + w.userWrites + w.secretWrites + w.other }

func (w writeCounts) String() string {
	return fmt.Sprintf("status:%d,users:%d,secrets:%d,other:%d", w.statusPatches, w.userWrites, w.secretWrites, w.other)
}

func apiWrites(t *testing.T, kc *kubernetes.Clientset) writeCounts {
	raw, err := kc.RESTClient().Get().AbsPath("/metrics").DoRaw(t.Context())
	if err != nil {
		t.Fatalf("reading the API server's metrics: %v", err)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := p.TextToMetricFamilies(bytes.NewReader(raw))
	if err != nil {
		t.Fatalf("parsing the API server's metrics: %v", err)
	}
	var w writeCounts
	mf := mfs["apiserver_request_total"]
	if mf == nil {
		t.Fatal("the API server exports no apiserver_request_total")
	}
	for _, m := range mf.GetMetric() {
		l := map[string]string{}
		for _, lp := range m.GetLabel() {
			l[lp.GetName()] = lp.GetValue()
		}
		switch l["verb"] {
		case "POST", "PUT", "PATCH", "DELETE", "APPLY":
		default:
			continue
		}
		if l["resource"] == "leases" || l["resource"] == "events" || l["resource"] == "tokenreviews" ||
			l["resource"] == "subjectaccessreviews" || l["resource"] == "selfsubjectaccessreviews" || l["resource"] == "tokenrequests" {
			continue // leader election, Events, authentication: not what is measured
		}
		v := int64(m.GetCounter().GetValue())
		switch {
		case l["resource"] == "llmusers" && l["subresource"] == "status" && l["verb"] == "PATCH":
			w.statusPatches += v
		case l["resource"] == "llmusers":
			w.userWrites += v
		case l["resource"] == "secrets":
			w.secretWrites += v
		default:
			w.other += v
		}
	}
	return w
}

// sampler reads the API server's status patch count every second.
type sampler struct {
	stopOnce sync.Once
	done     chan struct{}
	wg       sync.WaitGroup
	samples  []sample
}

// sample is the API server's status patch count at a time.
type sample struct {
	at      time.Time
	patches int64
}

type writeRates struct {
	// peak is the highest rate over rateWindow: a ticker on a loaded
	// machine fires late, so single seconds would count more than one.
	peak float64
	// mean is over the seconds with writes.
	mean float64
}

// rateWindow is what the peak write rate is averaged over, as a
// Prometheus rate() over a few scrapes would see it.
const rateWindow = 5 * time.Second

func startSampler(t *testing.T, kc *kubernetes.Clientset) *sampler {
	s := &sampler{done: make(chan struct{})}
	s.samples = append(s.samples, sample{time.Now(), apiWrites(t, kc).statusPatches})
	s.wg.Go(func() {
		tk := time.NewTicker(time.Second)
		defer tk.Stop()
		for {
			select {
			case <-s.done:
				return
			case <-tk.C:
			}
			s.samples = append(s.samples, sample{time.Now(), apiWrites(t, kc).statusPatches})
		}
	})
	return s
}

func (s *sampler) stop() writeRates {
	s.stopOnce.Do(func() { close(s.done) })
	s.wg.Wait()
	var r writeRates
	var sum int64
	var busy time.Duration
	for i := 1; i < len(s.samples); i++ {
		if d := s.samples[i].patches - s.samples[i-1].patches; d > 0 {
			sum += d
			busy += s.samples[i].at.Sub(s.samples[i-1].at)
		}
		j := i
		for j > 0 && s.samples[i].at.Sub(s.samples[j-1].at) <= rateWindow {
			j--
		}
		if span := s.samples[i].at.Sub(s.samples[j].at); j < i && span >= rateWindow-time.Second {
			r.peak = max(r.peak, float64(s.samples[i].patches-s.samples[j].patches)/span.Seconds())
		}
	}
	if busy > 0 {
		r.mean = float64(sum) / busy.Seconds()
	}
	return r
}

// countSeries counts a /metrics page's series, and those with a user.
func countSeries(t *testing.T, data []byte) (all, withUser int) {
	p := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := p.TextToMetricFamilies(bytes.NewReader(data))
	if err != nil {
		t.Fatalf("parsing /metrics: %v", err)
	}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			n := 1
			if mf.GetType().String() == "HISTOGRAM" {
				n = len(m.GetHistogram().GetBucket()) + 2
			}
			all += n
			for _, l := range m.GetLabel() {
				if l.GetName() == string(model.MetricNameLabel) {
					continue
				}
				if l.GetName() == "user" && l.GetValue() != "" {
					withUser += n
				}
			}
		}
	}
	return all, withUser
}
