package proxy

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
)

func TestGlobMatch(t *testing.T) {
	for _, tc := range []struct {
		pattern, name string
		want          bool
	}{
		{"*", "meta-llama/Llama-3.1-8B", true},
		{"meta-llama/*", "meta-llama/Llama-3.1-8B", true},
		{"meta-llama/*", "meta-llama", false},
		{"*/Llama-3*", "meta-llama/Llama-3.1-8B", true},
		{"*-8B", "meta-llama/Llama-3.1-8B", true},
		{"*-8B", "meta-llama/Llama-3.1-70B", false},
		{"Llama-3.?-8B", "Llama-3.1-8B", true},
		{"Llama-3.?-8B", "Llama-3.10-8B", false},
		{"a*b*c", "aXXbYYc", true},
		{"a*b*c", "aXXbYY", false},
		{"", "", true},
		{"", "x", false},
		{"**", "", true},
		{"?", "é", true},
		{"exact", "exact", true},
		{"exact", "exactly", false},
	} {
		if got := globMatch(tc.pattern, tc.name); got != tc.want {
			t.Errorf("globMatch(%q, %q) = %v, want %v", tc.pattern, tc.name, got, tc.want)
		}
	}
}

func TestParseRequest(t *testing.T) {
	for _, tc := range []struct {
		name, body        string
		wantModel         string
		wantStream, usage bool
		wantMax           int64
		wantErrParam      string
		wantErr           bool
	}{
		{name: "plain", body: `{"model":"m","messages":[{"content":"}{\"model\":\"x\"]"}]}`, wantModel: "m"},
		{name: "escaped model", body: `{"model":"meta\/llama"}`, wantModel: "meta/llama"},
		{name: "case folded key ignored", body: `{"model":"a","MODEL":"b"}`, wantModel: "a"},
		{name: "duplicate key last wins", body: `{"model":"a","model":"b"}`, wantModel: "b"},
		{name: "lax stream", body: `{"model":"m","stream":"yes"}`, wantModel: "m", wantStream: true},
		{name: "stream null", body: `{"model":"m","stream":null}`, wantModel: "m"},
		{name: "include usage", body: `{"model":"m","stream":true,"stream_options":{"include_usage":"on"}}`, wantModel: "m", wantStream: true, usage: true},
		{name: "max as float", body: `{"model":"m","max_tokens":100.0}`, wantModel: "m", wantMax: 100},
		{name: "max as string", body: `{"model":"m","max_tokens":" 42 "}`, wantModel: "m", wantMax: 42},
		{name: "completion tokens preferred", body: `{"model":"m","max_tokens":5,"max_completion_tokens":7}`, wantModel: "m", wantMax: 7},
		{name: "max fraction", body: `{"model":"m","max_tokens":1.5}`, wantErr: true, wantErrParam: "max_tokens"},
		{name: "max bool", body: `{"model":"m","max_tokens":false}`, wantErr: true, wantErrParam: "max_tokens"},
		{name: "stream garbage", body: `{"model":"m","stream":"maybe"}`, wantErr: true, wantErrParam: "stream"},
		{name: "stream_options not object", body: `{"model":"m","stream_options":3}`, wantErr: true, wantErrParam: "stream_options"},
		{name: "empty", body: ``, wantErr: true},
		{name: "array", body: `[]`, wantErr: true},
		{name: "unterminated string", body: `{"model":"m}`, wantErr: true},
		{name: "missing colon", body: `{"model" "m"}`, wantErr: true},
		{name: "missing comma", body: `{"model":"m" "x":1}`, wantErr: true},
		{name: "empty model", body: `{"model":""}`, wantErr: true, wantErrParam: "model"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var pr parsed
			err := parseRequest([]byte(tc.body), epChat, &pr)
			if tc.wantErr {
				if err == nil {
					t.Fatal("no error")
				}
				if err.param != tc.wantErrParam {
					t.Errorf("param = %q, want %q", err.param, tc.wantErrParam)
				}
				return
			}
			if err != nil {
				t.Fatal(err.message)
			}
			if string(pr.model) != tc.wantModel || pr.stream != tc.wantStream || pr.includeUsage != tc.usage {
				t.Errorf("parsed %+v", pr)
			}
			if mt, _ := pr.maxTokens(epChat); mt != tc.wantMax {
				t.Errorf("max = %d, want %d", mt, tc.wantMax)
			}
		})
	}
}

