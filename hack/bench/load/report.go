package main

import (
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strings"
	"time"
)

// armStats is everything measured on one arm, all rounds pooled.
type armStats struct {
	errs *errCount

	cpu, cpuStream, tput []cpuSample
	lat1                 []time.Duration
	rate                 []openResult

	ttft1, gaps1, ttft100, gaps100 []time.Duration
	stream100                      []cpuSample

	mem *memResult

	// served and charges are the successful requests of the static phase
	// and the charges the arm's Sink received meanwhile; streamServed the
	// successful requests of the later phases.
	served, charges, streamServed int64
}

type facts struct {
	nproc                          int
	cpuModel, kernel, goVersion    string
	commit, memTotal, generatorCPU string
}

func machineFacts() facts {
	f := facts{nproc: onlineCPUs(), goVersion: runtime.Version(), generatorCPU: cpusAllowed("self")}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for line := range strings.SplitSeq(string(b), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				f.cpuModel = strings.TrimSpace(v)
				break
			}
		}
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		f.kernel = strings.TrimSpace(string(b))
	}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		line, _, _ := strings.Cut(string(b), "\n")
		_, v, _ := strings.Cut(line, ":")
		f.memTotal = strings.TrimSpace(v)
	}
	f.commit = "unknown"
	if out, err := exec.Command("git", "rev-parse", "--short=12", "HEAD").Output(); err == nil {
		f.commit = strings.TrimSpace(string(out))
		if st, err := exec.Command("git", "status", "--porcelain", "--", "internal", "cmd", "hack/bench").Output(); err == nil && len(st) > 0 {
			f.commit += " + uncommitted changes in internal/, cmd/ or hack/bench/"
		}
	}
	return f
}

type report struct {
	o       options
	facts   facts
	pin     pinner
	started time.Time
	took    time.Duration
	arms    map[string]*armStats
	// invalid says why the run says nothing about the proxy; warnings are
	// worth a look but spoil nothing.
	invalid, warnings []string
}

func newReport(o options, f facts, pin pinner, started time.Time) *report {
	return &report{o: o, facts: f, pin: pin, started: started, arms: map[string]*armStats{}}
}

func (r *report) arm(name string) *armStats {
	s := r.arms[name]
	if s == nil {
		s = &armStats{errs: &errCount{}}
		r.arms[name] = s
	}
	return s
}

// validate records why the run says nothing about the proxy, if it does not.
func (r *report) validate() {
	d := r.arm("direct")
	if got, want := rateAchieved(d.rate), float64(r.o.rate); got < 0.95*want {
		r.invalid = append(r.invalid, fmt.Sprintf("the direct arm achieved %.0f req/s of the %d offered", got, r.o.rate))
	}
	for _, a := range arms {
		s := r.arm(a)
		n := s.errs.n.Load()
		switch {
		case n == 0:
		case a == "direct" || float64(n) > 0.001*float64(n+s.served+s.streamServed):
			r.invalid = append(r.invalid, fmt.Sprintf("%d failed requests on the %s arm, first: %s", n, a, s.errs))
		default:
			r.warnings = append(r.warnings, fmt.Sprintf("%d failed requests on the %s arm (under 0.1%%), first: %s", n, a, s.errs))
		}
	}
	var noisy []string
	for _, a := range arms {
		s := r.arm(a)
		_, proxy, busy := rates(append(slices.Clone(s.tput), s.stream100...))
		if len(busy) > 0 && busy[0]-max(proxy, 0) > 0.15 {
			noisy = append(noisy, fmt.Sprintf("%s %.0f%%", a, 100*(busy[0]-max(proxy, 0))))
		}
	}
	if len(noisy) > 0 {
		r.warnings = append(r.warnings, "CPU 0 was busy with work other than the proxy under test during the throughput and concurrent-stream runs ("+
			strings.Join(noisy, ", ")+"): something else ran on the machine, and throughput and tail latencies are the less reliable for it")
	}
	if f := r.arm("full"); f.charges != f.served {
		r.invalid = append(r.invalid, fmt.Sprintf("the full arm served %d requests but charged %d", f.served, f.charges))
	}
	if r.pin.taskset == "" && !r.pin.enabled() {
		r.invalid = append(r.invalid, "fewer than 2 CPUs: the proxy cannot have a core of its own")
	}
}

// Aggregates.

