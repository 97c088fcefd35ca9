package proxy

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/llm-user-operator/llm-user-operator/internal/quota"
	"github.com/llm-user-operator/llm-user-operator/internal/testutil/poll"
)

func TestStreamingByteExact(t *testing.T) {
	upstreamEvents := strings.Join(streamEvents, "")
	// What a client asking for continuous usage sees: every data chunk
	// with the usage so far, as vLLM sends it.
	continuousEvents := ""
	n := 0
	for _, ev := range streamEvents {
		if strings.HasPrefix(ev, "data: {") {
			if !strings.Contains(ev, `"content":""`) {
				n++
			}
			ev = withUsage(ev, 12, n)
		}
		continuousEvents += ev
	}
	for _, tc := range []struct {
		name, body string
		// clientSees is what the client must receive, byte for byte.
		clientSees string
		// sent is what the upstream must receive.
		sent string
	}{
		{"usage forced and hidden", `{"model":"m","messages":[],"stream":true}`,
			upstreamEvents + doneEvent,
			`{"model":"m","messages":[],"stream":true,"stream_options":{"include_usage":true,"continuous_usage_stats":true}}`},
		{"stream_options null", `{"model":"m","messages":[],"stream":true,"stream_options":null}`,
			upstreamEvents + doneEvent,
			`{"model":"m","messages":[],"stream":true,"stream_options":{"include_usage":true,"continuous_usage_stats":true}}`},
		{"other stream_options kept", `{"model":"m","messages":[],"stream":"true","stream_options":{"continuous_usage_stats":false,"keep":1}}`,
			upstreamEvents + doneEvent,
			`{"model":"m","messages":[],"stream":"true","stream_options":{"include_usage":true,"continuous_usage_stats":true,"keep":1}}`},
		{"include_usage false", `{"model":"m","messages":[],"stream":true,"stream_options":{"include_usage":false}}`,
			upstreamEvents + doneEvent,
			`{"model":"m","messages":[],"stream":true,"stream_options":{"continuous_usage_stats":true,"include_usage":true}}`},
		{"client asked for the final usage", `{"model":"m","messages":[],"stream":true,"stream_options":{"include_usage":true}}`,
			upstreamEvents + usageEvent + doneEvent,
			`{"model":"m","messages":[],"stream":true,"stream_options":{"continuous_usage_stats":true,"include_usage":true}}`},
		{"client asked for all usage", `{"model":"m","messages":[],"stream":true,"stream_options":{"include_usage":true,"continuous_usage_stats":true}}`,
			continuousEvents + usageEvent + doneEvent,
			`{"model":"m","messages":[],"stream":true,"stream_options":{"include_usage":true,"continuous_usage_stats":true}}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, nil, newUpstream(t, "m"))
			resp := e.do(t, "POST", "/v1/chat/completions", tc.body)
			expectStatus(t, resp, 200)
			if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/event-stream") {
				t.Errorf("Content-Type = %q", ct)
			}
			if got := string(readAll(t, resp)); got != tc.clientSees {
				t.Errorf("client saw:\n%q\nwant:\n%q", got, tc.clientSees)
			}
			if sent := string(e.ups[0].last(t).body); sent != tc.sent {
				t.Errorf("upstream got %s\nwant          %s", sent, tc.sent)
			}
			if c := e.sink.wait(t); c.Amount != (quota.Amount{Requests: 1, InputTokens: 12, OutputTokens: 4}) {
				t.Errorf("charge = %+v", c.Amount)
			}
		})
	}
}

// streamingUpstream sends the role chunk and n content chunks, then waits
// for the request to end, or calls after.
func streamingUpstream(t *testing.T, n int, after func(w http.ResponseWriter)) *fakeUpstream {
	up := newUpstream(t, "m")
	up.handle = func(w http.ResponseWriter, r *http.Request, body []byte) {
		w.Header().Set("Content-Type", "text/event-stream")
		for i := 0; i <= n; i++ {
			io.WriteString(w, streamEvents[min(i, 1)])
			w.(http.Flusher).Flush()
		}
		if after != nil {
			after(w)
			return
		}
		<-r.Context().Done()
	}
	return up
}

// readEvents reads n events from an SSE body.
func readEvents(t *testing.T, r io.Reader, n int) {
	t.Helper()
	br := bufio.NewReader(r)
	for seen := 0; seen < n; {
		line, err := br.ReadString('\n')
		if err != nil {
			t.Fatalf("after %d events: %v", seen, err)
		}
		if line == "\n" {
			seen++
		}
	}
}

const streamReq = `{"model":"m","messages":[{"role":"user","content":"` + "Tell me a story about a proxy that counted every token it saw" + `"}],"stream":true}`

// streamReqInput is the prompt estimate of streamReq: its messages are 91
// bytes, 91/4 + 8 tokens.
const streamReqInput = 30

func expectInterruptedCharge(t *testing.T, e *env, want quota.Amount) {
	t.Helper()
	if c := e.sink.wait(t); c.Amount != want {
		t.Errorf("charge = %+v, want %+v", c.Amount, want)
	}
	// The reservation was settled: nothing stays reserved.
	poll.Until(t, 5*time.Second, func() error {
		st, _ := e.mem.Status(t.Context(), aliceUser().Budgets[0])
		return poll.Check(st[0].Reserved.IsZero() && st[0].Used == want,
			fmt.Sprintf("window = used %+v reserved %+v", st[0].Used, st[0].Reserved))
	})
}

func TestStreamClientDisconnectCharged(t *testing.T) {
	e := newEnv(t, nil, streamingUpstream(t, 3, nil))
	ctx, cancel := context.WithCancel(t.Context())
	req, _ := http.NewRequestWithContext(ctx, "POST", e.srv.URL+"/v1/chat/completions", strings.NewReader(streamReq))
	req.Header.Set("Authorization", "Bearer "+alice)
	resp, err := e.srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	readEvents(t, resp.Body, 4) // role chunk + 3 content chunks
	cancel()
	resp.Body.Close()
	expectInterruptedCharge(t, e, quota.Amount{Requests: 1, InputTokens: streamReqInput, OutputTokens: 4})
}

func TestStreamUpstreamDiesCharged(t *testing.T) {
	up := streamingUpstream(t, 2, func(w http.ResponseWriter) {
		conn, _, err := http.NewResponseController(w).Hijack()
		if err != nil {
			t.Error(err)
			return
		}
		conn.Close()
	})
	e := newEnv(t, nil, up)
	resp := e.do(t, "POST", "/v1/chat/completions", streamReq)
	expectStatus(t, resp, 200)
	b, err := io.ReadAll(resp.Body)
	if err == nil {
		t.Errorf("client saw a clean end of a broken stream: %q", b)
	}
	if got := bytes.Count(b, []byte("\n\n")); got != 3 {
		t.Errorf("client got %d events before the break, want 3", got)
	}
	expectInterruptedCharge(t, e, quota.Amount{Requests: 1, InputTokens: streamReqInput, OutputTokens: 3})
}

func TestStreamIdleTimeout(t *testing.T) {
	e := newEnv(t, func(o *Options) { o.Timeouts.StreamIdle = 50 * time.Millisecond }, streamingUpstream(t, 1, nil))
	resp := e.do(t, "POST", "/v1/chat/completions", streamReq)
	expectStatus(t, resp, 200)
	if _, err := io.ReadAll(resp.Body); err == nil {
		t.Error("an idle stream ended cleanly")
	}
	expectInterruptedCharge(t, e, quota.Amount{Requests: 1, InputTokens: streamReqInput, OutputTokens: 2})
}

func TestResponsesStreamUsage(t *testing.T) {
	up := newUpstream(t, "m")
	events := "event: response.created\ndata: {\"type\":\"response.created\",\"response\":{\"id\":\"r1\",\"usage\":null}}\n\n" +
		"event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"delta\":\"Hi\"}\n\n" +
		"event: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{\"id\":\"r1\",\"usage\":{\"input_tokens\":9,\"output_tokens\":3,\"total_tokens\":12}}}\n\n"
	up.handle = func(w http.ResponseWriter, r *http.Request, body []byte) {
		w.Header().Set("Content-Type", "text/event-stream")
		io.WriteString(w, events)
	}
	e := newEnv(t, nil, up)
	resp := e.do(t, "POST", "/v1/responses", `{"model":"m","input":"hi","stream":true}`)
	expectStatus(t, resp, 200)
	if got := string(readAll(t, resp)); got != events {
		t.Errorf("client saw %q", got)
	}
	if string(up.last(t).body) != `{"model":"m","input":"hi","stream":true,"request_id":"resp_`+resp.Header.Get("X-Request-Id")+`"}` {
		t.Errorf("responses body edited: %s", up.last(t).body)
	}
	if c := e.sink.wait(t); c.Amount != (quota.Amount{Requests: 1, InputTokens: 9, OutputTokens: 3}) {
		t.Errorf("charge = %+v", c.Amount)
	}
}

// TestStreamClientClosesAfterDone reproduces what the OpenAI SDKs do: close the
// connection as soon as data: [DONE] arrives, while the upstream has not yet
// ended its response. The generation was complete, so the request is a 200
// charged exactly the reported usage, not an interruption.
func TestStreamClientClosesAfterDone(t *testing.T) {
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	up := newUpstream(t, "m")
	up.handle = func(w http.ResponseWriter, r *http.Request, body []byte) {
		w.Header().Set("Content-Type", "text/event-stream")
		io.WriteString(w, "data: {\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\"}}]}\n\n"+
			"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"}}]}\n\n"+
			"data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n"+
			"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":1,\"total_tokens\":8}}\n\n"+
			"data: [DONE]\n\n")
		http.NewResponseController(w).Flush()
		select { // hold the response open, as a slow upstream would
		case <-release:
		case <-r.Context().Done():
		}
	}
	e := newEnv(t, nil, up)
	ctx, cancel := context.WithCancel(t.Context())
	req, _ := http.NewRequestWithContext(ctx, "POST", e.srv.URL+"/v1/chat/completions", strings.NewReader(`{"model":"m","messages":[],"stream":true}`))
	req.Header.Set("Authorization", "Bearer "+alice)
	resp, err := e.srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	readEvents(t, resp.Body, 4) // role, content, finish, [DONE]: the usage chunk was stripped
	cancel()
	resp.Body.Close()
	if c := e.sink.wait(t); c.Amount != (quota.Amount{Requests: 1, InputTokens: 7, OutputTokens: 1}) {
		t.Errorf("charged %+v, want exactly the reported usage", c.Amount)
	}
}
