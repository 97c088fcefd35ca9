package reliability_test

import (
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"

	"github.com/llm-user-operator/llm-user-operator/internal/testutil/poll"
	"github.com/llm-user-operator/llm-user-operator/test/harness"
)

// echoPrompt is what the slow simulator echoes back a token at a time: 40
// words at 40ms a token make a response last about 1.7s.
var echoPrompt = strings.TrimSpace(strings.Repeat("the quick brown fox jumps over the lazy dog again ", 4))

// echoMaxTokens is above the echo's length, so that it is not cut short.
const echoMaxTokens = 64

// testRestart: a proxy that gets SIGTERM while streams and slow requests are
// in flight stops accepting, lets them all finish for the client, charges
// exactly what they reported, writes it to status and exits 0. A new proxy
// takes up from status and keeps counting exactly.
func (s *suite) testRestart(t *testing.T) {
	t.Parallel()
	const limit = 1_000_000
	a := s.NewAccount(t, harness.DayTokens(limit))
	// The first proxy's flush interval outlasts the test: everything it
	// charged reaches status through the flush on its way out, or not at all.
	first := s.StartProxy(t, "proxy-1", harness.ProxyConfig{Upstream: s.slow.URL,
		Flags: []string{"--flush-interval", "1h", "--shutdown-grace", "20s"}})
	c := harness.NewClient(first.BaseURL, a.APIKey())

	var l harness.Ledger
	const streams, plain = 6, 4
	sigterm := make(chan struct{})
	var afterSignal atomic.Int64 // streams that still sent content after SIGTERM
	var wg sync.WaitGroup
	t.Cleanup(wg.Wait) // no client may report after the test has ended
	for i := range streams {
		wg.Go(func() {
			params := chatParams(echoPrompt, echoMaxTokens)
			params.StreamOptions = openai.ChatCompletionStreamOptionsParam{IncludeUsage: openai.Bool(true)}
			stream := c.Chat.Completions.NewStreaming(t.Context(), params)
			var usage *openai.CompletionUsage
			late := false
			for stream.Next() {
				ch := stream.Current()
				if ch.JSON.Usage.Valid() {
					u := ch.Usage
					usage = &u
				}
				select {
				case <-sigterm:
					late = late || len(ch.Choices) > 0
				default:
				}
			}
			if err := stream.Err(); err != nil {
				t.Errorf("stream %d, in flight at SIGTERM: %v", i, err)
				return
			}
			if usage == nil {
				t.Errorf("stream %d, in flight at SIGTERM, ended without its usage chunk", i)
				return
			}
			checkUsage(t, "stream "+strconv.Itoa(i), *usage, true)
			l.Add(*usage)
			if late {
				afterSignal.Add(1)
			}
		})
	}
	for i := range plain {
		wg.Go(func() {
			res, err := c.Chat.Completions.New(t.Context(), chatParams(echoPrompt, echoMaxTokens))
			if err != nil {
				t.Errorf("request %d, in flight at SIGTERM: %v", i, err)
				return
			}
			checkUsage(t, "request "+strconv.Itoa(i), res.Usage, res.JSON.Usage.Valid())
			l.Add(res.Usage)
		})
	}
	// The slow simulator serves this test alone: when it runs them all,
	// every request is inside the proxy, past accept and reading, so the
	// shutdown cannot refuse any of them.
	poll.Until(t, 30*time.Second, func() error {
		running, _ := harness.Scrape(t, s.slow.URL+"/metrics").Value("vllm:num_requests_running")
		return poll.Check(running == streams+plain, "the simulator runs "+strconv.FormatFloat(running, 'f', -1, 64)+" requests, want "+strconv.Itoa(streams+plain))
	})
	if st := s.ReadStatus(t, a); st.Lifetime != nil {
		t.Fatalf("status holds usage before the shutdown (%s): the test cannot tell the final flush's work", harness.ToJSON(st.Lifetime))
	}

	close(sigterm)
	signalled := time.Now()
	exitErr := first.Terminate(t, 40*time.Second)
	exited := time.Since(signalled)
	wg.Wait()
	if exitErr != nil {
		t.Errorf("proxy exited with %v after SIGTERM, want status 0", exitErr)
	}
	if t.Failed() {
		return
	}
	// The process is gone, so its final flush is done: status must be exact
	// at once, without waiting.
	want := l.Total()
	harness.CheckCharged(t, s.ReadStatus(t, a), want)
	t.Logf("SIGTERM with %d streams and %d requests in flight (%d streams still sent content after it): exit 0 after %s; status %+v",
		streams, plain, afterSignal.Load(), exited.Round(time.Millisecond), want)

	// A new proxy on the same address seeds its in-process counters from
	// status: its first answer already counts what the old one charged.
	second := s.StartProxy(t, "proxy-2", harness.ProxyConfig{Listen: first.Listen, Upstream: s.slow.URL,
		Flags: []string{"--flush-interval", "1s", "--shutdown-grace", "20s"}})
	c = harness.NewClient(second.BaseURL, a.APIKey())
	var resp *http.Response
	res, err := c.Chat.Completions.New(t.Context(), chatParams(echoPrompt, echoMaxTokens), option.WithResponseInto(&resp))
	if err != nil {
		t.Fatalf("first request through the new proxy: %v", err)
	}
	checkUsage(t, "first request through the new proxy", res.Usage, res.JSON.Usage.Valid())
	l.Add(res.Usage)
	rem, err := strconv.ParseInt(resp.Header.Get("X-Ratelimit-Remaining-Tokens"), 10, 64)
	if err != nil || rem > limit-want.TotalTokens {
		t.Errorf("x-ratelimit-remaining-tokens = %q from the new proxy, want at most %d: it must count the %d tokens charged before the restart",
			resp.Header.Get("X-Ratelimit-Remaining-Tokens"), limit-want.TotalTokens, want.TotalTokens)
	}

	wg.Go(func() {
		params := chatParams(echoPrompt, echoMaxTokens)
		params.StreamOptions = openai.ChatCompletionStreamOptionsParam{IncludeUsage: openai.Bool(true)}
		stream := c.Chat.Completions.NewStreaming(t.Context(), params)
		for stream.Next() {
			if ch := stream.Current(); ch.JSON.Usage.Valid() {
				checkUsage(t, "stream through the new proxy", ch.Usage, true)
				l.Add(ch.Usage)
			}
		}
		if err := stream.Err(); err != nil {
			t.Errorf("stream through the new proxy: %v", err)
		}
	})
	wg.Go(func() {
		res, err := c.Chat.Completions.New(t.Context(), chatParams(echoPrompt, echoMaxTokens))
		if err != nil {
			t.Errorf("request through the new proxy: %v", err)
			return
		}
		checkUsage(t, "request through the new proxy", res.Usage, res.JSON.Usage.Valid())
		l.Add(res.Usage)
	})
	wg.Wait()
	if want := l.Total(); want.Requests != streams+plain+3 {
		t.Fatalf("the ledger counts %d requests, want %d", want.Requests, streams+plain+3)
	}
	s.WaitCharged(t, a, l.Total())
}
