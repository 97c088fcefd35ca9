// Command operator measures how fast the operator onboards users: it starts
// a real kube-apiserver and etcd (envtest), runs the operator in-process,
// creates N LLMUsers from 32 concurrent clients and times until every one is
// Ready (which the operator sets only once the user's token Secret is
// written). In the same run, with the operator stopped, it measures the
// floor: the API server's own time for the writes onboarding needs, N Secret
// creates and N status patches from a plain client at the same concurrency
// (and, for reference, the same plus the N LLMUser creates the clients make).
//
//	go run ./hack/bench-scale/operator -users 10000
//
// Results go to stdout as key=value lines (the make bench-scale report reads
// them); progress goes to stderr.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"runtime"
	"runtime/pprof"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/rest"
	toolscache "k8s.io/client-go/tools/cache"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	apischeme "github.com/llm-user-operator/llm-user-operator/api/scheme"
	llmv1alpha1 "github.com/llm-user-operator/llm-user-operator/api/v1alpha1"
	"github.com/llm-user-operator/llm-user-operator/internal/manager"
	"github.com/llm-user-operator/llm-user-operator/internal/testutil/envtest"
)

const opNamespace = "llm-user-operator-system"

type config struct {
	users, concurrency, rounds int
	idle                       time.Duration
	cpuProfile                 string
	operator                   manager.Options
}

func main() {
	c := config{operator: manager.NewOptions()}
	flag.IntVar(&c.users, "users", 2000, "LLMUsers to create.")
	flag.IntVar(&c.concurrency, "concurrency", 32, "Concurrent clients creating users (and writing in the floor arm).")
	flag.IntVar(&c.rounds, "rounds", 1, "Rounds, each against a fresh API server, the arms' order alternating; the summary lines are medians.")
	flag.DurationVar(&c.idle, "idle", 10*time.Second, "How long to count the operator's writes once every user is Ready.")
	flag.StringVar(&c.cpuProfile, "cpuprofile", "", "Write a CPU profile of the operator arm (operator and clients) to this file.")
	flag.IntVar(&c.operator.MaxConcurrentReconciles, "max-concurrent-reconciles", c.operator.MaxConcurrentReconciles, "The operator's --max-concurrent-reconciles.")
	flag.Float64Var(&c.operator.KubeAPIQPS, "kube-api-qps", c.operator.KubeAPIQPS, "The operator's --kube-api-qps.")
	flag.IntVar(&c.operator.KubeAPIBurst, "kube-api-burst", c.operator.KubeAPIBurst, "The operator's --kube-api-burst.")
	flag.Parse()
	ctrl.SetLogger(zap.New(zap.WriteTo(io.Discard)))
	if err := run(c); err != nil {
		fmt.Fprintln(os.Stderr, "bench-scale operator:", err)
		os.Exit(1)
	}
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "%s "+format+"\n", append([]any{time.Now().Format("15:04:05")}, args...)...)
}