func cpuPerRequest(s []cpuSample) time.Duration {
	var cpu time.Duration
	var n int64
	for _, x := range s {
		if x.cpu < 0 {
			return -1
		}
		cpu += x.cpu
		n += x.n
	}
	if n == 0 {
		return -1
	}
	return cpu / time.Duration(n)
}

// rates sums runs: requests per second, and the busy fraction of the proxy
// process (-1 without one) and of each CPU.
func rates(s []cpuSample) (rps, proxy float64, busy []float64) {
	var n int64
	var wall, cpu time.Duration
	for _, x := range s {
		n, wall, cpu = n+x.n, wall+x.wall, cpu+x.cpu
		for i, b := range x.busy {
			if i >= len(busy) {
				busy = append(busy, 0)
			}
			busy[i] += b * x.wall.Seconds()
		}
	}
	if wall <= 0 {
		return 0, -1, nil
	}
	for i := range busy {
		busy[i] /= wall.Seconds()
	}
	proxy = -1
	if cpu >= 0 {
		proxy = cpu.Seconds() / wall.Seconds()
	}
	return float64(n) / wall.Seconds(), proxy, busy
}

// busyCell says how busy the proxy and each CPU were.
func busyCell(s []cpuSample) string {
	_, proxy, busy := rates(s)
	var parts []string
	if proxy >= 0 {
		parts = append(parts, fmt.Sprintf("proxy %.0f%%", proxy*100))
	}
	for i, b := range busy {
		parts = append(parts, fmt.Sprintf("CPU%d %.0f%%", i, b*100))
	}
	return strings.Join(parts, ", ")
}

func rateAchieved(s []openResult) float64 {
	if len(s) == 0 {
		return 0
	}
	// The worst round: the rate must hold in every one.
	worst := s[0].achieved
	for _, x := range s[1:] {
		worst = min(worst, x.achieved)
	}
	return worst
}

func rateLatencies(s []openResult) (all []time.Duration, dropped int) {
	for _, x := range s {
		all = append(all, x.lats...)
		dropped += x.dropped
	}
	return all, dropped
}

// pct returns the q-quantile (nearest rank) of d, or -1 when d is empty.
func pct(d []time.Duration, q float64) time.Duration {
	if len(d) == 0 {
		return -1
	}
	s := slices.Clone(d)
	slices.Sort(s)
	i := int(q*float64(len(s))+0.5) - 1
	return s[min(max(i, 0), len(s)-1)]
}

// Formatting.

func ms(d time.Duration) string {
	if d < 0 {
		return "–"
	}
	return fmt.Sprintf("%.3f ms", float64(d)/1e6)
}

func us(d time.Duration) string {
	if d < 0 {
		return "–"
	}
	return fmt.Sprintf("%.1f µs", float64(d)/1e3)
}

func kib(b float64) string { return fmt.Sprintf("%.1f KiB", b/1024) }

func mib(b int64) string { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }

func signedMs(d time.Duration) string {
	return fmt.Sprintf("%+.3f ms", float64(d)/1e6)
}

func verdict(ok bool) string {
	if ok {
		return "PASS"
	}
	return "MISS"
}

// latencyRow is a row of absolute latencies with, for the proxy arms, the
// latency added to the direct arm's.
func latencyRow(name string, get func(a string) time.Duration) string {
	var b strings.Builder
	fmt.Fprintf(&b, "| %s |", name)
	base := get("direct")
	for _, a := range arms {
		v := get(a)
		if a == "direct" || v < 0 || base < 0 {
			fmt.Fprintf(&b, " %s |", ms(v))
			continue
		}
		fmt.Fprintf(&b, " %s (%s) |", ms(v), signedMs(v-base))
	}
	b.WriteString("\n")
	return b.String()
}