func TestEditsAreSurgical(t *testing.T) {
	cap := int64(64)
	for _, tc := range []struct {
		body, want string
		capped     bool
	}{
		{`{"model":"m","stream":true}`, `{"model":"m","stream":true,"stream_options":{"include_usage":true}}`, false},
		{`{"model":"m","stream":true,"stream_options":{}}`, `{"model":"m","stream":true,"stream_options":{"include_usage":true}}`, false},
		{`{"model":"m","stream":true,"stream_options":{ "x":1 }}`, `{"model":"m","stream":true,"stream_options":{"include_usage":true, "x":1 }}`, false},
		{`{"model":"m","stream":true,"stream_options":{"include_usage":false,"x":1}}`, `{"model":"m","stream":true,"stream_options":{"include_usage":true,"x":1}}`, false},
		{"{\"model\":\"m\",\"stream\":true}\n", "{\"model\":\"m\",\"stream\":true,\"max_completion_tokens\":64,\"stream_options\":{\"include_usage\":true}}\n", true},
		{`{"model":"m","stream":false}`, `{"model":"m","stream":false}`, false},
	} {
		var pr parsed
		if err := parseRequest([]byte(tc.body), epChat, &pr); err != nil {
			t.Fatal(err.message)
		}
		var c *int64
		if tc.capped {
			c = &cap
		}
		sp, _ := pr.edits([]byte(tc.body), epChat, c, nil)
		got := applySplices(nil, []byte(tc.body), sp)
		if string(got) != tc.want {
			t.Errorf("edit of %s\n got %s\nwant %s", tc.body, got, tc.want)
		}
		if !json.Valid(got) {
			t.Errorf("invalid JSON %s", got)
		}
	}
}

func TestInspectJSON(t *testing.T) {
	ci := inspectJSON([]byte(`{"choices":[ ],"usage":{"prompt_tokens":3,"completion_tokens":4,"prompt_tokens_details":{"cached_tokens":1}}}`))
	if ci.choices != 0 || !ci.hasUsage || ci.usage != (usage{3, 4}) {
		t.Errorf("%+v", ci)
	}
	ci = inspectJSON([]byte(`{"choices":[{"delta":{"content":"\"usage\":{\"prompt_tokens\":99}"}}],"usage":null}`))
	if ci.choices != 1 || ci.hasUsage {
		t.Errorf("%+v", ci)
	}
	if u, ok := usageFromTail([]byte(`...ext":"\"usage\":{\"prompt_tokens\":1}","usage":{"prompt_tokens":7,"total_tokens":7}}`)); !ok || u.Prompt != 7 {
		t.Errorf("tail usage = %+v %v", u, ok)
	}
}

func TestLax(t *testing.T) {
	for in, want := range map[string]int64{`5`: 5, `-3`: -3, `"7"`: 7, `1e2`: 100, `2.0`: 2} {
		if v, ok := laxInt([]byte(in)); !ok || v != want {
			t.Errorf("laxInt(%s) = %d %v", in, v, ok)
		}
	}
	for _, in := range []string{`true`, `"x"`, `1.5`, `{}`, `[]`, `""`, `NaN`} {
		if _, ok := laxInt([]byte(in)); ok {
			t.Errorf("laxInt(%s) accepted", in)
		}
	}
	for in, want := range map[string]bool{`true`: true, `false`: false, `1`: true, `0`: false, `"YES"`: true, `"off"`: false} {
		if v, ok := laxBool([]byte(in)); !ok || v != want {
			t.Errorf("laxBool(%s) = %v %v", in, v, ok)
		}
	}
}