func run(c config) error {
	var rounds []roundResult
	for i := range c.rounds {
		// Alternate which arm goes first, so that drift over a run (a
		// neighbour's load, etcd growing) weighs on both alike.
		r, err := runRound(c, i%2 == 1)
		if err != nil {
			return fmt.Errorf("round %d: %w", i+1, err)
		}
		rounds = append(rounds, r)
	}
	out := []string{
		fmt.Sprintf("users=%d", c.users),
		fmt.Sprintf("concurrency=%d", c.concurrency),
		fmt.Sprintf("rounds=%d", c.rounds),
		fmt.Sprintf("gomaxprocs=%d", runtime.GOMAXPROCS(0)),
		fmt.Sprintf("operator.max_concurrent_reconciles=%d", c.operator.MaxConcurrentReconciles),
		fmt.Sprintf("operator.kube_api_qps=%g", c.operator.KubeAPIQPS),
		fmt.Sprintf("operator.kube_api_burst=%d", c.operator.KubeAPIBurst),
	}
	for i, r := range rounds {
		p := fmt.Sprintf("round.%d.", i+1)
		out = append(out,
			p+fmt.Sprintf("operator.creates_seconds=%.3f", r.op.creates.Seconds()),
			p+fmt.Sprintf("operator.ready_seconds=%.3f", r.op.ready.Wall.Seconds()),
			p+fmt.Sprintf("operator.cpu_seconds=%s", r.op.ready.CPU),
			p+fmt.Sprintf("operator.writes_per_user=%.2f", float64(r.op.writes)/float64(c.users)),
			p+fmt.Sprintf("operator.writes_by_kind=%s", r.op.byKind),
			p+fmt.Sprintf("operator.idle_writes=%d", r.op.idleWrites),
			p+fmt.Sprintf("floor.seconds=%.3f", r.floor.Wall.Seconds()),
			p+fmt.Sprintf("floor.cpu_seconds=%s", r.floor.CPU),
			p+fmt.Sprintf("floor_with_creates.seconds=%.3f", r.floorAll.Wall.Seconds()),
			p+fmt.Sprintf("floor_with_creates.cpu_seconds=%s", r.floorAll.CPU),
		)
	}
	med := func(f func(roundResult) float64) float64 {
		v := make([]float64, len(rounds))
		for i, r := range rounds {
			v[i] = f(r)
		}
		slices.Sort(v)
		if len(v)%2 == 1 {
			return v[len(v)/2]
		}
		return (v[len(v)/2-1] + v[len(v)/2]) / 2
	}
	idle := int64(0)
	for _, r := range rounds {
		idle += r.op.idleWrites
	}
	out = append(out,
		fmt.Sprintf("operator.ready_seconds=%.3f", med(func(r roundResult) float64 { return r.op.ready.Wall.Seconds() })),
		fmt.Sprintf("operator.users_per_second=%.1f", med(func(r roundResult) float64 { return float64(c.users) / r.op.ready.Wall.Seconds() })),
		fmt.Sprintf("operator.writes_per_user=%.2f", med(func(r roundResult) float64 { return float64(r.op.writes) / float64(c.users) })),
		fmt.Sprintf("operator.idle_seconds=%.0f", c.idle.Seconds()),
		fmt.Sprintf("operator.idle_writes=%d", idle),
		fmt.Sprintf("floor.seconds=%.3f", med(func(r roundResult) float64 { return r.floor.Wall.Seconds() })),
		fmt.Sprintf("floor_with_creates.seconds=%.3f", med(func(r roundResult) float64 { return r.floorAll.Wall.Seconds() })),
		fmt.Sprintf("ratio=%.2f", med(func(r roundResult) float64 { return r.op.ready.Wall.Seconds() / r.floor.Wall.Seconds() })),
		fmt.Sprintf("ratio_with_creates=%.2f", med(func(r roundResult) float64 { return r.op.ready.Wall.Seconds() / r.floorAll.Wall.Seconds() })),
		fmt.Sprintf("cpu_ratio_with_creates=%.2f", med(func(r roundResult) float64 { return r.op.ready.CPU.total() / r.floorAll.CPU.total() })),
		fmt.Sprintf("target.ready_seconds_max=%d", 60),
		fmt.Sprintf("target.ratio_max=%.1f", 1.5),
	)
	fmt.Println(strings.Join(out, "\n"))
	return nil
}

type roundResult struct {
	op              operatorResult
	floor, floorAll measured
}

