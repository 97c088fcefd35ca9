// Command fairness is `make bench-fairness`: what the proxy's fair queue
// (proxy.fairQueue, internal/proxy/fairq.go) does for users sharing a busy
// model server, against the proxy without a gate (first come, first served
// inside the server), both in front of the same llm-d-inference-sim with a
// small --max-num-seqs, a realistic time to first token and inter-token
// latency, and --time-factor-under-load.
//
// Each arm is a fresh simulator and a fresh proxy (hack/bench/proxyarm, the
// full arm: real token verification, quotas, metering), on loopback:
//
//  1. the victim alone: one streamed request at a time; its time to first
//     token;
//  2. the victim beside a noisy user who keeps 50 long streams in flight;
//  3. eight backlogged users of unequal demand (2 to 9 streams in flight
//     each): Jain's fairness index of their output tokens per second, and
//     the total output tokens per second;
//  4. a user past a soft limit (overage: Demote), every request overflow:
//     at night (nobody else) against a user within quota alone, and by day
//     beside four backlogged users within quota: its share of the output.
//
// Results: bench/results/fairness-<UTC time>.md and fairness-latest.md.
package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

const model = "bench/fair-sim"

type options struct {
	bin, simulator, out string
	slots, reserved     int
	ttft, itl           time.Duration
	victimRequests      int
	window              time.Duration
}

func main() {
	var o options
	flag.StringVar(&o.bin, "bin", "bin", "directory with bench-proxyarm")
	flag.StringVar(&o.simulator, "simulator", os.Getenv("LLM_SIM_BINARY"), "llm-d-inference-sim binary")
	flag.StringVar(&o.out, "out", "bench/results", "where the report goes")
	flag.IntVar(&o.slots, "slots", 8, "the simulator's --max-num-seqs, and the fair arm's maxInFlight")
	flag.IntVar(&o.reserved, "reserved", 1, "the third arm's proxy.fairQueue.reservedSlots (0: no third arm)")
	flag.DurationVar(&o.ttft, "sim-ttft", 100*time.Millisecond, "simulator time to first token")
	flag.DurationVar(&o.itl, "sim-itl", 20*time.Millisecond, "simulator inter-token latency")
	flag.IntVar(&o.victimRequests, "victim-requests", 20, "the victim's requests in each of scenarios 1 and 2")
	flag.DurationVar(&o.window, "window", 20*time.Second, "how long scenario 3 measures")
	flag.Parse()
	if err := run(o); err != nil {
		fmt.Fprintln(os.Stderr, "bench-fairness:", err)
		os.Exit(1)
	}
}

// arm is one system under test: a simulator and a proxy in front of it.
type arm struct {
	name   string
	base   string // the proxy's /v1 base URL
	tokens []string
	procs  []*exec.Cmd
}

func (a *arm) stop() {
	for _, p := range slices.Backward(a.procs) {
		_ = p.Process.Signal(os.Interrupt)
		done := make(chan struct{})
		go func() { _ = p.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			_ = p.Process.Kill()
			<-done
		}
	}
}

type results struct {
	alone, noisy         []time.Duration // the victim's TTFTs
	perUser              []float64       // scenario 3: output tokens/s of each user
	throughput           float64         // scenario 3: all users' output tokens/s
	noisyTokensPerSecond float64
	// scenario 4: output tokens/s of a user within quota alone, of the
	// overflow user alone (night), and by day of the four users within
	// quota and of the overflow user beside them.
	soloInQuota, soloOverflow, dayInQuota, dayOverflow float64
}

func run(o options) error {
	if o.simulator == "" {
		return errors.New("--simulator (or LLM_SIM_BINARY) is required")
	}
	work, err := os.MkdirTemp("", "bench-fairness-")
	if err != nil {
		return err
	}
	defer func() { _ = os.RemoveAll(work) }()
	out := map[string]*results{}
	arms := []string{"fcfs", "fair"}
	if o.reserved > 0 {
		arms = append(arms, "reserved")
	}
	for _, name := range arms {
		r := &results{}
		// Each scenario on a fresh simulator and proxy: the simulator goes on
		// generating for requests whose client left, which would slow the
		// next scenario.
		for _, sc := range []func(options, *arm, *results) error{victimAlone, victimBesideNoisy, backlogged, soloInQuota, soloOverflow, overflowByDay} {
			a, err := startArm(o, name, work)
			if err != nil {
				return err
			}
			err = sc(o, a, r)
			a.stop()
			if err != nil {
				return fmt.Errorf("%s: %w", name, err)
			}
		}
		out[name] = r
	}
	report := render(o, out)
	fmt.Print(report)
	if err := os.MkdirAll(o.out, 0o755); err != nil {
		return err
	}
	stamp := time.Now().UTC().Format("20060102T150405Z")
	for _, f := range []string{"fairness-" + stamp + ".md", "fairness-latest.md"} {
		if err := os.WriteFile(filepath.Join(o.out, f), []byte(report), 0o644); err != nil {
			return err
		}
	}
	return nil
}

