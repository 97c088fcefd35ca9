package proxy

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
)

// pieces is a reader that hands out data in reads of the given sizes (then
// whatever is left at once), the way a network delivers a stream.
type pieces struct {
	data  []byte
	sizes []int
}

func (p *pieces) Read(b []byte) (int, error) {
	if len(p.data) == 0 {
		return 0, io.EOF
	}
	n := len(p.data)
	if len(p.sizes) > 0 {
		n = min(max(p.sizes[0], 1), n)
		p.sizes = p.sizes[1:]
	}
	n = copy(b, p.data[:n])
	p.data = p.data[n:]
	return n, nil
}

// tapAll runs data through a real sseTap, delivered in pieces, and returns
// what reached the client, the events inspect saw, and how many events
// were too large to inspect. inspect, when not nil, decides each event.
func tapAll(t testing.TB, data []byte, sizes []int, inspect func(ev []byte, plain bool) tapAction) (out []byte, events []string, oversized int) {
	var dst bytes.Buffer
	tap := newSSETap(&dst, func(ev []byte, plain bool) tapAction {
		events = append(events, string(ev))
		if inspect != nil {
			return inspect(ev, plain)
		}
		return tapAction{}
	})
	defer tap.release()
	r := &pieces{data: data, sizes: sizes}
	for {
		_, rerr, werr := tap.readFrom(r)
		if werr != nil {
			t.Fatalf("write: %v", werr)
		}
		if errors.Is(rerr, io.EOF) {
			break
		}
		if rerr != nil {
			t.Fatalf("read: %v", rerr)
		}
	}
	return dst.Bytes(), events, tap.oversized
}

func TestSSEFraming(t *testing.T) {
	in := "data: a\n\n" + "data: b\r\ndata: c\r\n\r\n" + ": comment\n\n" + "event: x\rdata:d\r\r\n" + "\n" + "data: [DONE]\n\n" + "data: tail"
	// The lone "\n" after it is an empty event of its own.
	// "\r\r\n" is CR ending a line, then CRLF ending the empty line.
	want := []string{"data: a\n\n", "data: b\r\ndata: c\r\n\r\n", ": comment\n\n", "event: x\rdata:d\r\r\n", "\n", "data: [DONE]\n\n", "data: tail"}
	ones := make([]int, len(in))
	for i := range ones {
		ones[i] = 1
	}
	for _, sizes := range [][]int{nil, ones, {9, 11, 3}} {
		out, got, _ := tapAll(t, []byte(in), sizes, nil)
		if strings.Join(got, "|") != strings.Join(want, "|") {
			t.Errorf("sizes %v: events %q\nwant %q", sizes, got, want)
		}
		if string(out) != in {
			t.Errorf("sizes %v: relayed %q, want the input unchanged", sizes, out)
		}
	}
	data := map[string]string{"data: a\n\n": "a", "data: b\r\ndata: c\r\n\r\n": "b\nc", "event: x\rdata:d\r\r": "d", "data\n\n": ""}
	for ev, want := range data {
		_, plain := sseEvent([]byte(ev), true)
		got, has, _ := sseData([]byte(ev), plain, nil)
		if !has || string(got) != want {
			t.Errorf("sseData(%q) = %q, %v; want %q", ev, got, has, want)
		}
	}
	if _, has, _ := sseData([]byte(": c\n\n"), true, nil); has {
		t.Error("comment has data")
	}
}

func TestTapDropsAndCuts(t *testing.T) {
	in := "data: {\"choices\":[{\"x\":1}],\"usage\":{\"prompt_tokens\":1}}\n\n" + "data: keep\n\n" + "data: drop\n\n" + "data: [DONE]\n\n"
	out, _, _ := tapAll(t, []byte(in), []int{7, 30, 5}, func(ev []byte, plain bool) tapAction {
		switch {
		case bytes.Contains(ev, []byte("drop")):
			return tapAction{drop: true}
		case bytes.Contains(ev, []byte("usage")):
			i := bytes.Index(ev, []byte(`,"usage"`))
			return tapAction{cutStart: i, cutEnd: len(ev) - 3}
		}
		return tapAction{}
	})
	const want = "data: {\"choices\":[{\"x\":1}]}\n\n" + "data: keep\n\n" + "data: [DONE]\n\n"
	if string(out) != want {
		t.Errorf("relayed %q\nwant    %q", out, want)
	}
}

// TestTapOversizedEvent: an event too large to inspect is passed on as it
// arrives, and the events after it are inspected again, whatever its line
// ends and however the bytes arrive.
func TestTapOversizedEvent(t *testing.T) {
	usage := "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":6000,\"completion_tokens\":4000}}\n\n"
	for _, end := range []string{"\n\n", "\r\n\r\n", "\r\r", "\n\r\n"} {
		for _, size := range []int{maxTapEvent - 1, maxTapEvent, maxTapEvent + 1, 4 * maxTapEvent, 5 << 20} {
			big := "data: {\"choices\":[{\"text\":\"" + strings.Repeat("x", size) + "\"}]}" + end
			in := "data: first\n\n" + big + usage + "data: [DONE]\n\n"
			for _, sizes := range [][]int{nil, {3, 4096, 1, 70000, 2}} {
				out, events, oversized := tapAll(t, []byte(in), sizes, nil)
				if string(out) != in {
					t.Fatalf("size %d end %q: relayed %d bytes, want the %d of the input unchanged", size, end, len(out), len(in))
				}
				wantOver := 0
				if len(big) > maxTapEvent {
					wantOver = 1
				}
				if oversized != wantOver {
					t.Errorf("size %d end %q sizes %v: %d oversized events, want %d", size, end, sizes, oversized, wantOver)
				}
				if n := len(events); n < 3 || events[n-2] != usage || events[n-1] != "data: [DONE]\n\n" {
					t.Errorf("size %d end %q sizes %v: the events after it were not inspected: %d events, last %q", size, end, sizes, n, events[max(n-2, 0):])
				}
			}
		}
	}
}

