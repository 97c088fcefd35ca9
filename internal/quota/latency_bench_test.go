package quota

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/llm-user-operator/llm-user-operator/internal/testutil/redisserver"
)

// latencyUsers is how many PerUser users the admission latency benchmark
// spreads its requests over: enough that a cluster's three masters each
// take a third of them.
const latencyUsers = 10000

// latencyWorkers are how many requests are admitted at once: one (the
// round trip alone) and 64 (as the proxy under 64 concurrent clients, where
// the wait includes queueing for the two cores and Redis's one thread).
var latencyWorkers = []int{1, 64}

// BenchmarkAdmissionLatency measures what a request waits for the counter
// store: one Reserve (the admission, before the request goes upstream) and
// one Settle (after it ends), for PerUser users with a minute and a day
// window, one and 64 at a time, on the in-process counter, one Redis, and a Redis
// Cluster of three masters and three replicas on loopback. It reports the
// p50 and p99 of each call and the Redis arms' p99 against the in-process
// counter's, measured in the same run. With BENCH_REPORT set, the figures
// are appended to that file as key=value lines (make bench-scale's report).
//
//	go test -run '^$' -bench AdmissionLatency -benchtime 20000x ./internal/quota
func BenchmarkAdmissionLatency(b *testing.B) {
	arms := []struct {
		name, key string
		counter   func(b *testing.B) Counter
	}{
		// Each arm's store is started once, by the parent benchmark, and
		// outlives the sub-benchmark's calibration rounds.
		{"in-process", "memory", func(*testing.B) Counter { return NewMemory(time.Now) }},
		{"redis", "redis", func(b *testing.B) Counter {
			addr, _ := redisserver.Start(b)
			return seeded(b, NewRedis(newRedisClient(b, addr), RedisOptions{Prefix: "lat:"}))
		}},
		{"redis cluster", "cluster", func(b *testing.B) Counter {
			return seeded(b, NewRedis(newClusterClient(b, redisserver.NewCluster(b)), RedisOptions{Prefix: "lat:", Cluster: true}))
		}},
	}
	results := map[string]latencies{}
	for _, arm := range arms {
		c := arm.counter(b)
		for _, workers := range latencyWorkers {
			b.Run(fmt.Sprintf("%s/%d at a time", arm.name, workers), func(b *testing.B) {
				l := measureAdmission(b, c, workers)
				b.ReportMetric(l.reserve.at(0.50), "reserve-p50-µs")
				b.ReportMetric(l.reserve.at(0.99), "reserve-p99-µs")
				b.ReportMetric(l.settle.at(0.99), "settle-p99-µs")
				results[fmt.Sprintf("%s_c%d", arm.key, workers)] = l
			})
		}
	}
	var report strings.Builder
	fmt.Fprintf(&report, "admission_users=%d\n", latencyUsers)
	for _, workers := range latencyWorkers {
		base, ok := results[fmt.Sprintf("memory_c%d", workers)]
		if !ok {
			continue
		}
		for _, arm := range arms {
			k := fmt.Sprintf("%s_c%d", arm.key, workers)
			l, ok := results[k]
			if !ok {
				continue
			}
			fmt.Fprintf(&report, "admission_reserve_p50_us_%s=%.1f\nadmission_reserve_p99_us_%s=%.1f\nadmission_settle_p99_us_%s=%.1f\nadmission_samples_%s=%d\n",
				k, l.reserve.at(0.50), k, l.reserve.at(0.99), k, l.settle.at(0.99), k, len(l.reserve))
			if arm.key != "memory" {
				fmt.Fprintf(&report, "admission_reserve_p99_ratio_%s=%.1f\n", k, l.reserve.at(0.99)/base.reserve.at(0.99))
			}
		}
	}
	b.Logf("admission latency over %d users:\n%s", latencyUsers, report.String())
	if path := os.Getenv("BENCH_REPORT"); path != "" {
		f, err := os.OpenFile(path, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o600)
		if err != nil {
			b.Fatal(err)
		}
		defer func() { _ = f.Close() }()
		if _, err := f.WriteString(report.String()); err != nil {
			b.Fatal(err)
		}
	}
}

// latencies are one arm's samples, each call's in microseconds.
type latencies struct{ reserve, settle samples }

type samples []float64

// at is the q quantile (nearest rank) of sorted samples.
func (s samples) at(q float64) float64 {
	if len(s) == 0 {
		return 0
	}
	i := int(q*float64(len(s))+0.5) - 1
	return s[min(max(i, 0), len(s)-1)]
}

// measureAdmission admits and settles b.N requests on c from workers
// goroutines, user after user, and returns every call's latency, sorted.
func measureAdmission(b *testing.B, c Counter, workers int) latencies {
	ctx := context.Background()
	big := ptr(1 << 50)
	limits := []Limit{{Window: minute, Requests: big}, {Window: day, Tokens: big}}
	budgets := make([][]Budget, latencyUsers)
	marks := make([][]string, latencyUsers)
	for i := range budgets {
		n := fmt.Sprint("user", i)
		budgets[i] = []Budget{UserBudget("team", n, "uid-"+n, limits, false)}
		// As the proxy settles: the charge's objects go with it.
		marks[i] = Charge{Namespace: "team", User: n, UserUID: "uid-" + n}.Objects()
	}
	var (
		next atomic.Int64
		mu   sync.Mutex
		all  latencies
		wg   sync.WaitGroup
	)
	b.ResetTimer()
	for range workers {
		wg.Go(func() {
			var mine latencies
			for {
				i := next.Add(1) - 1
				if i >= int64(b.N) {
					break
				}
				req := Request{Budgets: budgets[i%latencyUsers], Estimate: amt(1, 500, 500)}
				t0 := time.Now()
				r, d, err := c.Reserve(ctx, req)
				t1 := time.Now()
				if err != nil || !d.Allowed {
					b.Errorf("Reserve: %v, %+v", err, d.Exceeded)
					return
				}
				r.Marks = marks[i%latencyUsers]
				if err := c.Settle(ctx, r, amt(1, 500, 200)); err != nil {
					b.Errorf("Settle: %v", err)
					return
				}
				mine.reserve = append(mine.reserve, float64(t1.Sub(t0).Nanoseconds())/1e3)
				mine.settle = append(mine.settle, float64(time.Since(t1).Nanoseconds())/1e3)
			}
			mu.Lock()
			all.reserve = append(all.reserve, mine.reserve...)
			all.settle = append(all.settle, mine.settle...)
			mu.Unlock()
		})
	}
	wg.Wait()
	b.StopTimer()
	slices.Sort(all.reserve)
	slices.Sort(all.settle)
	return all
}