// runRound measures the three arms against a fresh API server and etcd.
func runRound(c config, floorFirst bool) (roundResult, error) {
	var r roundResult
	logf("starting kube-apiserver and etcd")
	env, err := envtest.New()
	if err != nil {
		return r, err
	}
	defer env.Stop()
	// The clients play many users and the floor's plain writer: no client-side limit.
	cfg := rest.CopyConfig(env.Config)
	cfg.QPS, cfg.Burst = -1, 0
	cl, err := client.New(cfg, client.Options{Scheme: apischeme.New()})
	if err != nil {
		return r, err
	}
	ctx := context.Background()
	if err := cl.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: opNamespace}}); err != nil {
		return r, err
	}
	floors := func() error {
		if r.floor, err = floorArm(ctx, c, cl, "floor", false); err != nil {
			return fmt.Errorf("floor arm: %w", err)
		}
		if r.floorAll, err = floorArm(ctx, c, cl, "floor-with-creates", true); err != nil {
			return fmt.Errorf("floor arm with creates: %w", err)
		}
		return nil
	}
	if floorFirst {
		// The operator reconciles every user it finds at start: the floor's
		// users must not be there for it (they have no quota of theirs).
		if err := floors(); err != nil {
			return r, err
		}
	}
	if r.op, err = operatorArm(ctx, c, env, cl); err != nil {
		return r, fmt.Errorf("operator arm: %w", err)
	}
	if !floorFirst {
		if err := floors(); err != nil {
			return r, err
		}
	}
	return r, nil
}

type operatorResult struct {
	creates            time.Duration
	ready              measured
	writes, idleWrites int64
	byKind             string
}

// measured is an arm's wall time and the CPU time it cost each process.
type measured struct {
	Wall time.Duration
	CPU  cpuTimes
}

// cpuTimes are CPU seconds of kube-apiserver, etcd and this process (the
// operator and the clients, or the clients alone): robust where wall time
// is not, on a machine shared with other work.
type cpuTimes struct{ APIServer, Etcd, Self float64 }

func (c cpuTimes) total() float64 { return c.APIServer + c.Etcd + c.Self }

func (c cpuTimes) sub(d cpuTimes) cpuTimes {
	return cpuTimes{c.APIServer - d.APIServer, c.Etcd - d.Etcd, c.Self - d.Self}
}

func (c cpuTimes) String() string {
	return fmt.Sprintf("apiserver:%.1f,etcd:%.1f,self:%.1f,total:%.1f", c.APIServer, c.Etcd, c.Self, c.total())
}

// cpuNow reads the CPU time of this process and of its children
// kube-apiserver and etcd from /proc.
func cpuNow() cpuTimes {
	const tick = 100.0 // USER_HZ on Linux
	var c cpuTimes
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) == nil {
		c.Self = time.Duration(ru.Utime.Nano() + ru.Stime.Nano()).Seconds()
	}
	dirs, _ := os.ReadDir("/proc")
	self := os.Getpid()
	for _, d := range dirs {
		b, err := os.ReadFile("/proc/" + d.Name() + "/stat")
		if err != nil {
			continue
		}
		// pid (comm) state ppid ... utime(14) stime(15)
		open, closing := strings.IndexByte(string(b), '('), strings.LastIndexByte(string(b), ')')
		if open < 0 || closing < open {
			continue
		}
		comm := string(b[open+1 : closing])
		f := strings.Fields(string(b[closing+1:]))
		if len(f) < 13 {
			continue
		}
		var ppid int
		var utime, stime float64
		_, _ = fmt.Sscan(f[1], &ppid)
		_, _ = fmt.Sscan(f[11], &utime)
		_, _ = fmt.Sscan(f[12], &stime)
		if ppid != self {
			continue
		}
		switch comm {
		case "kube-apiserver":
			c.APIServer += (utime + stime) / tick
		case "etcd":
			c.Etcd += (utime + stime) / tick
		}
	}
	return c
}