func TestEventEnd(t *testing.T) {
	for _, tc := range []struct {
		in   string
		n    int
		done bool
	}{
		{"data: x\n\nrest", 9, true},
		{"data: x\r\n\r\nrest", 11, true},
		{"data: x\r\rrest", 9, true},
		{"data: x\n\r\nrest", 10, true},
		{"data: x\r\n\nrest", 10, true},
		{"\nrest", 1, true},
		{"data: x\ndata: y\n", 16, false},
		{"data: x\r\n", 9, false},
		{"data: x", 7, false},
	} {
		var e eventEnd
		n, done := e.scan([]byte(tc.in))
		if n != tc.n || done != tc.done {
			t.Errorf("scan(%q) = %d, %v; want %d, %v", tc.in, n, done, tc.n, tc.done)
		}
		// Byte by byte, the end is found at the same place.
		var f eventEnd
		for i := range len(tc.in) {
			m, d := f.scan([]byte(tc.in[i : i+1]))
			if d {
				if i+m != tc.n || !tc.done {
					t.Errorf("byte by byte %q: end after %d, want %d (done %v)", tc.in, i+m, tc.n, tc.done)
				}
				break
			}
		}
	}
}

// FuzzSSE drives the real relay tap: however the bytes arrive, it relays
// them unchanged and inspects the same events, and the events add up to the
// input. Seeds put events around each size the tap treats differently.
func FuzzSSE(f *testing.F) {
	f.Add([]byte("data: {\"a\":1}\n\ndata: [DONE]\n\n"), uint16(3), uint16(7))
	f.Add([]byte("data: x\r\n\r\n: c\r\r\ndata\n"), uint16(1), uint16(2))
	f.Add([]byte("\r\r\n\n\r"), uint16(1), uint16(1))
	for _, size := range []int{tapInitial - 1, tapInitial, tapInitial + 1, maxTapEvent - 1, maxTapEvent, maxTapEvent + 1} {
		f.Add([]byte("data: "+strings.Repeat("y", size-8)+"\n\n"+"data: z\n\n"), uint16(size/3), uint16(4093))
		f.Add([]byte("data: "+strings.Repeat("y", size-10)+"\r\n\r\n"+"data: z\r\r"), uint16(1), uint16(size))
	}
	f.Fuzz(func(t *testing.T, data []byte, a, b uint16) {
		out, whole, overWhole := tapAll(t, data, nil, nil)
		if !bytes.Equal(out, data) {
			t.Fatalf("relayed %q, want the input %q", out, data)
		}
		out2, parts, overParts := tapAll(t, data, []int{int(a), int(b), int(a) + int(b), 1, 2, 3, 5, 8, 13}, nil)
		if !bytes.Equal(out2, data) {
			t.Fatalf("relayed in pieces %q, want the input %q", out2, data)
		}
		if overWhole != overParts || strings.Join(whole, "\x00") != strings.Join(parts, "\x00") {
			t.Fatalf("whole: %d oversized, %q\npieces: %d oversized, %q", overWhole, whole, overParts, parts)
		}
		if overWhole == 0 && strings.Join(whole, "") != string(data) {
			t.Fatalf("events do not add up to the input")
		}
		for i, ev := range whole {
			if i < len(whole)-1 && !endsWithBlankLine([]byte(ev)) {
				t.Fatalf("event %d %q does not end with an empty line", i, ev)
			}
			// The fast paths agree with the general ones.
			n, plain := sseEvent([]byte(ev), true)
			if i < len(whole)-1 && (n != len(ev) || n != sseEventSlow([]byte(ev), true)) {
				t.Fatalf("event %d: fast length %d, slow %d, event %d bytes", i, n, sseEventSlow([]byte(ev), true), len(ev))
			}
			fd, fh, _ := sseData([]byte(ev), plain, nil)
			sd, sh, _ := sseData([]byte(ev), false, nil)
			if fh != sh || !bytes.Equal(fd, sd) {
				t.Fatalf("event %d %q: fast data %q/%v, slow %q/%v", i, ev, fd, fh, sd, sh)
			}
		}
	})
}

func endsWithBlankLine(ev []byte) bool {
	s := string(ev)
	if s == "\n" || s == "\r" || s == "\r\n" {
		return true
	}
	for _, end := range []string{"\n\n", "\r\r", "\r\n\r\n", "\n\r\n", "\r\n\n", "\n\r", "\r\r\n"} {
		if strings.HasSuffix(s, end) {
			return true
		}
	}
	return false
}