func startArm(o options, name, work string) (*arm, error) {
	a := &arm{name: name}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	simLog, err := os.Create(filepath.Join(work, name+"-sim.log"))
	if err != nil {
		return nil, err
	}
	sim := exec.Command(o.simulator, "--port", strconv.Itoa(port), "--model", model, "--force-dummy-tokenizer",
		"--mode", "random", "--max-num-seqs", strconv.Itoa(o.slots), "--max-model-len", "8192",
		"--time-to-first-token", o.ttft.String(), "--inter-token-latency", o.itl.String(),
		"--time-factor-under-load", "1.5")
	sim.Stdout, sim.Stderr = simLog, simLog
	if err := sim.Start(); err != nil {
		return nil, err
	}
	a.procs = append(a.procs, sim)
	upstream := "http://127.0.0.1:" + strconv.Itoa(port)
	if err := waitHTTP(upstream + "/v1/models"); err != nil {
		a.stop()
		return nil, fmt.Errorf("simulator: %w (see %s)", err, simLog.Name())
	}
	tokenFile := filepath.Join(work, name+"-tokens")
	// The last user is past a soft limit: its every request is overflow.
	args := []string{"--arm", "full", "--upstream", upstream, "--users", "16", "--soft-users", "1", "--token-file", tokenFile}
	switch name {
	case "fair":
		args = append(args, "--max-in-flight", strconv.Itoa(o.slots))
	case "reserved":
		args = append(args, "--max-in-flight", strconv.Itoa(o.slots), "--reserved-slots", strconv.Itoa(o.reserved))
	}
	px := exec.Command(filepath.Join(o.bin, "bench-proxyarm"), args...)
	px.Stderr = os.Stderr
	stdout, err := px.StdoutPipe()
	if err != nil {
		a.stop()
		return nil, err
	}
	if err := px.Start(); err != nil {
		a.stop()
		return nil, err
	}
	a.procs = append(a.procs, px)
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		a.stop()
		return nil, fmt.Errorf("proxy arm: %w", err)
	}
	var addrs struct{ Addr string }
	if err := json.Unmarshal([]byte(line), &addrs); err != nil {
		a.stop()
		return nil, fmt.Errorf("proxy arm said %q: %w", line, err)
	}
	go func() { _, _ = io.Copy(io.Discard, stdout) }()
	a.base = "http://" + addrs.Addr + "/v1"
	raw, err := os.ReadFile(tokenFile)
	if err != nil {
		a.stop()
		return nil, err
	}
	a.tokens = strings.Fields(string(raw))
	return a, nil
}

var client = &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 256}}

// victimAlone: one streamed request at a time, nobody else.
func victimAlone(o options, a *arm, r *results) error {
	say("%s: 1. the victim alone", a.name)
	victim := a.tokens[0]
	if _, _, err := stream(context.Background(), a.base, victim, 4, nil); err != nil { // warm up
		return err
	}
	for range o.victimRequests {
		ttft, _, err := stream(context.Background(), a.base, victim, 20, nil)
		if err != nil {
			return err
		}
		r.alone = append(r.alone, ttft)
	}
	return nil
}

// victimBesideNoisy: the same victim while a noisy user keeps 50 streams in
// flight, each of 20 to 180 output tokens (100 on average), so that they
// end at staggered times as real ones do.
func victimBesideNoisy(o options, a *arm, r *results) error {
	say("%s: 2. the victim beside 50 noisy streams", a.name)
	victim, noisy := a.tokens[0], a.tokens[1]
	if _, _, err := stream(context.Background(), a.base, victim, 4, nil); err != nil {
		return err
	}
	ctx, stop := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer wg.Wait()
	defer stop()
	var noisyTokens atomic.Int64
	var n atomic.Int64
	keep(ctx, &wg, 50, func() error {
		_, _, err := stream(ctx, a.base, noisy, 20+int(n.Add(37)%161), &noisyTokens)
		return err
	})
	time.Sleep(5 * time.Second) // the noisy streams fill the server and the queue
	began, before := time.Now(), noisyTokens.Load()
	for range o.victimRequests {
		ttft, _, err := stream(context.Background(), a.base, victim, 20, nil)
		if err != nil {
			return err
		}
		r.noisy = append(r.noisy, ttft)
	}
	r.noisyTokensPerSecond = float64(noisyTokens.Load()-before) / time.Since(began).Seconds()
	return nil
}