func operatorArm(ctx context.Context, c config, env *envtest.Env, cl client.Client) (operatorResult, error) {
	var res operatorResult
	writes := &writeCounter{byKind: map[string]int64{}}
	o := c.operator
	o.RestConfig = rest.CopyConfig(env.Config)
	o.RestConfig.WrapTransport = writes.wrap
	o.MetricsAddr, o.ProbeAddr, o.RefreshAddr = "0", "0", "0"
	o.Namespace = opNamespace
	o.SkipNameValidation = true // one operator per round, in one process

	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- manager.Run(runCtx, o) }()
	defer func() {
		stop()
		if err := <-done; err != nil {
			logf("operator: %v", err)
		}
	}()
	logf("operator started; waiting for its signing key")
	if err := until(ctx, time.Minute, func() error {
		return cl.Get(ctx, types.NamespacedName{Namespace: opNamespace, Name: o.SigningKeysSecret}, &corev1.Secret{})
	}); err != nil {
		return res, err
	}

	ns := "bench-operator"
	if err := setup(ctx, cl, ns); err != nil {
		return res, err
	}
	allReady, err := watchReady(ctx, env.Config, ns, c.users)
	if err != nil {
		return res, err
	}

	if c.cpuProfile != "" {
		f, err := os.Create(c.cpuProfile)
		if err != nil {
			return res, err
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			return res, err
		}
		defer func() {
			pprof.StopCPUProfile()
			_ = f.Close()
		}()
	}
	logf("operator arm: creating %d users from %d clients", c.users, c.concurrency)
	start, cpu0 := time.Now(), cpuNow()
	writes.reset()
	if err := parallel(c.users, c.concurrency, func(i int) error {
		return cl.Create(ctx, newUser(ns, i))
	}); err != nil {
		return res, err
	}
	res.creates = time.Since(start)
	logf("operator arm: created in %s; waiting for Ready", res.creates.Round(time.Millisecond))
	select {
	case <-allReady:
	case <-time.After(30 * time.Minute):
		return res, errors.New("not every user Ready after 30 minutes")
	}
	res.ready = measured{time.Since(start), cpuNow().sub(cpu0)}
	res.writes, res.byKind = writes.snapshot()
	logf("operator arm: all %d Ready in %s (%d writes; cpu %s); counting writes while idle for %s", c.users, res.ready.Wall.Round(time.Millisecond), res.writes, res.ready.CPU, c.idle)
	// Reconciles still queued (quota user counts, events) settle first; the
	// idle count starts once nothing was written for a second.
	_ = until(ctx, time.Minute, func() error {
		before, _ := writes.snapshot()
		time.Sleep(time.Second)
		if after, _ := writes.snapshot(); after != before {
			return errors.New("still writing")
		}
		return nil
	})
	settled, _ := writes.snapshot()
	time.Sleep(c.idle)
	after, _ := writes.snapshot()
	res.idleWrites = after - settled
	return res, nil
}

