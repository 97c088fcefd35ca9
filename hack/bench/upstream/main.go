// Command upstream is the benchmark's stand-in for an infinitely fast vLLM:
// it answers POST /v1/chat/completions with a fixed completion (usage
// included) or, when the body asks for "stream":true, with a fixed SSE stream
// of --chunks chunks, the usage chunk when stream_options.include_usage is
// set (as vLLM does), and [DONE]; GET /v1/models lists --model.
//
// It speaks just enough HTTP/1.1 by hand (keep-alive, Content-Length or
// chunked request bodies, precomputed responses) to cost a fraction of what a
// net/http server would: it shares a core with the load generator, and the
// less that core spends, the more surely the proxy under test is the
// bottleneck.
package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"syscall"
	"time"
)

func main() {
	var o options
	flag.StringVar(&o.listen, "listen", "127.0.0.1:0", "address to listen on (loopback only)")
	flag.StringVar(&o.model, "model", "bench/llama-3.1-8b", "the one model served")
	flag.IntVar(&o.chunks, "chunks", 16, "content chunks per streamed answer")
	flag.DurationVar(&o.chunkDelay, "chunk-delay", 0, "pause before each streamed chunk (0 sends the whole stream at once)")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, o, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "upstream:", err)
		os.Exit(1)
	}
}

type options struct {
	listen     string
	model      string
	chunks     int
	chunkDelay time.Duration
}

// run serves until ctx is done, after printing "listening <addr>" to ready.
func run(ctx context.Context, o options, ready io.Writer) error {
	if o.chunks < 1 {
		return errors.New("--chunks must be at least 1")
	}
	l, err := net.Listen("tcp", o.listen)
	if err != nil {
		return err
	}
	go func() { <-ctx.Done(); _ = l.Close() }()
	a := newAnswers(o)
	if _, err := fmt.Fprintf(ready, "listening %s\n", l.Addr()); err != nil {
		return err
	}
	for {
		c, err := l.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		go a.serve(c)
	}
}

// answers holds every response fully encoded, headers included.
type answers struct {
	models, chat, notFound, badRequest []byte
	// stream and streamUsage are whole chunked responses, one chunk each.
	stream, streamUsage []byte
	// streamHead, events, usageEvent and done are the parts of a paced
	// stream, each event already framed as an HTTP chunk.
	streamHead, usageEvent, done []byte
	events                       [][]byte
	delay                        time.Duration
}

const (
	chatBody = `{"id":"chatcmpl-bench","object":"chat.completion","created":1700000000,"model":%q,` +
		`"choices":[{"index":0,"message":{"role":"assistant","content":"Operators reconcile; quotas keep the cluster calm; tokens flow like streams."},` +
		`"logprobs":null,"finish_reason":"stop","stop_reason":null}],` +
		`"usage":{"prompt_tokens":42,"total_tokens":70,"completion_tokens":28,"prompt_tokens_details":null}}`
	chunkEvent = `data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1700000000,"model":%q,` +
		`"choices":[{"index":0,"delta":{"content":" tok%d"},"logprobs":null,"finish_reason":null}]}` + "\n\n"
	usageEvent = `data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1700000000,"model":%q,` +
		`"choices":[],"usage":{"prompt_tokens":42,"total_tokens":%d,"completion_tokens":%d}}` + "\n\n"
	doneEvent = "data: [DONE]\n\n"
)

func newAnswers(o options) *answers {
	whole := func(status, body string) []byte {
		return fmt.Appendf(nil, "HTTP/1.1 %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s",
			status, len(body), body)
	}
	a := &answers{
		models:     whole("200 OK", fmt.Sprintf(`{"object":"list","data":[{"id":%q,"object":"model","created":1700000000,"owned_by":"vllm","root":%q,"max_model_len":8192}]}`, o.model, o.model)),
		chat:       whole("200 OK", fmt.Sprintf(chatBody, o.model)),
		notFound:   whole("404 Not Found", `{"object":"error","message":"not found","type":"NotFoundError","code":404}`),
		badRequest: []byte("HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"),
		streamHead: []byte("HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\nCache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n"),
		delay:      o.chunkDelay,
	}
	var all []byte
	// The first chunk carries the role, as vLLM's does.
	first := fmt.Sprintf(`data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1700000000,"model":%q,`+
		`"choices":[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]}`+"\n\n", o.model)
	evs := []string{first}
	for i := range o.chunks {
		evs = append(evs, fmt.Sprintf(chunkEvent, o.model, i))
	}
	for _, ev := range evs {
		a.events = append(a.events, chunk(ev))
		all = append(all, ev...)
	}
	usage := fmt.Sprintf(usageEvent, o.model, 42+o.chunks, o.chunks)
	a.usageEvent = chunk(usage)
	a.done = append(chunk(doneEvent), "0\r\n\r\n"...)
	a.stream = append(append(append([]byte(nil), a.streamHead...), chunk(string(all)+doneEvent)...), "0\r\n\r\n"...)
	a.streamUsage = append(append(append([]byte(nil), a.streamHead...), chunk(string(all)+usage+doneEvent)...), "0\r\n\r\n"...)
	return a
}

// chunk frames s as one HTTP/1.1 chunk.
func chunk(s string) []byte { return fmt.Appendf(nil, "%x\r\n%s\r\n", len(s), s) }

var (
	streamTrue  = [][]byte{[]byte(`"stream":true`), []byte(`"stream": true`)}
	includeTrue = [][]byte{[]byte(`"include_usage":true`), []byte(`"include_usage": true`)}
)

