package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"time"
)

// conn is one keep-alive HTTP/1.1 client connection. The load generator
// speaks HTTP by hand, writing precomputed requests and parsing only what it
// needs of the answer, because it shares a core with the upstream: a
// net/http client would cost that core about as much as the proxy under test
// costs its own, and the throughput measured would be the generator's.
type conn struct {
	c  net.Conn
	br *bufio.Reader
}

func dial(addr string) (*conn, error) {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return nil, err
	}
	return &conn{c: c, br: bufio.NewReaderSize(c, 8<<10)}, nil
}

func (c *conn) close() { _ = c.c.Close() }

// request encodes a POST of body to path with the given bearer token.
func request(host, path, tok string, body []byte) []byte {
	return fmt.Appendf(nil, "POST %s HTTP/1.1\r\nHost: %s\r\nAuthorization: Bearer %s\r\n"+
		"Content-Type: application/json\r\nAccept: */*\r\nContent-Length: %d\r\n\r\n%s",
		path, host, tok, len(body), body)
}

// head is what the generator reads of a response's head.
type head struct {
	status  int
	length  int64 // -1 when not given
	chunked bool
	close   bool
}

var errProtocol = errors.New("malformed HTTP response")

func (c *conn) readHead() (head, error) {
	h := head{length: -1}
	line, err := c.br.ReadSlice('\n')
	if err != nil {
		return h, err
	}
	// "HTTP/1.1 200 OK\r\n"
	if len(line) < 12 || !bytes.HasPrefix(line, []byte("HTTP/1.")) {
		return h, errProtocol
	}
	if h.status, err = strconv.Atoi(string(line[9:12])); err != nil {
		return h, errProtocol
	}
	h.close = line[7] == '0'
	for {
		line, err = c.br.ReadSlice('\n')
		if err != nil {
			return h, err
		}
		line = bytes.TrimRight(line, "\r\n")
		if len(line) == 0 {
			return h, nil
		}
		k, v, ok := bytes.Cut(line, []byte(":"))
		if !ok {
			return h, errProtocol
		}
		v = bytes.TrimSpace(v)
		switch {
		case bytes.EqualFold(k, []byte("Content-Length")):
			if h.length, err = strconv.ParseInt(string(v), 10, 64); err != nil {
				return h, errProtocol
			}
		case bytes.EqualFold(k, []byte("Transfer-Encoding")):
			h.chunked = bytes.EqualFold(v, []byte("chunked"))
		case bytes.EqualFold(k, []byte("Connection")):
			h.close = bytes.EqualFold(v, []byte("close"))
		}
	}
}

// do sends req and reads the whole answer, returning its status and body
// size. After an error or a "Connection: close" the conn must be dropped
// (reusable is false).
func (c *conn) do(req []byte, timeout time.Duration) (status int, n int64, reusable bool, err error) {
	_ = c.c.SetDeadline(time.Now().Add(timeout))
	if _, err = c.c.Write(req); err != nil {
		return 0, 0, false, err
	}
	h, err := c.readHead()
	if err != nil {
		return 0, 0, false, err
	}
	n, err = c.body(h, nil)
	return h.status, n, err == nil && !h.close && (h.length >= 0 || h.chunked), err
}

// body reads the body framed as h says, handing each piece to fn (when not
// nil) as soon as it has arrived.
func (c *conn) body(h head, fn func([]byte)) (int64, error) {
	switch {
	case h.chunked:
		var total int64
		for {
			line, err := c.br.ReadSlice('\n')
			if err != nil {
				return total, err
			}
			size, _, _ := bytes.Cut(bytes.TrimRight(line, "\r\n"), []byte(";"))
			n, err := strconv.ParseInt(string(bytes.TrimSpace(size)), 16, 64)
			if err != nil || n < 0 {
				return total, errProtocol
			}
			if n == 0 {
				for {
					t, err := c.br.ReadSlice('\n')
					if err != nil {
						return total, err
					}
					if len(bytes.TrimRight(t, "\r\n")) == 0 {
						return total, nil
					}
				}
			}
			if err := c.piece(n, fn); err != nil {
				return total, err
			}
			total += n
			if _, err := c.br.Discard(2); err != nil {
				return total, err
			}
		}
	case h.length >= 0:
		return h.length, c.piece(h.length, fn)
	default: // until the server closes
		var total int64
		for {
			b, err := c.br.Peek(1)
			if len(b) == 0 {
				if errors.Is(err, io.EOF) {
					return total, nil
				}
				return total, err
			}
			n := int64(c.br.Buffered())
			if err := c.piece(n, fn); err != nil {
				return total, err
			}
			total += n
		}
	}
}

// piece consumes n body bytes, passing them to fn as they are read.
func (c *conn) piece(n int64, fn func([]byte)) error {
	if fn == nil {
		_, err := c.br.Discard(int(n))
		return err
	}
	for n > 0 {
		if _, err := c.br.Peek(1); err != nil {
			return err
		}
		b, _ := c.br.Peek(int(min(n, int64(c.br.Buffered()))))
		fn(b)
		_, _ = c.br.Discard(len(b))
		n -= int64(len(b))
	}
	return nil
}

// streamResult is one streamed answer as the client saw it.
type streamResult struct {
	status int
	// ttft is from the request's write to the arrival of the first event
	// carrying generated text.
	ttft time.Duration
	// gaps are the times between consecutive events carrying text.
	gaps []time.Duration
	// events counts every data event; done is true when [DONE] arrived.
	events int
	done   bool
}

var (
	contentKey = []byte(`"content":"`)
	doneData   = []byte("data: [DONE]")
)

// stream sends req and reads an SSE answer event by event, timing the
// events that carry text. started, when not nil, is called once the first
// such event has arrived.
func (c *conn) stream(req []byte, timeout time.Duration, started func()) (streamResult, error) {
	var r streamResult
	_ = c.c.SetDeadline(time.Now().Add(timeout))
	sent := time.Now()
	if _, err := c.c.Write(req); err != nil {
		return r, err
	}
	h, err := c.readHead()
	if err != nil {
		return r, err
	}
	r.status = h.status
	var (
		buf  []byte
		last time.Time
	)
	_, err = c.body(h, func(b []byte) {
		now := time.Now()
		buf = append(buf, b...)
		off := 0
		for {
			i := bytes.Index(buf[off:], []byte("\n\n"))
			if i < 0 {
				break
			}
			ev := buf[off : off+i]
			off += i + 2
			if !bytes.HasPrefix(ev, []byte("data:")) {
				continue
			}
			r.events++
			if bytes.Equal(ev, doneData) {
				r.done = true
				continue
			}
			if j := bytes.Index(ev, contentKey); j < 0 || j+len(contentKey) >= len(ev) || ev[j+len(contentKey)] == '"' {
				continue // no text: the role chunk, the finish chunk, usage
			}
			if last.IsZero() {
				r.ttft = now.Sub(sent)
				if started != nil {
					started()
				}
			} else {
				r.gaps = append(r.gaps, now.Sub(last))
			}
			last = now
		}
		buf = buf[:copy(buf, buf[off:])]
	})
	return r, err
}
