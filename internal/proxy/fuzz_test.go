package proxy

import (
	"bytes"
	"encoding/json"
	"math"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"unicode/utf8"
)

// topLevel decodes a body with encoding/json into its top-level members,
// keys matched exactly and later duplicates winning, as Python's json module
// reads it; ok is false unless the body is exactly one JSON object in UTF-8
// (Python refuses other bytes; encoding/json would replace them).
func topLevel(body []byte) (map[string]json.RawMessage, bool) {
	if !utf8.Valid(body) {
		return nil, false
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return nil, false
	}
	m := map[string]json.RawMessage{}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, false
		}
		key, ok := tok.(string)
		if !ok {
			return nil, false
		}
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			return nil, false
		}
		m[key] = raw
	}
	if tok, err := dec.Token(); err != nil || tok != json.Delim('}') {
		return nil, false
	}
	rest := body[dec.InputOffset():]
	if len(bytes.TrimLeft(rest, " \t\r\n")) != 0 || !json.Valid(body) {
		return nil, false
	}
	return m, true
}

var plainInt = regexp.MustCompile(`^[1-9][0-9]{0,17}$`)

var decimal = regexp.MustCompile(`^[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?$`)

// refCap is the reference reading of a cap, written apart from readCap: a
// positive integer (as a JSON number, or a string holding one in decimal
// notation) caps; anything else does not.
func refCap(raw json.RawMessage) (int64, bool) {
	text := string(raw)
	if strings.HasPrefix(text, `"`) {
		var s string
		if json.Unmarshal(raw, &s) != nil {
			return 0, false
		}
		text = strings.TrimSpace(s)
	}
	if !decimal.MatchString(text) {
		return 0, false
	}
	f, err := strconv.ParseFloat(text, 64)
	if err != nil || f < 1 || f != math.Trunc(f) || math.IsInf(f, 0) {
		return 0, false
	}
	return int64(min(f, math.MaxInt64/2)), true
}