// backlogged: eight users keep 2 to 9 streams of 20 to 100 output tokens in
// flight each, all backlogged (a fair share is one slot each).
func backlogged(o options, a *arm, r *results) error {
	say("%s: 3. eight backlogged users of unequal demand, %s", a.name, o.window)
	ctx, stop := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer wg.Wait()
	defer stop()
	counts := make([]atomic.Int64, 8)
	var n atomic.Int64
	for u := range 8 {
		tok := a.tokens[2+u]
		keep(ctx, &wg, u+2, func() error {
			_, _, err := stream(ctx, a.base, tok, 20+int(n.Add(29)%81), &counts[u])
			return err
		})
	}
	time.Sleep(5 * time.Second) // every user backlogged
	start := make([]int64, 8)
	for u := range counts {
		start[u] = counts[u].Load()
	}
	began := time.Now()
	time.Sleep(o.window)
	secs := time.Since(began).Seconds()
	for u := range counts {
		x := float64(counts[u].Load()-start[u]) / secs
		r.perUser = append(r.perUser, x)
		r.throughput += x
	}
	return nil
}

// overflowUser is the index of the user past a soft limit (--soft-users 1
// of 16 users).
const overflowUser = 15

// soloInQuota: a user within quota alone keeps as many streams as the
// server has slots; its output tokens/s.
func soloInQuota(o options, a *arm, r *results) error {
	say("%s: 4a. a user within quota alone", a.name)
	var err error
	r.soloInQuota, err = alone(o, a, a.tokens[0])
	return err
}

// soloOverflow: the same load from the user past a soft limit, at night.
func soloOverflow(o options, a *arm, r *results) error {
	say("%s: 4b. a user past a soft limit alone (night)", a.name)
	var err error
	r.soloOverflow, err = alone(o, a, a.tokens[overflowUser])
	return err
}

func alone(o options, a *arm, tok string) (float64, error) {
	ctx, stop := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer wg.Wait()
	defer stop()
	var count atomic.Int64
	keep(ctx, &wg, o.slots, func() error {
		_, _, err := stream(ctx, a.base, tok, 100, &count)
		return err
	})
	time.Sleep(3 * time.Second)
	before, began := count.Load(), time.Now()
	time.Sleep(o.window / 2)
	return float64(count.Load()-before) / time.Since(began).Seconds(), nil
}

// overflowByDay: four users within quota keep four streams each (twice the
// server's slots) while the user past a soft limit keeps as many as there
// are slots; the output tokens/s of each side.
func overflowByDay(o options, a *arm, r *results) error {
	say("%s: 4c. a user past a soft limit beside four backlogged users within quota (day)", a.name)
	ctx, stop := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer wg.Wait()
	defer stop()
	var in, over atomic.Int64
	for u := range 4 {
		tok := a.tokens[2+u]
		keep(ctx, &wg, 4, func() error {
			_, _, err := stream(ctx, a.base, tok, 100, &in)
			return err
		})
	}
	time.Sleep(2 * time.Second) // the users within quota first: a working day
	keep(ctx, &wg, o.slots, func() error {
		_, _, err := stream(ctx, a.base, a.tokens[overflowUser], 100, &over)
		return err
	})
	time.Sleep(3 * time.Second)
	in0, over0, began := in.Load(), over.Load(), time.Now()
	time.Sleep(o.window / 2)
	secs := time.Since(began).Seconds()
	r.dayInQuota, r.dayOverflow = float64(in.Load()-in0)/secs, float64(over.Load()-over0)/secs
	return nil
}

// keep runs n loops of f until ctx ends; an error other than ctx's ends
// nothing (it is printed).
func keep(ctx context.Context, wg *sync.WaitGroup, n int, f func() error) {
	for range n {
		wg.Go(func() {
			for ctx.Err() == nil {
				if err := f(); err != nil && ctx.Err() == nil {
					say("request: %v", err)
					time.Sleep(100 * time.Millisecond)
				}
			}
		})
	}
}

