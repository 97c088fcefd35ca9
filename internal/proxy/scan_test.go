package proxy

import (
	"strings"
	"testing"
)

// TestJSONScan reads each document whole and in every split into two and
// into pieces of 1 to 7 bytes: the usage found is the one at its depth,
// never one inside a string, a metadata object or a schema.
func TestJSONScan(t *testing.T) {
	const fake = `"\"usage\":{\"prompt_tokens\":99,\"completion_tokens\":99}"`
	for _, tc := range []struct {
		doc     string
		usage   usage
		has     bool
		choices int
		index   int64
		typ     string
	}{
		{`{"id":"c","choices":[{"index":3,"message":{"content":` + fake + `}}],"usage":{"prompt_tokens":11,"completion_tokens":7,"prompt_tokens_details":{"cached_tokens":2}}}`,
			usage{11, 7, 2}, true, 1, 3, ""},
		{`{"metadata":{"usage":{"prompt_tokens":1,"completion_tokens":1}},"x":[{"usage":{"prompt_tokens":2}}],"usage":{"prompt_tokens":40,"completion_tokens":50}}`,
			usage{40, 50, 0}, true, -1, -1, ""},
		{`{"type":"response.completed","response":{"metadata":{"usage":{"input_tokens":1,"output_tokens":1}},"usage":{"input_tokens":8,"output_tokens":9},"user":null}}`,
			usage{8, 9, 0}, true, -1, -1, "response.completed"},
		{`{"t\u0079pe":"response.reasoning_text.delta","delta":` + fake + `}`, usage{}, false, -1, -1, "response.reasoning_text.delta"},
		{`{ "choices" : [ { "index" : 12 , "text":"a" } , {"index":13} ] , "us\u0061ge" : { "prompt_tokens" : 5 , "completion_tokens" : 6 } }`,
			usage{5, 6, 0}, true, 2, 12, ""},
		{`{"choices":[],"usage":null}`, usage{}, false, 0, -1, ""},
		{`{"data":[{"embedding":[0.1,-2e-3,3]}],"usage":{"prompt_tokens":4,"total_tokens":4}}`, usage{4, 0, 0}, true, -1, -1, ""},
	} {
		check := func(how string, parts []string) {
			s := newJSONScan()
			for _, p := range parts {
				s.feed([]byte(p))
			}
			if s.usage != tc.usage || s.haveUsage != tc.has || (tc.choices >= 0 && s.choices != tc.choices) || s.index != tc.index || string(s.eventType()) != tc.typ {
				t.Fatalf("%s of %s:\n usage %+v %v choices %d index %d type %q\nwant %+v %v %d %d %q", how, tc.doc, s.usage, s.haveUsage, s.choices, s.index, s.eventType(),
					tc.usage, tc.has, tc.choices, tc.index, tc.typ)
			}
		}
		check("whole", []string{tc.doc})
		for i := 1; i < len(tc.doc); i++ {
			check("split", []string{tc.doc[:i], tc.doc[i:]})
		}
		for size := 1; size <= 7; size++ {
			var parts []string
			for d := tc.doc; d != ""; {
				n := min(size, len(d))
				parts = append(parts, d[:n])
				d = d[n:]
			}
			check("pieces", parts)
		}
	}
	// A usage too large to capture is not read at all, never half.
	big := `{"usage":{"prompt_tokens":1,"pad":"` + strings.Repeat("x", maxCapture) + `"}}`
	s := newJSONScan()
	s.feed([]byte(big))
	if s.haveUsage {
		t.Error("a usage past maxCapture was read")
	}
}