// FuzzParseRequest compares the hand-written request scanner, and its edits,
// with encoding/json on the same input: on every body that is a JSON object
// they must agree on the model, the caps, n and stream, and the edited body
// must be JSON with the edits made and every other member as it was.
func FuzzParseRequest(f *testing.F) {
	for _, s := range []string{
		`{"model":"m","messages":[{"role":"user","content":"hi"}],"max_tokens":64}`,
		`{"model":"m","max_completion_tokens":0,"max_tokens":"5","n":3,"stream":true,"stream_options":{"include_usage":false}}`,
		`{"model":"m","prompt":["a","b"],"max_tokens":1e2,"best_of":2}`,
		`{"model":"a","model":"b","MODEL":"c","m\u006fdel":"d","max_tokens":null}`,
		`{ "model" : "m" , "stream_options" : null , "stream" : "yes" }`,
		`{"model":"m","max_tokens":"0x10","n":"2"}`,
		`{"model":"m","x":{"max_tokens":1},"max_tokens":-0.0}`,
		`{"priority":-9,"model":"m","priority":1 , "priority":2,"max_tokens":3,"pr\u0069ority":4}`,
		`{"model":"m","x":{"priority":1},"priority":null}`,
		`{"cache_salt":"theirs","model":"m","request_id":"r","kv_transfer_params":{"a":1},"re\u0071uest_id":"s"}`,
		`{"model":"m","kv_transfer_params":null,"cache_salt":"x","priority":3,"request_id":"y","cache_salt":"z"}`,
		`{"kv_transfer_params":{},"priority":1,"model":"m","kv_transfer_params":[]}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		ref, isObject := topLevel(body)
		for _, ep := range []*endpoint{epChat, epCompletions, epResponses} {
			var pr parsed
			perr := parseRequest(body, ep, &pr)
			if !isObject {
				continue // vLLM parses the body again and refuses it
			}
			if perr != nil {
				if perr.param == "" {
					t.Fatalf("%s: a JSON object refused as %q", ep.path, perr.message)
				}
				continue
			}
			var model string
			if json.Unmarshal(ref["model"], &model) != nil || model != string(pr.model) {
				t.Fatalf("%s: model %q, encoding/json reads %s", ep.path, pr.model, ref["model"])
			}
			for i, field := range ep.capFields {
				raw, present := ref[field]
				c := pr.caps[i]
				if c.present != present {
					t.Fatalf("%s: %s present %v, encoding/json %v", ep.path, field, c.present, present)
				}
				v, set := refCap(raw)
				if c.set != set || (set && v < 1<<50 && c.v != v) {
					t.Fatalf("%s: %s = %s read as set %v %d, reference set %v %d", ep.path, field, raw, c.set, c.v, set, v)
				}
			}
			checkEdits(t, ep, body, &pr, ref)
		}
	})
}

// checkEdits applies a cap, stream usage and the owned members (a quota's
// priority or, for bodies of odd length, none; a cache salt; the request
// id; kv_transfer_params kept for bodies whose length is a multiple of 3)
// to body and checks the result against the reference reading: every
// client member the proxy owns is gone, the proxy's are there once.
func checkEdits(t *testing.T, ep *endpoint, body []byte, pr *parsed, ref map[string]json.RawMessage) {
	sp := pr.setCap(ep, 77, nil)
	var priority *int32
	if len(body)%2 == 0 {
		priority = ptr[int32](-9)
	}
	keepKV := len(body)%3 == 0
	sp = pr.ownedEdits(body, ep, ownedValues{priority: priority, cacheSalt: "s4lt", requestID: "rid", keepKV: keepKV}, sp)
	if ep.streamUsage && pr.stream {
		sp, _, _ = pr.meterStream(body, sp, true)
	}
	edited := applySplices(nil, body, sp)
	got, ok := topLevel(edited)
	if !ok {
		t.Fatalf("%s: edited body is not a JSON object: %s", ep.path, edited)
	}
	if n := countKey(edited, "priority"); n != map[bool]int{true: 1}[priority != nil] {
		t.Fatalf("%s: edited body has %d priority members with the quota's priority %v: %s", ep.path, n, priority, edited)
	}
	if priority != nil && string(got["priority"]) != "-9" {
		t.Fatalf("%s: edited priority = %s, want -9: %s", ep.path, got["priority"], edited)
	}
	if n := countKey(edited, "cache_salt"); n != 1 || string(got["cache_salt"]) != `"s4lt"` {
		t.Fatalf("%s: edited body has %d cache_salt members, the last %s, want the proxy's alone: %s", ep.path, n, got["cache_salt"], edited)
	}
	wantID := map[bool]int{true: 1}[ep.bodyRequestID]
	if n := countKey(edited, "request_id"); n != wantID || (wantID == 1 && string(got["request_id"]) != `"resp_rid"`) {
		t.Fatalf("%s: edited body has %d request_id members, the last %s, want %d of the proxy's: %s", ep.path, n, got["request_id"], wantID, edited)
	}
	wantKV := 0
	if keepKV {
		wantKV = countKey(body, "kv_transfer_params")
	}
	if n := countKey(edited, "kv_transfer_params"); n != wantKV {
		t.Fatalf("%s: edited body has %d kv_transfer_params members, want %d: %s", ep.path, n, wantKV, edited)
	}
	if string(got[ep.capField()]) != "77" {
		t.Fatalf("%s: edited %s = %s, want 77: %s", ep.path, ep.capField(), got[ep.capField()], edited)
	}
	for _, k := range ep.capFields[1:] {
		if v, ok := ref[k]; ok && !plainInt.Match(v) && string(got[k]) != "77" {
			t.Fatalf("%s: %s = %s is not a plain integer and was left as %s", ep.path, k, v, got[k])
		}
	}
	for k, v := range ref {
		if k == ep.capField() || ep.fields[k] == fieldOwned || (k == "stream_options" && ep.streamUsage && pr.stream) || (slices.Contains(ep.capFields, k) && !plainInt.Match(v)) {
			continue
		}
		if !bytes.Equal(got[k], v) {
			t.Fatalf("%s: member %q changed from %s to %s", ep.path, k, v, got[k])
		}
	}
	if ep.streamUsage && pr.stream {
		var so map[string]any
		if json.Unmarshal(got["stream_options"], &so) != nil || so["include_usage"] != true || so["continuous_usage_stats"] != true {
			t.Fatalf("%s: edited stream_options %s", ep.path, got["stream_options"])
		}
	}
}

// countKey counts the top-level members of a JSON object named key, once
// unescaped, duplicates included.
func countKey(body []byte, key string) int {
	dec := json.NewDecoder(bytes.NewReader(body))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return -1
	}
	n := 0
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return -1
		}
		if tok == key {
			n++
		}
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			return -1
		}
	}
	return n
}
