// Command report turns the key=value lines of the scale benchmarks
// (hack/bench-scale/operator and test/scale) into bench/results/scale-*.md:
// each figure beside its target and the floor measured in the same run.
//
//	go run ./hack/bench-scale/report -in results.txt -out bench/results/scale-20261130.md
package main

import (
	"cmp"
	"flag"
	"fmt"
	"maps"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"
)

func main() {
	in := flag.String("in", "", "The key=value results.")
	out := flag.String("out", "", "The Markdown report to write.")
	flag.Parse()
	kv, err := read(*in)
	if err != nil {
		fmt.Fprintln(os.Stderr, "report:", err)
		os.Exit(1)
	}
	if err := os.WriteFile(*out, []byte(render(kv)), 0o644); err != nil {
		fmt.Fprintln(os.Stderr, "report:", err)
		os.Exit(1)
	}
}

func read(path string) (map[string]string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	kv := map[string]string{}
	for line := range strings.Lines(string(b)) {
		if k, v, ok := strings.Cut(strings.TrimSpace(line), "="); ok {
			kv[k] = v
		}
	}
	return kv, nil
}

// row is one figure of the report and how it is judged.
type row struct {
	what, key, unit string
	// target is the bound the figure must stay at or under; "" for none.
	target string
	// floor names the key of the floor the figure is compared with.
	floor string
	// also names a second figure shown after the first ("p50 / p99").
	also string
}

var rows = []row{
	{what: "LLMUsers Ready with their Secrets", key: "operator.ready_seconds", unit: "s", target: "60", floor: "floor.seconds"},
	{what: "… against the API server's floor (Secrets + status)", key: "ratio", unit: "×", target: "1.5"},
	{what: "… against the floor including the user creates", key: "ratio_with_creates", unit: "×", target: "1.5"},
	{what: "operator writes per user", key: "operator.writes_per_user"},
	{what: "operator writes while idle", key: "operator.idle_writes", target: "0"},
	{what: "writes while idle, operator and proxy, 20 s", key: "idle_writes_20s", target: "0"},
	{what: "one request per user, 64 concurrent", key: "requests_seconds", unit: "s"},
	{what: "failed requests", key: "requests_failed", target: "0"},
	{what: "last request → every user exact in status", key: "flush_lag_seconds", unit: "s", target: "60"},
	{what: "status patches for the flush (API server's count)", key: "flush_status_patches"},
	{what: "… per user (one request per user through each proxy replica)", key: "flush_status_patches_per_user", target: "1"},
	{what: "status patch rate, peak over 5 s (API server's count)", key: "flush_write_rate_peak_per_second", unit: "/s", target: "status_write_rate_cap"},
	{what: "status patch rate, mean of busy seconds", key: "flush_write_rate_mean_per_second", unit: "/s"},
	{what: "writes after the flush, 20 s", key: "after_flush_writes_20s", target: "0"},
	{what: "/metrics scrape, median of 5", key: "scrape_median_ms", unit: "ms", target: "250"},
	{what: "/metrics size", key: "scrape_bytes", unit: "B"},
	{what: "/metrics series", key: "scrape_series"},
	{what: "series per active user", key: "scrape_series_per_active_user", target: "3"},
	{what: "proxy peak RSS", key: "proxy_peak_rss_mib", unit: "MiB"},
	{what: "admission (Reserve) p50 / p99, in-process counter, one at a time", key: "admission_reserve_p50_us_memory_c1", unit: "µs", also: "admission_reserve_p99_us_memory_c1"},
	{what: "… one Redis", key: "admission_reserve_p50_us_redis_c1", unit: "µs", also: "admission_reserve_p99_us_redis_c1"},
	{what: "… p99 against the in-process counter", key: "admission_reserve_p99_ratio_redis_c1", unit: "×"},
	{what: "… Redis Cluster, 3 masters", key: "admission_reserve_p50_us_cluster_c1", unit: "µs", also: "admission_reserve_p99_us_cluster_c1"},
	{what: "… p99 against the in-process counter", key: "admission_reserve_p99_ratio_cluster_c1", unit: "×"},
	{what: "admission (Reserve) p50 / p99, in-process counter, 64 at a time", key: "admission_reserve_p50_us_memory_c64", unit: "µs", also: "admission_reserve_p99_us_memory_c64"},
	{what: "… one Redis", key: "admission_reserve_p50_us_redis_c64", unit: "µs", also: "admission_reserve_p99_us_redis_c64"},
	{what: "… p99 against the in-process counter", key: "admission_reserve_p99_ratio_redis_c64", unit: "×"},
	{what: "… Redis Cluster, 3 masters", key: "admission_reserve_p50_us_cluster_c64", unit: "µs", also: "admission_reserve_p99_us_cluster_c64"},
	{what: "… p99 against the in-process counter", key: "admission_reserve_p99_ratio_cluster_c64", unit: "×"},
}

func render(kv map[string]string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "# Scale benchmark, %s\n\n", time.Now().UTC().Format("2006-01-02 15:04 UTC"))
	fmt.Fprintf(&b, "`make bench-scale`: %s users onboarded by the operator (%s users for the proxy run), on %s CPUs (GOMAXPROCS). "+
		"%s proxy replica(s), on one Redis when more than one. Floors are measured in the same run, against a fresh API server.\n\n",
		kv["users"], kv["proxy_users"], kv["gomaxprocs"], cmp.Or(kv["proxy_replicas"], "1"))
	b.WriteString("| figure | value | target | met |\n|---|---|---|---|\n")
	for _, r := range rows {
		v, ok := kv[r.key]
		if !ok {
			continue
		}
		target, met := r.target, ""
		if t, ok := kv[target]; ok {
			target = t
		}
		if target != "" {
			met = "yes"
			if !atMost(v, target) {
				met = "**no**"
			}
			target = "≤ " + target + r.unit
		}
		value := v + r.unit
		if a, ok := kv[r.also]; ok {
			value = v + " / " + a + r.unit
		}
		if f, ok := kv[r.floor]; ok {
			value += " (floor " + f + r.unit + ")"
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s |\n", r.what, value, target, met)
	}
	b.WriteString("\nRaw results:\n\n```\n")
	for _, k := range sortedKeys(kv) {
		fmt.Fprintf(&b, "%s=%s\n", k, kv[k])
	}
	b.WriteString("```\n")
	return b.String()
}

func atMost(v, bound string) bool {
	x, err1 := strconv.ParseFloat(v, 64)
	y, err2 := strconv.ParseFloat(bound, 64)
	return err1 == nil && err2 == nil && x <= y
}

func sortedKeys(kv map[string]string) []string {
	keys := slices.Collect(maps.Keys(kv))
	slices.Sort(keys)
	return keys
}