func (r *report) markdown() string {
	var b strings.Builder
	p := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }
	o, f := r.o, r.facts
	full, floor := r.arm("full"), r.arm("reverseproxy")

	p("# Proxy overhead benchmark, %s\n\n", r.started.Format("2006-01-02 15:04 UTC"))
	if len(r.invalid) > 0 {
		p("**INVALID run**: %s.\n\n", strings.Join(r.invalid, "; "))
	}
	for _, w := range r.warnings {
		p("**Note**: %s.\n\n", w)
	}
	p("`make bench` (hack/bench.sh → hack/bench/load), %d rounds, %s. Commit %s; %s; %d CPUs (%s), %s RAM; Linux %s.\n\n",
		o.rounds, r.took.Round(time.Second), f.commit, f.goVersion, f.nproc, f.cpuModel, f.memTotal, f.kernel)

	// Targets.
	cpuFull, cpuFloor := cpuPerRequest(full.cpu), cpuPerRequest(floor.cpu)
	ratio := float64(cpuFull) / float64(cpuFloor)
	direct := r.arm("direct")
	added := func(get func(*armStats) []time.Duration, q float64) (vsDirect, vsFloor string, d time.Duration) {
		d = pct(get(full), q) - pct(get(direct), q)
		return signedMs(d), signedMs(pct(get(full), q) - pct(get(floor), q)), d
	}
	lat1 := func(s *armStats) []time.Duration { return s.lat1 }
	ttft1 := func(s *armStats) []time.Duration { return s.ttft1 }
	p("## Targets (the full arm)\n\n")
	p("| target | measured | limit | | the floor's own share |\n|---|---|---|---|---|\n")
	p("| CPU per request vs the reverseproxy floor | %.2f× (%s vs %s) | ≤ 1.10× | %s | |\n", ratio, us(cpuFull), us(cpuFloor), verdict(ratio <= 1.10 && cpuFloor > 0))
	m50, f50, d50 := added(lat1, 0.5)
	p("| added latency p50, concurrency 1 | %s | ≤ 0.2 ms | %s | full − reverseproxy: %s |\n", m50, verdict(d50 <= 200*time.Microsecond), f50)
	m99, f99, d99 := added(lat1, 0.99)
	p("| added latency p99, concurrency 1 | %s | ≤ 1 ms | %s | full − reverseproxy: %s |\n", m99, verdict(d99 <= time.Millisecond), f99)
	mt, ft, dt := added(ttft1, 0.5)
	p("| added time to first token p50, streaming, concurrency 1 | %s | ≤ 1 ms | %s | full − reverseproxy: %s |\n", mt, verdict(dt <= time.Millisecond), ft)
	gaps1 := func(s *armStats) []time.Duration { return s.gaps1 }
	mg, fg, dg := added(gaps1, 0.99)
	p("| added inter-chunk p99, streaming, concurrency 1 | %s | ≤ 0.5 ms | %s | full − reverseproxy: %s |\n", mg, verdict(dg <= 500*time.Microsecond), fg)
	ttft100 := func(s *armStats) []time.Duration { return s.ttft100 }
	m100, f100, d100 := added(ttft100, 0.99)
	floor100 := pct(floor.ttft100, 0.99) - pct(direct.ttft100, 0.99)
	p("| added time to first token p99, streaming, concurrency 100 | %s | ≤ the floor's + 1 ms (%s) | %s | full − reverseproxy: %s |\n",
		m100, signedMs(floor100+time.Millisecond), verdict(d100 <= floor100+time.Millisecond), f100)
	if m := full.mem; m != nil {
		fl, limit := "–", float64(64<<10)
		if fm := floor.mem; fm != nil {
			fl, limit = "reverseproxy: "+kib(fm.perStream()), fm.perStream()
		}
		p("| memory per concurrent stream (%d streams) | %s | ≤ the floor's (%s) | %s | %s |\n", m.opened, kib(m.perStream()), kib(limit), verdict(m.perStream() <= limit), fl)
	}
	p("\n")

	// Non-streaming.
	p("## Static upstream (non-streaming unless said)\n\n")
	p("| | direct | reverseproxy | full | noauth |\n|---|---|---|---|---|\n")
	row := func(name string, cell func(a string) string) {
		p("| %s |", name)
		for _, a := range arms {
			p(" %s |", cell(a))
		}
		p("\n")
	}
	cpuCell := func(get func(*armStats) []cpuSample) func(string) string {
		return func(a string) string {
			if a == "direct" {
				return "–"
			}
			v, base := cpuPerRequest(get(r.arm(a))), cpuPerRequest(get(floor))
			if v < 0 || base <= 0 {
				return us(v)
			}
			return fmt.Sprintf("%s (%.2f×)", us(v), float64(v)/float64(base))
		}
	}
	row(fmt.Sprintf("proxy CPU per request (%d per round, %d concurrent)", o.cpuRequests, o.concurrency),
		cpuCell(func(s *armStats) []cpuSample { return s.cpu }))
	row(fmt.Sprintf("proxy CPU per streamed request (%d text chunks %v apart; %d per round, %d concurrent)", o.chunks, o.chunkDelay, o.cpuStreams, o.cpuStreamConc),
		cpuCell(func(s *armStats) []cpuSample { return s.cpuStream }))
	row(fmt.Sprintf("throughput, %d concurrent, %v per round", o.concurrency, o.tputDur), func(a string) string {
		rps, _, _ := rates(r.arm(a).tput)
		return fmt.Sprintf("%.0f req/s", rps)
	})
	row("… busy during the throughput runs", func(a string) string { return busyCell(r.arm(a).tput) })
	p("%s", latencyRow("latency p50, concurrency 1", func(a string) time.Duration { return pct(r.arm(a).lat1, 0.5) }))
	p("%s", latencyRow("latency p99, concurrency 1", func(a string) time.Duration { return pct(r.arm(a).lat1, 0.99) }))
	p("%s", latencyRow(fmt.Sprintf("latency p50 at %d req/s (open loop)", o.rate), func(a string) time.Duration {
		l, _ := rateLatencies(r.arm(a).rate)
		return pct(l, 0.5)
	}))
	p("%s", latencyRow(fmt.Sprintf("latency p99 at %d req/s (open loop)", o.rate), func(a string) time.Duration {
		l, _ := rateLatencies(r.arm(a).rate)
		return pct(l, 0.99)
	}))
	row("rate achieved (worst round)", func(a string) string {
		_, dropped := rateLatencies(r.arm(a).rate)
		s := fmt.Sprintf("%.0f req/s", rateAchieved(r.arm(a).rate))
		if dropped > 0 {
			s += fmt.Sprintf(", %d dropped", dropped)
		}
		return s
	})
	row("samples at concurrency 1 / open loop", func(a string) string {
		l, _ := rateLatencies(r.arm(a).rate)
		return fmt.Sprintf("%d / %d", len(r.arm(a).lat1), len(l))
	})
	row("failed requests (all phases)", func(a string) string { return fmt.Sprint(r.arm(a).errs.n.Load()) })
	p("\nThe full arm served %d requests in this phase and its Sink received %d charges.\n\n", full.served, full.charges)

	// Streaming.
	p("## Streaming through llm-d-inference-sim (TTFT %v, %v per token, %d tokens)\n\n", o.ttft, o.itl, o.tokens)
	p("| | direct | reverseproxy | full | noauth |\n|---|---|---|---|---|\n")
	for _, c := range []struct {
		label      string
		ttft, gaps func(*armStats) []time.Duration
	}{
		{"concurrency 1", func(s *armStats) []time.Duration { return s.ttft1 }, func(s *armStats) []time.Duration { return s.gaps1 }},
		{fmt.Sprintf("concurrency %d", o.streamConc), func(s *armStats) []time.Duration { return s.ttft100 }, func(s *armStats) []time.Duration { return s.gaps100 }},
	} {
		p("%s", latencyRow("time to first token p50, "+c.label, func(a string) time.Duration { return pct(c.ttft(r.arm(a)), 0.5) }))
		p("%s", latencyRow("time to first token p99, "+c.label, func(a string) time.Duration { return pct(c.ttft(r.arm(a)), 0.99) }))
		p("%s", latencyRow("inter-chunk p50, "+c.label, func(a string) time.Duration { return pct(c.gaps(r.arm(a)), 0.5) }))
		p("%s", latencyRow("inter-chunk p99, "+c.label, func(a string) time.Duration { return pct(c.gaps(r.arm(a)), 0.99) }))
	}
	row("streams at concurrency 1 / "+fmt.Sprint(o.streamConc), func(a string) string {
		return fmt.Sprintf("%d / %d", len(r.arm(a).ttft1), len(r.arm(a).ttft100))
	})
	row(fmt.Sprintf("proxy CPU per stream, concurrency %d", o.streamConc), func(a string) string {
		if a == "direct" {
			return "–"
		}
		return us(cpuPerRequest(r.arm(a).stream100))
	})
	row(fmt.Sprintf("… busy at concurrency %d", o.streamConc), func(a string) string { return busyCell(r.arm(a).stream100) })
	p("\n")

	// Memory.
	p("## Memory with %d concurrent streams (simulator at %v per token)\n\n", o.memStreams, o.memITL)
	p("| | reverseproxy | full |\n|---|---|---|\n")
	memRow := func(name string, cell func(m memResult) string) {
		p("| %s |", name)
		for _, a := range []string{"reverseproxy", "full"} {
			if m := r.arm(a).mem; m != nil {
				p(" %s |", cell(*m))
			} else {
				p(" – |")
			}
		}
		p("\n")
	}
	memRow("streams open at once", func(m memResult) string { return fmt.Sprint(m.opened) })
	memRow("idle RSS before", func(m memResult) string { return mib(m.idleRSS) })
	memRow("peak RSS (VmHWM)", func(m memResult) string { return mib(m.hwm) })
	memRow("per stream: (VmHWM − idle) / streams", func(m memResult) string { return kib(m.perStream()) })
	memRow("per stream: (highest sampled VmRSS − idle) / streams", func(m memResult) string { return kib(m.perStreamSampled()) })
	perStream := func(get func(goMem) int64) func(m memResult) string {
		return func(m memResult) string {
			if m.openGo == (goMem{}) {
				return "–"
			}
			return kib(float64(get(m.openGo)-get(m.idleGo)) / float64(max(m.opened, 1)))
		}
	}
	memRow("… of which Go heap in use, per stream", perStream(func(g goMem) int64 { return g.HeapInuse }))
	memRow("… of which goroutine stacks, per stream", perStream(func(g goMem) int64 { return g.StackInuse }))
	memRow("goroutines per stream", func(m memResult) string {
		if m.openGo == (goMem{}) {
			return "–"
		}
		return fmt.Sprintf("%.1f", float64(m.openGo.Goroutines-m.idleGo.Goroutines)/float64(max(m.opened, 1)))
	})
	p("\n")

	p("## How it was measured\n\n")
	p("- Each arm is its own process: `direct` is the upstream itself; `reverseproxy` is `httputil.ReverseProxy` on `proxy.NewTransport` (the floor); "+
		"`full` is `proxy.New` with a real caching token verifier, %d users (tokens used round-robin), an in-memory quota with Minute and Day windows that never refuse, "+
		"metrics on a registry and a Sink that counts charges; `noauth` is `proxy.New` with `DisableAuth` (no token, user or quota; parsing, relaying and metrics remain).\n", o.users)
	p("- Pinning (%s): every proxy on CPU 0; the upstream, the simulator and the load generator (CPUs %s) on CPU 1. Each Go process therefore runs with GOMAXPROCS=1.\n",
		r.pin.method(), f.generatorCPU)
	p("- %d rounds; in each, every phase runs on every arm, the arm order rotated by one each round; samples are pooled over rounds. "+
		"The generator writes precomputed HTTP/1.1 requests on keep-alive connections and parses answers by hand, so that CPU 1 is not the bottleneck.\n", o.rounds)
	p("- CPU per request: utime+stime of the proxy from /proc/<pid>/stat (10 ms ticks) around a fixed number of requests at fixed concurrency, " +
		"divided by the requests (all rounds summed).\n")
	p("- Added latency: the arm's percentile minus the direct arm's. Latency is from the request's write to the last byte of the answer; " +
		"the open-loop run sends on schedule (a new connection when none is idle), so slow answers do not slow the offered rate.\n")
	p("- Streams: requests send `stream:true` without `stream_options` (the full arm injects `include_usage` and strips the usage chunk again) and `ignore_eos`, " +
		"so each stream carries exactly the tokens asked for. Time to first token is to the first event carrying text; inter-chunk is between consecutive text events.\n")
	p("- Memory: a fresh proxy process, warmed by a few short streams, idle 1 s; then %d streams opened at once and held until all have received text, plus 1 s; "+
		"VmRSS sampled every 20 ms and VmHWM read from /proc/<pid>/status. The target uses VmHWM (the kernel's peak), the conservative figure. "+
		"The Go heap in use (from the arm's runtime.MemStats) counts whole buffers while RSS counts only the pages touched, so a long-lived process whose "+
		"buffers get reused (and zeroed) drifts from the RSS figure towards the heap one.\n", o.memStreams)
	p("- The run is INVALID, and latest.md left alone, when the direct arm does not achieve %d req/s within 5%% or any request of any arm fails, "+
		"or when the full arm's charges do not match the requests it served.\n", o.rate)

	p("\n### CPU per request by round\n\n| arm | non-streaming | streaming |\n|---|---|---|\n")
	for _, a := range arms[1:] {
		s := r.arm(a)
		rounds := func(xs []cpuSample) string {
			var parts []string
			for _, x := range xs {
				parts = append(parts, us(cpuPerRequest([]cpuSample{x})))
			}
			return strings.Join(parts, ", ")
		}
		p("| %s | %s | %s |\n", a, rounds(s.cpu), rounds(s.cpuStream))
	}
	return b.String()
}