// stream sends one streamed chat request of maxTokens output tokens (the
// simulator generates exactly that many with ignore_eos) and returns its
// time to the first content chunk and its content chunks, counting each
// into count as it arrives.
func stream(ctx context.Context, base, tok string, maxTokens int, count *atomic.Int64) (time.Duration, int, error) {
	body := fmt.Sprintf(`{"model":%q,"messages":[{"role":"user","content":"Tell me a long story about a lighthouse keeper."}],"max_tokens":%d,"ignore_eos":true,"stream":true}`, model, maxTokens)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, base+"/chat/completions", strings.NewReader(body))
	if err != nil {
		return 0, 0, err
	}
	req.Header.Set("Authorization", "Bearer "+tok)
	req.Header.Set("Content-Type", "application/json")
	sent := time.Now()
	resp, err := client.Do(req)
	if err != nil {
		return 0, 0, err
	}
	defer func() { _ = resp.Body.Close() }()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		return 0, 0, fmt.Errorf("%s: %s", resp.Status, b)
	}
	var ttft time.Duration
	chunks := 0
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Bytes()
		if !bytes.HasPrefix(line, []byte("data: {")) || !bytes.Contains(line, []byte(`"content":"`)) || bytes.Contains(line, []byte(`"content":""`)) {
			continue
		}
		if chunks == 0 {
			ttft = time.Since(sent)
		}
		chunks++
		if count != nil {
			count.Add(1)
		}
	}
	if err := sc.Err(); err != nil {
		return 0, 0, err
	}
	if chunks == 0 {
		return 0, 0, errors.New("no content")
	}
	return ttft, chunks, nil
}