func containsAny(b []byte, subs [][]byte) bool {
	for _, s := range subs {
		if bytes.Contains(b, s) {
			return true
		}
	}
	return false
}

// serve answers the requests of one connection until it closes or errs.
func (a *answers) serve(c net.Conn) {
	defer func() { _ = c.Close() }()
	br := bufio.NewReaderSize(c, 16<<10)
	bw := bufio.NewWriterSize(c, 16<<10)
	var body []byte
	for {
		req, err := readRequest(br, bw, body[:0])
		if err != nil {
			if !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) {
				_, _ = bw.Write(a.badRequest)
				_ = bw.Flush()
			}
			return
		}
		body = req.body
		switch {
		case req.method == "GET" && req.path == "/v1/models":
			_, _ = bw.Write(a.models)
		case req.method == "POST" && req.path == "/v1/chat/completions":
			if containsAny(body, streamTrue) {
				if err := a.writeStream(bw, containsAny(body, includeTrue)); err != nil {
					return
				}
			} else {
				_, _ = bw.Write(a.chat)
			}
		default:
			_, _ = bw.Write(a.notFound)
		}
		if err := bw.Flush(); err != nil || req.close {
			return
		}
	}
}

func (a *answers) writeStream(bw *bufio.Writer, usage bool) error {
	if a.delay <= 0 {
		if usage {
			_, err := bw.Write(a.streamUsage)
			return err
		}
		_, err := bw.Write(a.stream)
		return err
	}
	if _, err := bw.Write(a.streamHead); err != nil {
		return err
	}
	for _, ev := range a.events {
		if err := bw.Flush(); err != nil {
			return err
		}
		time.Sleep(a.delay)
		if _, err := bw.Write(ev); err != nil {
			return err
		}
	}
	if usage {
		if _, err := bw.Write(a.usageEvent); err != nil {
			return err
		}
	}
	_, err := bw.Write(a.done)
	return err
}

type request struct {
	method, path string
	body         []byte
	close        bool
}

var errMalformed = errors.New("malformed request")

// readRequest reads one request, its body appended to buf.
func readRequest(br *bufio.Reader, bw *bufio.Writer, buf []byte) (request, error) {
	line, err := br.ReadSlice('\n')
	if err != nil {
		if len(line) == 0 && errors.Is(err, io.EOF) {
			return request{}, io.EOF
		}
		return request{}, err
	}
	parts := bytes.SplitN(bytes.TrimRight(line, "\r\n"), []byte(" "), 3)
	if len(parts) != 3 {
		return request{}, errMalformed
	}
	req := request{method: string(parts[0]), path: string(parts[1]), close: string(parts[2]) == "HTTP/1.0"}
	length, chunked, expect := int64(0), false, false
	for {
		h, err := br.ReadSlice('\n')
		if err != nil {
			return request{}, err
		}
		h = bytes.TrimRight(h, "\r\n")
		if len(h) == 0 {
			break
		}
		k, v, ok := bytes.Cut(h, []byte(":"))
		if !ok {
			return request{}, errMalformed
		}
		v = bytes.TrimSpace(v)
		switch {
		case bytes.EqualFold(k, []byte("Content-Length")):
			if length, err = strconv.ParseInt(string(v), 10, 64); err != nil || length < 0 {
				return request{}, errMalformed
			}
		case bytes.EqualFold(k, []byte("Transfer-Encoding")):
			chunked = bytes.EqualFold(v, []byte("chunked"))
		case bytes.EqualFold(k, []byte("Connection")):
			if bytes.EqualFold(v, []byte("close")) {
				req.close = true
			} else if bytes.EqualFold(v, []byte("keep-alive")) {
				req.close = false
			}
		case bytes.EqualFold(k, []byte("Expect")):
			expect = bytes.EqualFold(v, []byte("100-continue"))
		}
	}
	if expect {
		_, _ = bw.WriteString("HTTP/1.1 100 Continue\r\n\r\n")
		if err := bw.Flush(); err != nil {
			return request{}, err
		}
	}
	if chunked {
		req.body, err = readChunked(br, buf)
		return req, err
	}
	if length > 16<<20 {
		return request{}, errMalformed
	}
	buf = slices.Grow(buf[:0], int(length))[:length]
	_, err = io.ReadFull(br, buf)
	req.body = buf
	return req, err
}

func readChunked(br *bufio.Reader, buf []byte) ([]byte, error) {
	for {
		line, err := br.ReadSlice('\n')
		if err != nil {
			return nil, err
		}
		size, _, _ := bytes.Cut(bytes.TrimRight(line, "\r\n"), []byte(";"))
		n, err := strconv.ParseInt(string(bytes.TrimSpace(size)), 16, 64)
		if err != nil || n < 0 || int64(len(buf))+n > 16<<20 {
			return nil, errMalformed
		}
		if n == 0 {
			for { // trailers, up to the empty line
				t, err := br.ReadSlice('\n')
				if err != nil {
					return nil, err
				}
				if len(bytes.TrimRight(t, "\r\n")) == 0 {
					return buf, nil
				}
			}
		}
		start := len(buf)
		buf = slices.Grow(buf, int(n))[:start+int(n)]
		if _, err := io.ReadFull(br, buf[start:]); err != nil {
			return nil, err
		}
		if _, err := br.Discard(2); err != nil {
			return nil, err
		}
	}
}