// floorArm times the API server alone doing onboarding's writes: per user a
// token Secret create and a status patch (and first the LLMUser create, if
// withCreates), from the same number of concurrent clients.
func floorArm(ctx context.Context, c config, cl client.Client, ns string, withCreates bool) (measured, error) {
	var m measured
	if err := setup(ctx, cl, ns); err != nil {
		return m, err
	}
	users := make([]*llmv1alpha1.LLMUser, c.users)
	create := func(i int) error {
		users[i] = newUser(ns, i)
		return cl.Create(ctx, users[i])
	}
	if !withCreates {
		logf("%s: creating %d users (not timed)", ns, c.users)
		if err := parallel(c.users, c.concurrency, create); err != nil {
			return m, err
		}
	}
	tokenValue := []byte(strings.Repeat("x", 620)) // the size of an issued token
	logf("%s: timing %d users' writes from %d clients", ns, c.users, c.concurrency)
	start, cpu0 := time.Now(), cpuNow()
	err := parallel(c.users, c.concurrency, func(i int) error {
		if withCreates {
			if err := create(i); err != nil {
				return err
			}
		}
		u := users[i]
		s := &corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{
				Namespace: ns, Name: u.Name + "-llm-token",
				Labels: map[string]string{llmv1alpha1.LabelUser: u.Name, llmv1alpha1.LabelManagedBy: llmv1alpha1.ManagedByValue},
				OwnerReferences: []metav1.OwnerReference{{
					APIVersion: llmv1alpha1.GroupVersion.String(), Kind: "LLMUser", Name: u.Name, UID: u.UID,
					Controller: new(true), BlockOwnerDeletion: new(true),
				}},
			},
			Type: corev1.SecretTypeOpaque,
			Data: map[string][]byte{
				"token": tokenValue, "OPENAI_API_KEY": tokenValue, "OPENAI_BASE_URL": []byte("http://llm-user-proxy.llm-user-operator-system.svc:8000/v1"),
				"OPENAI_API_BASE": []byte("http://llm-user-proxy.llm-user-operator-system.svc:8000/v1"), "expiresAt": []byte("2026-11-26T10:00:00Z"),
			},
		}
		if err := cl.Create(ctx, s); err != nil {
			return err
		}
		orig := u.DeepCopy()
		now := metav1.Now()
		u.Status.ObservedGeneration = u.Generation
		u.Status.Token = &llmv1alpha1.TokenStatus{SecretName: s.Name, KeyID: "kid", IssuedAt: &now, ExpiresAt: &now, RenewAt: &now, Generation: 1}
		for _, typ := range []string{llmv1alpha1.ConditionTokenIssued, llmv1alpha1.ConditionReady} {
			meta.SetStatusCondition(&u.Status.Conditions, metav1.Condition{
				Type: typ, Status: metav1.ConditionTrue, Reason: llmv1alpha1.ReasonIssued, ObservedGeneration: u.Generation,
				Message: "token generation 1 in Secret " + s.Name + ", valid until 2026-11-26T10:00:00Z",
			})
		}
		return cl.Status().Patch(ctx, u, client.MergeFromWithOptions(orig, client.MergeFromWithOptimisticLock{}))
	})
	m = measured{time.Since(start), cpuNow().sub(cpu0)}
	logf("%s: %s (cpu %s)", ns, m.Wall.Round(time.Millisecond), m.CPU)
	if err != nil {
		return m, err
	}
	// Leave nothing an operator started later would act on. Deleting tens of
	// thousands of objects outlasts the API server's request timeout, which
	// it answers while it goes on deleting, or it resets the stream (50,000
	// Secrets did): ask again, a little later, until it is done. Each call
	// deletes what is left, so the calls converge.
	for _, obj := range []client.Object{&llmv1alpha1.LLMUser{}, &corev1.Secret{}, &llmv1alpha1.LLMQuota{}} {
		deadline := time.Now().Add(15 * time.Minute)
		for {
			err := cl.DeleteAllOf(ctx, obj, client.InNamespace(ns))
			if err == nil {
				break
			}
			var status apierrors.APIStatus
			transient := apierrors.IsTimeout(err) || apierrors.IsServerTimeout(err) || apierrors.IsTooManyRequests(err) ||
				!errors.As(err, &status) // no answer: a reset stream, a broken connection
			if !transient || time.Now().After(deadline) {
				return m, err
			}
			logf("%s: deleting %T again after: %v", ns, obj, err)
			time.Sleep(2 * time.Second)
		}
	}
	return m, until(ctx, 15*time.Minute, func() error {
		var l llmv1alpha1.LLMUserList
		if err := cl.List(ctx, &l, client.InNamespace(ns), client.Limit(1)); err != nil {
			return err
		}
		return check(len(l.Items) == 0, "floor users still being deleted")
	})
}

func check(ok bool, why string) error {
	if ok {
		return nil
	}
	return errors.New(why)
}

func setup(ctx context.Context, cl client.Client, ns string) error {
	if err := cl.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}); err != nil {
		return err
	}
	tokens := int64(100000)
	return cl.Create(ctx, &llmv1alpha1.LLMQuota{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "team"},
		Spec:       llmv1alpha1.LLMQuotaSpec{Limits: []llmv1alpha1.QuotaLimit{{Window: llmv1alpha1.WindowDay, Tokens: &tokens}}},
	})
}