func render(o options, out map[string]*results) string {
	fcfs, fair, res := out["fcfs"], out["fair"], out["reserved"]
	var b strings.Builder
	fmt.Fprintf(&b, "# make bench-fairness, %s\n\n", time.Now().UTC().Format(time.RFC3339))
	fmt.Fprintf(&b, "llm-d-inference-sim --max-num-seqs %d, time to first token %s, inter-token latency %s, --time-factor-under-load 1.5; "+
		"the proxy's full arm (hack/bench/proxyarm) without a gate (FCFS), with proxy.fairQueue.maxInFlight %d (fair)", o.slots, o.ttft, o.itl, o.slots)
	if res != nil {
		fmt.Fprintf(&b, " and with it and reservedSlots %d (reserved)", o.reserved)
	}
	fmt.Fprintf(&b, ". "+
		"%d victim requests of 20 output tokens in scenarios 1 and 2; the noisy user keeps 50 streams of 20 to 180 tokens in flight; "+
		"scenario 3 measures %s of eight users keeping 2 to 9 streams of 20 to 100 tokens in flight each; "+
		"scenario 4 measures %s of a user past a soft limit (every request overflow) keeping %d streams of 100 tokens, alone (night) and beside four users within quota keeping 4 each (day). "+
		"Each scenario runs on a fresh simulator and proxy.\n\n",
		o.victimRequests, o.window, o.window/2, o.slots)

	// cols formats a figure of each gated arm; judge gives each arm's verdict.
	gated := []*results{fair}
	head := "| figure | FCFS | fair queue |"
	if res != nil {
		gated = append(gated, res)
		head += fmt.Sprintf(" fair queue, %d reserved |", o.reserved)
	}
	cols := func(f func(*results) string) string {
		var parts []string
		for _, r := range gated {
			parts = append(parts, f(r))
		}
		return strings.Join(parts, " | ")
	}
	judge := func(ok func(*results) bool) string {
		var parts []string
		for _, r := range gated {
			parts = append(parts, verdict(ok(r)))
		}
		return strings.Join(parts, " / ")
	}
	b.WriteString(head + " target | result |\n|---|---|---|" + strings.Repeat("---|", len(gated)+1) + "\n")
	row := func(name, fcfsValue string, f func(*results) string, target string, ok func(*results) bool) {
		result := ""
		if ok != nil {
			result = judge(ok)
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %s |\n", name, fcfsValue, cols(f), target, result)
	}
	p99alone := func(r *results) time.Duration { return percentile(r.alone, 0.99) }
	row("victim TTFT p50, alone", ms(percentile(fcfs.alone, 0.5)), func(r *results) string { return ms(percentile(r.alone, 0.5)) }, "", nil)
	row("victim TTFT p99, alone", ms(p99alone(fcfs)), func(r *results) string { return ms(p99alone(r)) }, "", nil)
	row("victim TTFT p50, beside the noisy user", ms(percentile(fcfs.noisy, 0.5)), func(r *results) string { return ms(percentile(r.noisy, 0.5)) }, "", nil)
	row("victim TTFT p99, beside the noisy user", ms(percentile(fcfs.noisy, 0.99)), func(r *results) string {
		return fmt.Sprintf("%s (%.2f × alone)", ms(percentile(r.noisy, 0.99)), float64(percentile(r.noisy, 0.99))/float64(p99alone(r)))
	}, "≤ 1.5 × alone", func(r *results) bool { return float64(percentile(r.noisy, 0.99)) <= 1.5*float64(p99alone(r)) })
	row("noisy user's output tokens/s meanwhile", fmt.Sprintf("%.0f", fcfs.noisyTokensPerSecond), func(r *results) string { return fmt.Sprintf("%.0f", r.noisyTokensPerSecond) }, "", nil)
	row("Jain's index, 8 backlogged users of equal weight", fmt.Sprintf("%.3f", jain(fcfs.perUser)), func(r *results) string { return fmt.Sprintf("%.3f", jain(r.perUser)) },
		"≥ 0.95", func(r *results) bool { return jain(r.perUser) >= 0.95 })
	row("output tokens/s, 8 users", fmt.Sprintf("%.0f", fcfs.throughput), func(r *results) string {
		return fmt.Sprintf("%.0f (%.1f %% of FCFS)", r.throughput, 100*r.throughput/fcfs.throughput)
	}, "≥ 95 % of FCFS", func(r *results) bool { return r.throughput/fcfs.throughput >= 0.95 })
	row("4. night: output tokens/s past a soft limit, alone (within quota, alone)", fmt.Sprintf("%.0f (%.0f)", fcfs.soloOverflow, fcfs.soloInQuota), func(r *results) string {
		return fmt.Sprintf("%.0f (%.0f, %.1f %%)", r.soloOverflow, r.soloInQuota, 100*r.soloOverflow/r.soloInQuota)
	}, "≥ 95 % of within quota", func(r *results) bool { return r.soloOverflow/r.soloInQuota >= 0.95 })
	row("4. night: within quota alone, against FCFS", "100 %", func(r *results) string {
		return fmt.Sprintf("%.1f %%", 100*r.soloInQuota/fcfs.soloInQuota)
	}, "", nil)
	share := func(r *results) float64 { return r.dayOverflow / (r.dayOverflow + r.dayInQuota) }
	row("4. day: overflow's share of the output beside 4 backlogged users within quota", fmt.Sprintf("%.1f %%", 100*share(fcfs)), func(r *results) string {
		return fmt.Sprintf("%.1f %%", 100*share(r))
	}, "≤ 5 %", func(r *results) bool { return share(r) <= 0.05 })
	row("4. day: output tokens/s within quota (overflow)", fmt.Sprintf("%.0f (%.0f)", fcfs.dayInQuota, fcfs.dayOverflow), func(r *results) string {
		return fmt.Sprintf("%.0f (%.0f)", r.dayInQuota, r.dayOverflow)
	}, "", nil)
	b.WriteString("\nOutput tokens/s of each of the eight users (demand 2 to 9 streams):\n\n" + strings.Replace(head, "figure", "user", 1) + "\n|---|---|" + strings.Repeat("---|", len(gated)) + "\n")
	for u := range fair.perUser {
		fmt.Fprintf(&b, "| %d (demand %d) | %.1f | %s |\n", u, u+2, fcfs.perUser[u], cols(func(r *results) string { return fmt.Sprintf("%.1f", r.perUser[u]) }))
	}
	return b.String()
}

func verdict(ok bool) string {
	if ok {
		return "PASS"
	}
	return "MISS"
}

func ms(d time.Duration) string { return strconv.FormatFloat(float64(d)/1e6, 'f', 1, 64) + " ms" }

func percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	i := int(math.Ceil(p*float64(len(s)))) - 1
	return s[max(0, min(i, len(s)-1))]
}

// jain is Jain's fairness index: 1 when every x is equal, 1/n when one
// takes everything.
func jain(xs []float64) float64 {
	var sum, sq float64
	for _, x := range xs {
		sum += x
		sq += x * x
	}
	if sq == 0 {
		return 0
	}
	return sum * sum / (float64(len(xs)) * sq)
}

func say(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "bench-fairness: "+format+"\n", args...)
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer func() { _ = l.Close() }()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func waitHTTP(url string) error {
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get(url)
		if err == nil {
			_ = resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s did not answer within 30s: %w", url, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