// splitEvents runs the incremental reader over data delivered in pieces of
// the given sizes, the way relayStream does, and returns the events.
func splitEvents(data []byte, sizes []int) [][]byte {
	var events [][]byte
	var buf []byte
	for i := 0; len(data) > 0 || i == 0; i++ {
		n := len(data)
		if i < len(sizes) {
			n = min(max(sizes[i], 1), len(data))
		}
		buf = append(buf, data[:n]...)
		data = data[n:]
		atEOF := len(data) == 0
		off := 0
		for off < len(buf) {
			m, _ := sseEvent(buf[off:], atEOF)
			if m == 0 {
				if !atEOF {
					break
				}
				m = len(buf) - off
			}
			events = append(events, bytes.Clone(buf[off:off+m]))
			off += m
		}
		buf = buf[off:]
		if atEOF {
			break
		}
	}
	return events
}

func TestSSEFraming(t *testing.T) {
	in := "data: a\n\n" + "data: b\r\ndata: c\r\n\r\n" + ": comment\n\n" + "event: x\rdata:d\r\r\n" + "\n" + "data: [DONE]\n\n" + "data: tail"
	// The lone "\n" after it is an empty event of its own.
	// "\r\r\n" is CR ending a line, then CRLF ending the empty line.
	want := []string{"data: a\n\n", "data: b\r\ndata: c\r\n\r\n", ": comment\n\n", "event: x\rdata:d\r\r\n", "\n", "data: [DONE]\n\n", "data: tail"}
	for _, sizes := range [][]int{nil, {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1}, {9, 11, 3}} {
		got := splitEvents([]byte(in), sizes)
		var gs []string
		for _, g := range got {
			gs = append(gs, string(g))
		}
		if strings.Join(gs, "|") != strings.Join(want, "|") {
			t.Errorf("sizes %v: events %q\nwant %q", sizes, gs, want)
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

// FuzzSSE checks the incremental reader is lossless and framing-independent:
// however the bytes arrive, the events are the same and add up to the input,
// and every event but the last ends with an empty line.
func FuzzSSE(f *testing.F) {
	f.Add([]byte("data: {\"a\":1}\n\ndata: [DONE]\n\n"), uint8(3), uint8(7))
	f.Add([]byte("data: x\r\n\r\n: c\r\r\ndata\n"), uint8(1), uint8(2))
	f.Add([]byte("\r\r\n\n\r"), uint8(1), uint8(1))
	f.Fuzz(func(t *testing.T, data []byte, a, b uint8) {
		whole := splitEvents(data, nil)
		pieces := splitEvents(data, []int{int(a), int(b), int(a) + int(b), 1, 2, 3, 5, 8, 13})
		if !bytes.Equal(bytes.Join(whole, nil), data) {
			t.Fatalf("events do not add up to the input")
		}
		if len(whole) != len(pieces) {
			t.Fatalf("whole: %q\npieces: %q", whole, pieces)
		}
		for i := range whole {
			if !bytes.Equal(whole[i], pieces[i]) {
				t.Fatalf("event %d differs: %q vs %q", i, whole[i], pieces[i])
			}
			if i < len(whole)-1 && !endsWithBlankLine(whole[i]) {
				t.Fatalf("event %d %q does not end with an empty line", i, whole[i])
			}
			// The fast paths agree with the general ones.
			n, plain := sseEvent(whole[i], true)
			if i < len(whole)-1 && (n != len(whole[i]) || n != sseEventSlow(whole[i], true)) {
				t.Fatalf("event %d: fast length %d, slow %d, event %d bytes", i, n, sseEventSlow(whole[i], true), len(whole[i]))
			}
			fd, fh, _ := sseData(whole[i], plain, nil)
			sd, sh, _ := sseData(whole[i], false, nil)
			if fh != sh || !bytes.Equal(fd, sd) {
				t.Fatalf("event %d %q: fast data %q/%v, slow %q/%v", i, whole[i], fd, fh, sd, sh)
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