func newUser(ns string, i int) *llmv1alpha1.LLMUser {
	return &llmv1alpha1.LLMUser{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: fmt.Sprintf("user-%05d", i)},
		Spec:       llmv1alpha1.LLMUserSpec{QuotaRef: llmv1alpha1.QuotaReference{Name: "team"}},
	}
}

// watchReady returns a channel closed once n distinct users of ns were
// seen Ready, through an informer (a plain watch may be closed by the API
// server at any time; an informer resumes it).
func watchReady(ctx context.Context, cfg *rest.Config, ns string, n int) (<-chan struct{}, error) {
	c, err := cache.New(cfg, cache.Options{Scheme: apischeme.New(), DefaultNamespaces: map[string]cache.Config{ns: {}}})
	if err != nil {
		return nil, err
	}
	inf, err := c.GetInformer(ctx, &llmv1alpha1.LLMUser{}, cache.BlockUntilSynced(false))
	if err != nil {
		return nil, err
	}
	done := make(chan struct{})
	var mu sync.Mutex
	ready := map[string]bool{}
	seen := func(obj any) {
		u, ok := obj.(*llmv1alpha1.LLMUser)
		if !ok || !meta.IsStatusConditionTrue(u.Status.Conditions, llmv1alpha1.ConditionReady) {
			return
		}
		mu.Lock()
		defer mu.Unlock()
		if !ready[u.Name] {
			if ready[u.Name] = true; len(ready) == n {
				close(done)
			}
		}
	}
	if _, err := inf.AddEventHandler(toolscache.ResourceEventHandlerFuncs{
		AddFunc:    seen,
		UpdateFunc: func(_, obj any) { seen(obj) },
	}); err != nil {
		return nil, err
	}
	go func() { _ = c.Start(ctx) }()
	if !c.WaitForCacheSync(ctx) {
		return nil, errors.New("informer on LLMUsers did not sync")
	}
	return done, nil
}

// parallel runs f(0..n-1) on workers goroutines and returns the first error.
func parallel(n, workers int, f func(int) error) error {
	var next atomic.Int64
	var first error
	var once sync.Once
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				if err := f(i); err != nil {
					once.Do(func() { first = err })
					return
				}
			}
		})
	}
	wg.Wait()
	return first
}

func until(ctx context.Context, timeout time.Duration, f func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := f()
		if err == nil || time.Now().After(deadline) {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// writeCounter counts the operator's requests that change something, by
// verb and resource.
type writeCounter struct {
	mu     sync.Mutex
	n      int64
	byKind map[string]int64
}

func (c *writeCounter) wrap(rt http.RoundTripper) http.RoundTripper {
	return roundTripper(func(req *http.Request) (*http.Response, error) {
		if req.Method != http.MethodGet {
			c.add(req.Method + " " + resourceOf(req.URL.Path))
		}
		return rt.RoundTrip(req)
	})
}

// resourceOf turns /apis/g/v/namespaces/ns/kind/name/sub into kind/sub.
func resourceOf(path string) string {
	parts := strings.Split(strings.Trim(path, "/"), "/")
	if i := slices.Index(parts, "namespaces"); i >= 0 && len(parts) > i+2 {
		parts = parts[i+2:]
	}
	if len(parts) >= 3 {
		return parts[0] + "/" + parts[2]
	}
	return parts[0]
}

func (c *writeCounter) add(kind string) {
	c.mu.Lock()
	c.n++
	c.byKind[kind]++
	c.mu.Unlock()
}

func (c *writeCounter) reset() {
	c.mu.Lock()
	c.n = 0
	clear(c.byKind)
	c.mu.Unlock()
}

func (c *writeCounter) snapshot() (int64, string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	kinds := make([]string, 0, len(c.byKind))
	for k, v := range c.byKind {
		kinds = append(kinds, fmt.Sprintf("%s:%d", strings.ReplaceAll(k, " ", "_"), v))
	}
	slices.Sort(kinds)
	return c.n, strings.Join(kinds, ",")
}

type roundTripper func(*http.Request) (*http.Response, error)

func (f roundTripper) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }
