package proxy

import (
	"encoding/json"
	"math"
	"strings"
	"testing"

	"github.com/llm-user-operator/llm-user-operator/internal/quota"
)

func TestParseRequest(t *testing.T) {
	for _, tc := range []struct {
		name, body   string
		ep           *endpoint
		want         parsed // the fields compared below
		wantErrParam string
		wantErr      bool
	}{
		{name: "plain", body: `{"model":"m","messages":[{"content":"}{\"model\":\"x\"]"}]}`, want: parsed{model: []byte("m"), n: 1, prompts: 1, promptBytes: 34}},
		{name: "escaped model", body: `{"model":"meta\/llama"}`, want: parsed{model: []byte("meta/llama"), n: 1, prompts: 1}},
		{name: "case folded key ignored", body: `{"model":"a","MODEL":"b","N":5}`, want: parsed{model: []byte("a"), n: 1, prompts: 1}},
		{name: "duplicate key last wins", body: `{"model":"a","model":"b","n":2,"n":3}`, want: parsed{model: []byte("b"), n: 3, prompts: 1}},
		{name: "escaped key", body: `{"model":"a","\u006e":4}`, want: parsed{model: []byte("a"), n: 4, prompts: 1}},
		{name: "lax stream", body: `{"model":"m","stream":"yes"}`, want: parsed{model: []byte("m"), stream: true, n: 1, prompts: 1}},
		{name: "stream null", body: `{"model":"m","stream":null}`, want: parsed{model: []byte("m"), n: 1, prompts: 1}},
		{name: "usage options", body: `{"model":"m","stream":true,"stream_options":{"include_usage":"on","continuous_usage_stats":1}}`,
			want: parsed{model: []byte("m"), stream: true, includeUsage: true, continuousUsage: true, n: 1, prompts: 1}},
		{name: "n lax and floor", body: `{"model":"m","n":"4","best_of":0}`, want: parsed{model: []byte("m"), n: 4, bestOf: 1, prompts: 1}},
		{name: "n null", body: `{"model":"m","n":null}`, want: parsed{model: []byte("m"), n: 1, prompts: 1}},
		{name: "prompt array", ep: epCompletions, body: `{"model":"m","prompt":["a","bb","ccc"]}`, want: parsed{model: []byte("m"), n: 1, prompts: 3, promptBytes: 16}},
		{name: "prompt token ids", ep: epCompletions, body: `{"model":"m","prompt":[1, 2, 3, 4]}`, want: parsed{model: []byte("m"), n: 1, prompts: 1, promptTokens: 4}},
		{name: "prompts of token ids", ep: epCompletions, body: `{"model":"m","prompt":[[1,2],[3],[4,5,6]]}`, want: parsed{model: []byte("m"), n: 1, prompts: 3, promptTokens: 6}},
		{name: "chat messages array is one prompt", body: `{"model":"m","messages":[{},{}]}`, want: parsed{model: []byte("m"), n: 1, prompts: 1, promptBytes: 7}},
		{name: "embedding inputs", ep: epEmbeddings, body: `{"model":"m","input":["a","b"]}`, want: parsed{model: []byte("m"), n: 1, prompts: 1, promptBytes: 9}},
		{name: "responses background", ep: epResponses, body: `{"model":"m","background":true}`, want: parsed{model: []byte("m"), n: 1, prompts: 1, background: true}},
		{name: "background ignored elsewhere", body: `{"model":"m","background":true}`, want: parsed{model: []byte("m"), n: 1, prompts: 1}},
		{name: "responses builtin tool", ep: epResponses, body: `{"model":"m","tools":[{"type":"function","name":"f"},{"type":"web_search_preview"}]}`,
			want: parsed{model: []byte("m"), n: 1, prompts: 1, builtinTools: true, promptBytes: 62}},
		{name: "responses function tools only", ep: epResponses, body: `{"model":"m","tools":[{"type":"function","name":"f"}]}`,
			want: parsed{model: []byte("m"), n: 1, prompts: 1, promptBytes: 32}},
		// Row 4: input the estimate did not see.
		{name: "embeddings messages are input", ep: epEmbeddings, body: `{"model":"m","messages":[{"role":"user","content":"abcdefgh"}]}`,
			want: parsed{model: []byte("m"), n: 1, prompts: 1, promptBytes: 38}},
		{name: "chat documents are input", body: `{"model":"m","documents":[{"title":"t","text":"0123456789"}]}`,
			want: parsed{model: []byte("m"), n: 1, prompts: 1, promptBytes: 35}},
		{name: "chat image parts", body: `{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"hi"},{"type":"image_url","image_url":{"url":"http://x/a.png"}},{"image_url":{"url":"http://x/b.png"}},{"text":"t"},{"type":"input_audio","input_audio":{"data":"","format":"wav"}}]}]}`,
			want: parsed{model: []byte("m"), n: 1, prompts: 1, promptBytes: 231, media: 3}},
		{name: "escaped part type", body: `{"model":"m","messages":[{"content":[{"t\u0079pe":"image\u005furl","image_url":{"url":"u"}}]}]}`,
			want: parsed{model: []byte("m"), n: 1, prompts: 1, promptBytes: 70, media: 1}},
		{name: "responses input image", ep: epResponses, body: `{"model":"m","input":[{"role":"user","content":[{"type":"input_text","text":"a"},{"type":"input_image","image_url":"u"}]}]}`,
			want: parsed{model: []byte("m"), n: 1, prompts: 1, promptBytes: 101, media: 1}},
		// Row 5: prompt_embeds, each entry its own prompt.
		{name: "prompt_embeds list", ep: epCompletions, body: `{"model":"m","prompt_embeds":["QUJD","REVG","R0hJ"]}`,
			want: parsed{model: []byte("m"), n: 1, prompts: 1, embedPrompts: 3, embedBytes: 22}},
		{name: "prompt_embeds one", ep: epCompletions, body: `{"model":"m","prompt_embeds":"QUJD","prompt":["a","b"]}`,
			want: parsed{model: []byte("m"), n: 1, prompts: 2, promptBytes: 9, embedPrompts: 1, embedBytes: 6}},
		// Row 6 and the members the proxy owns.
		{name: "owned members", ep: epResponses, body: `{"model":"m","request\u005fid":"theirs","cache_salt":"x","kv_transfer_params":{}}`,
			want: parsed{model: []byte("m"), n: 1, prompts: 1, owned: true, kvTransfer: true}},
		{name: "stored context", ep: epResponses, body: `{"model":"m","previous_response_id":"resp_1"}`,
			want: parsed{model: []byte("m"), n: 1, prompts: 1, storedContext: true}},
		{name: "n fraction", body: `{"model":"m","n":1.5}`, wantErr: true, wantErrParam: "n"},
		{name: "n bool", body: `{"model":"m","n":true}`, wantErr: true, wantErrParam: "n"},
		{name: "stream garbage", body: `{"model":"m","stream":"maybe"}`, wantErr: true, wantErrParam: "stream"},
		{name: "background garbage", ep: epResponses, body: `{"model":"m","background":"later"}`, wantErr: true, wantErrParam: "background"},
		{name: "stream_options not object", body: `{"model":"m","stream_options":3}`, wantErr: true, wantErrParam: "stream_options"},
		{name: "include_usage garbage", body: `{"model":"m","stream_options":{"include_usage":"perhaps"}}`, wantErr: true, wantErrParam: "stream_options"},
		{name: "empty", body: ``, wantErr: true},
		{name: "array", body: `[]`, wantErr: true},
		{name: "unterminated string", body: `{"model":"m}`, wantErr: true},
		{name: "missing colon", body: `{"model" "m"}`, wantErr: true},
		{name: "missing comma", body: `{"model":"m" "x":1}`, wantErr: true},
		{name: "trailing data", body: `{"model":"m"} {}`, wantErr: true},
		{name: "empty model", body: `{"model":""}`, wantErr: true, wantErrParam: "model"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ep := tc.ep
			if ep == nil {
				ep = epChat
			}
			var pr parsed
			err := parseRequest([]byte(tc.body), ep, &pr)
			if tc.wantErr {
				if err == nil {
					t.Fatal("no error")
				}
				if err.param != tc.wantErrParam || err.status != 400 {
					t.Errorf("status %d param %q, want 400 %q", err.status, err.param, tc.wantErrParam)
				}
				return
			}
			if err != nil {
				t.Fatal(err.message)
			}
			w := tc.want
			if string(pr.model) != string(w.model) || pr.stream != w.stream || pr.includeUsage != w.includeUsage || pr.continuousUsage != w.continuousUsage ||
				pr.n != w.n || pr.bestOf != w.bestOf || pr.prompts != w.prompts || pr.promptTokens != w.promptTokens ||
				pr.promptBytes != w.promptBytes || pr.background != w.background || pr.builtinTools != w.builtinTools ||
				pr.media != w.media || pr.embedPrompts != w.embedPrompts || pr.embedBytes != w.embedBytes || pr.storedContext != w.storedContext ||
				pr.owned != w.owned || pr.kvTransfer != w.kvTransfer {
				t.Errorf("media %d embeds %d/%d stored %v owned %v kv %v, want %d %d/%d %v %v %v", pr.media, pr.embedPrompts, pr.embedBytes, pr.storedContext, pr.owned, pr.kvTransfer,
					w.media, w.embedPrompts, w.embedBytes, w.storedContext, w.owned, w.kvTransfer)
				t.Errorf("parsed model %q stream %v usage %v/%v n %d best_of %d prompts %d tokens %d bytes %d background %v tools %v\nwant   model %q stream %v usage %v/%v n %d best_of %d prompts %d tokens %d bytes %d background %v tools %v",
					pr.model, pr.stream, pr.includeUsage, pr.continuousUsage, pr.n, pr.bestOf, pr.prompts, pr.promptTokens, pr.promptBytes, pr.background, pr.builtinTools,
					w.model, w.stream, w.includeUsage, w.continuousUsage, w.n, w.bestOf, w.prompts, w.promptTokens, w.promptBytes, w.background, w.builtinTools)
			}
		})
	}
}

// TestReadCap checks the reading of an output cap against what vLLM's
// get_max_tokens does with each value: only a positive integer (which
// pydantic's lax mode also reads from 100.0, 1e2 and "100") caps the
// output; anything else is read as no cap, so that the proxy writes its own.
func TestReadCap(t *testing.T) {
	for _, tc := range []struct {
		raw       string
		set       bool
		v         int64
		canonical bool
	}{
		{`100`, true, 100, true},
		{`1`, true, 1, true},
		{`100.0`, true, 100, false},
		{`1e2`, true, 100, false},
		{`"100"`, true, 100, false},
		{`" 42 "`, true, 42, false},
		{`007`, true, 7, false},
		{`0`, false, 0, false},
		{`0.0`, false, 0, false},
		{`"0"`, false, 0, false},
		{`0e0`, false, 0, false},
		{`-0`, false, 0, false},
		{`-5`, false, -5, false},
		{`"-5"`, false, 0, false},
		{`1.5`, false, 0, false},
		{`null`, false, 0, false},
		{`true`, false, 0, false},
		{`false`, false, 0, false},
		{`"abc"`, false, 0, false},
		{`{}`, false, 0, false},
		{`[1]`, false, 0, false},
		{`1e400`, false, 0, false},
		{`99999999999999999999`, true, math.MaxInt64 / 2, false},
	} {
		c := readCap([]byte(tc.raw), 3, 9)
		if c.set != tc.set || (tc.set && c.v != tc.v) || c.canonical != tc.canonical || !c.present || c.start != 3 || c.end != 9 {
			t.Errorf("readCap(%s) = set %v v %d canonical %v; want set %v v %d canonical %v", tc.raw, c.set, c.v, c.canonical, tc.set, tc.v, tc.canonical)
		}
	}
}

func TestRequestedCap(t *testing.T) {
	for _, tc := range []struct {
		body  string
		v     int64
		field int
		ok    bool
	}{
		{`{"model":"m","max_tokens":5,"max_completion_tokens":7}`, 7, 0, true},
		{`{"model":"m","max_tokens":5}`, 5, 1, true},
		// max_completion_tokens 0 or null: older vLLM reads max_tokens (`or`).
		{`{"model":"m","max_tokens":5,"max_completion_tokens":0}`, 5, 1, true},
		{`{"model":"m","max_tokens":5,"max_completion_tokens":null}`, 5, 1, true},
		{`{"model":"m","max_tokens":0,"max_completion_tokens":-1}`, 0, -1, false},
		{`{"model":"m"}`, 0, -1, false},
	} {
		var pr parsed
		if err := parseRequest([]byte(tc.body), epChat, &pr); err != nil {
			t.Fatal(err.message)
		}
		v, field, ok := pr.requestedCap()
		if v != tc.v || field != tc.field || ok != tc.ok {
			t.Errorf("%s: requestedCap() = %d, %d, %v; want %d, %d, %v", tc.body, v, field, ok, tc.v, tc.field, tc.ok)
		}
	}
}

// TestBound is the admission table: what each request shape reserves.
// Expected values are worked out by hand.
func TestBound(t *testing.T) {
	c100 := ptr[int64](100)
	for _, tc := range []struct {
		name    string
		ep      *endpoint
		body    string
		maxPer  *int64
		ctx     int64
		want    outputBound
		output  int64  // est.OutputTokens
		violate string // param of a cap violation
	}{
		{name: "own cap under the limit", body: `{"model":"m","max_tokens":64}`, maxPer: c100, ctx: 4096,
			want: outputBound{perSeq: 64, seqs: 1, requested: 64, natural: 4096, field: 1}, output: 64},
		{name: "own cap above the limit", body: `{"model":"m","max_completion_tokens":101}`, maxPer: c100, ctx: 4096,
			want: outputBound{perSeq: 101, seqs: 1, requested: 101, natural: 4096, field: 0}, output: 101, violate: "max_completion_tokens"},
		{name: "n multiplies", body: `{"model":"m","max_tokens":30,"n":4}`, maxPer: c100, ctx: 4096,
			want: outputBound{perSeq: 30, seqs: 4, requested: 30, natural: 4096, field: 1}, output: 120, violate: "max_tokens"},
		{name: "best_of multiplies", ep: epCompletions, body: `{"model":"m","max_tokens":30,"n":1,"best_of":3}`, maxPer: c100, ctx: 4096,
			want: outputBound{perSeq: 30, seqs: 3, requested: 30, natural: 4096, field: 0}, output: 90},
		{name: "prompts multiply", ep: epCompletions, body: `{"model":"m","max_tokens":10,"prompt":["a","b","c","d","e","f","g","h","i","j","k"]}`, maxPer: c100, ctx: 4096,
			want: outputBound{perSeq: 10, seqs: 11, requested: 10, natural: 4096, field: 0}, output: 110, violate: "max_tokens"},
		{name: "own cap above the context", body: `{"model":"m","max_tokens":5000}`, ctx: 4096,
			want: outputBound{perSeq: 4096, seqs: 1, requested: 5000, natural: 4096, field: 1}, output: 4096},
		{name: "zero is no cap", body: `{"model":"m","max_completion_tokens":0}`, maxPer: c100, ctx: 4096,
			want: outputBound{perSeq: 100, seqs: 1, natural: 4096, chosen: true, field: -1}, output: 100},
		{name: "no cap: the limit per sequence", body: `{"model":"m","n":3}`, maxPer: c100, ctx: 4096,
			want: outputBound{perSeq: 33, seqs: 3, natural: 4096, chosen: true, field: -1}, output: 99},
		{name: "no cap, no limit: the context", body: `{"model":"m"}`, ctx: 4096,
			want: outputBound{perSeq: 4096, seqs: 1, natural: 4096, chosen: true, field: -1}, output: 4096},
		{name: "no cap, no limit, no context: the fallback", body: `{"model":"m"}`,
			want: outputBound{perSeq: 512, seqs: 1, chosen: true, field: -1}, output: 512},
		{name: "completions default of 16", ep: epCompletions, body: `{"model":"m","prompt":"hi"}`, maxPer: c100, ctx: 4096,
			want: outputBound{perSeq: 16, seqs: 1, natural: 16, chosen: true, field: -1}, output: 16},
		{name: "completions null is the context", ep: epCompletions, body: `{"model":"m","prompt":"hi","max_tokens":null}`, maxPer: c100, ctx: 4096,
			want: outputBound{perSeq: 100, seqs: 1, natural: 4096, chosen: true, field: -1}, output: 100},
		{name: "more sequences than the limit", body: `{"model":"m","n":101}`, maxPer: c100, ctx: 4096,
			want: outputBound{perSeq: 4096, seqs: 101, natural: 4096, chosen: true, field: -1}, output: 413696, violate: "n"},
		{name: "more prompts than the limit", ep: epCompletions, body: `{"model":"m","prompt":["a","b","c"]}`, maxPer: ptr[int64](2), ctx: 4096,
			want: outputBound{perSeq: 16, seqs: 3, natural: 16, chosen: true, field: -1}, output: 48, violate: "prompt"},
		{name: "rewrite a non-canonical cap", body: `{"model":"m","max_completion_tokens":"64"}`, ctx: 4096,
			want: outputBound{perSeq: 64, seqs: 1, requested: 64, natural: 4096, field: 0, rewrite: true}, output: 64},
		{name: "rewrite a shadowing primary", body: `{"model":"m","max_tokens":64,"max_completion_tokens":0}`, ctx: 4096,
			want: outputBound{perSeq: 64, seqs: 1, requested: 64, natural: 4096, field: 1, rewrite: true}, output: 64},
		{name: "huge n saturates", body: `{"model":"m","max_tokens":999999999999999999,"n":999999999999999999}`,
			want: outputBound{perSeq: 999999999999999999, seqs: 1 << 20, requested: 999999999999999999, field: 1}, output: math.MaxInt64},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ep := tc.ep
			if ep == nil {
				ep = epChat
			}
			var pr parsed
			if err := parseRequest([]byte(tc.body), ep, &pr); err != nil {
				t.Fatal(err.message)
			}
			b, v := bound(ep, &pr, tc.maxPer, tc.ctx, 512, "gold")
			if b != tc.want {
				t.Errorf("bound = %+v\nwant    %+v", b, tc.want)
			}
			if got := b.estimate(ep, 10).OutputTokens; got != tc.output {
				t.Errorf("output reserved = %d, want %d", got, tc.output)
			}
			switch {
			case tc.violate == "" && v != nil:
				t.Errorf("violation %+v, want none", v)
			case tc.violate != "" && (v == nil || v.param != tc.violate):
				t.Errorf("violation %+v, want one of %s", v, tc.violate)
			case v != nil && !strings.Contains(v.message, "LLMQuota 'gold'"):
				t.Errorf("message %q does not name the quota", v.message)
			}
		})
	}
}

func TestBoundMessages(t *testing.T) {
	var pr parsed
	if err := parseRequest([]byte(`{"model":"m","max_tokens":30,"n":4}`), epChat, &pr); err != nil {
		t.Fatal(err.message)
	}
	_, v := bound(epChat, &pr, ptr[int64](100), 0, 512, "gold")
	const want = "max_tokens is 30 for each of 4 sequences (n × prompts), 120 in all, above the limit of 100 tokens per request of LLMQuota 'gold'. Lower max_tokens to at most 25 (or generate fewer sequences), or omit it to get the limit."
	if v == nil || v.message != want {
		t.Errorf("message\n got %+v\nwant %s", v, want)
	}
}

func TestCapToWrite(t *testing.T) {
	for _, tc := range []struct {
		name                  string
		b                     outputBound
		granted, input, ctxLn int64
		want                  int64
		write                 bool
	}{
		{"own cap, canonical", outputBound{perSeq: 64, requested: 64, seqs: 1}, 64, 10, 4096, 64, false},
		{"own cap, rewritten", outputBound{perSeq: 64, requested: 64, seqs: 1, rewrite: true}, 64, 10, 4096, 64, true},
		{"own cap above the context, rewritten as asked", outputBound{perSeq: 4096, requested: 5000, seqs: 1, rewrite: true}, 4096, 10, 4096, 5000, true},
		{"chosen, nothing lowered", outputBound{perSeq: 4096, seqs: 1, natural: 4096, chosen: true}, 4096, 10, 4096, 0, false},
		{"chosen, lowered by the budget", outputBound{perSeq: 4096, seqs: 1, natural: 4096, chosen: true}, 27, 10, 4096, 27, true},
		{"chosen, per sequence", outputBound{perSeq: 33, seqs: 3, natural: 4096, chosen: true}, 99, 10, 4096, 33, true},
		{"chosen, fits the context after the prompt", outputBound{perSeq: 4000, seqs: 1, natural: 4096, chosen: true}, 4000, 300, 4096, 3796, true},
		{"chosen, prompt over the context", outputBound{perSeq: 100, seqs: 1, natural: 4096, chosen: true}, 100, 5000, 4096, 1, true},
		{"chosen, unknown context", outputBound{perSeq: 512, seqs: 1, chosen: true}, 512, 10, 0, 512, true},
		{"chosen, completions default kept", outputBound{perSeq: 16, seqs: 1, natural: 16, chosen: true}, 16, 10, 4096, 0, false},
		{"chosen, completions default lowered", outputBound{perSeq: 16, seqs: 1, natural: 16, chosen: true}, 9, 10, 4096, 9, true},
	} {
		got, write := tc.b.capToWrite(tc.granted, tc.input, tc.ctxLn)
		if got != tc.want || write != tc.write {
			t.Errorf("%s: capToWrite = %d, %v; want %d, %v", tc.name, got, write, tc.want, tc.write)
		}
	}
}

func TestInputEstimate(t *testing.T) {
	for _, tc := range []struct {
		ep                 *endpoint
		body               string
		contextLen, mediaB int64
		want               int64
	}{
		{epChat, `{"model":"m","messages":[{"role":"user","content":"Hello"}]}`, 0, 0, 8 + 34/4},
		{epCompletions, `{"model":"m","prompt":[1,2,3,4,5,6,7,8,9,10]}`, 0, 0, 8 + 10},
		{epCompletions, `{"model":"m","prompt":"abcdefgh"}`, 0, 0, 8 + 10/4},
		{epResponses, `{"model":"m","input":"abcd","instructions":"efgh"}`, 0, 0, 8 + 12/4},
		// Row 4: what the estimate used to ignore.
		{epEmbeddings, `{"model":"m","messages":[{"role":"user","content":"` + strings.Repeat("x", 4000) + `"}]}`, 0, 0, 8 + 4030/4},
		{epChat, `{"model":"m","documents":[{"text":"` + strings.Repeat("y", 4000) + `"}]}`, 0, 0, 8 + 4013/4},
		{epChat, `{"model":"m","messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"http://x/a.png"}}]}]}`, 8192, 1000, 8 + 87/4 + 1000},
		{epChat, `{"model":"m","messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"http://x/a.png"}}]}]}`, 8192, 8192, 8192},
		// Row 5: prompts as embeddings, bounded by their size and the context.
		{epCompletions, `{"model":"m","prompt_embeds":["` + strings.Repeat("A", 400) + `","` + strings.Repeat("A", 400) + `"]}`, 8192, 0, 8 + 805/4},
		{epCompletions, `{"model":"m","prompt_embeds":["` + strings.Repeat("A", 40000) + `"]}`, 1000, 0, 1000},
	} {
		var pr parsed
		if err := parseRequest([]byte(tc.body), tc.ep, &pr); err != nil {
			t.Fatal(err.message)
		}
		if got := inputEstimate(&pr, tc.contextLen, tc.mediaB); got != tc.want {
			t.Errorf("%.80s: input estimate %d, want %d", tc.body, got, tc.want)
		}
	}
}

func TestEditsAreSurgical(t *testing.T) {
	for _, tc := range []struct {
		body, want string
		cap        int64 // 0: none written
		continuous bool
		final      bool // hideFinal expected
		cont       bool // hideContinuous expected
	}{
		{`{"model":"m","stream":true}`, `{"model":"m","stream":true,"stream_options":{"include_usage":true,"continuous_usage_stats":true}}`, 0, true, true, true},
		{`{"model":"m","stream":true}`, `{"model":"m","stream":true,"stream_options":{"include_usage":true}}`, 0, false, true, false},
		{`{"model":"m","stream":true,"stream_options":null}`, `{"model":"m","stream":true,"stream_options":{"include_usage":true,"continuous_usage_stats":true}}`, 0, true, true, true},
		{`{"model":"m","stream":true,"stream_options":{}}`, `{"model":"m","stream":true,"stream_options":{"include_usage":true,"continuous_usage_stats":true}}`, 0, true, true, true},
		{`{"model":"m","stream":true,"stream_options":{ "x":1 }}`, `{"model":"m","stream":true,"stream_options":{"include_usage":true,"continuous_usage_stats":true, "x":1 }}`, 0, true, true, true},
		{`{"model":"m","stream":true,"stream_options":{"include_usage":false,"x":1}}`, `{"model":"m","stream":true,"stream_options":{"continuous_usage_stats":true,"include_usage":true,"x":1}}`, 0, true, true, true},
		{`{"model":"m","stream":true,"stream_options":{"include_usage":true}}`, `{"model":"m","stream":true,"stream_options":{"continuous_usage_stats":true,"include_usage":true}}`, 0, true, false, true},
		{`{"model":"m","stream":true,"stream_options":{"include_usage":true,"continuous_usage_stats":true}}`, `{"model":"m","stream":true,"stream_options":{"include_usage":true,"continuous_usage_stats":true}}`, 0, true, false, false},
		{`{"model":"m","stream":true,"stream_options":{"include_usage":true}}`, `{"model":"m","stream":true,"stream_options":{"include_usage":true}}`, 0, false, false, false},
		{"{\"model\":\"m\",\"stream\":true}\n", "{\"model\":\"m\",\"stream\":true,\"max_completion_tokens\":64,\"stream_options\":{\"include_usage\":true,\"continuous_usage_stats\":true}}\n", 64, true, true, true},
		{`{"model":"m","max_completion_tokens":"9","max_completion_tokens":0}`, `{"model":"m","max_completion_tokens":"9","max_completion_tokens":64}`, 64, true, false, false},
		{`{"model":"m","max_tokens":"0","max_completion_tokens":0}`, `{"model":"m","max_tokens":64,"max_completion_tokens":64}`, 64, true, false, false},
		{`{"model":"m","max_tokens":12}`, `{"model":"m","max_tokens":12,"max_completion_tokens":64}`, 64, true, false, false},
	} {
		var pr parsed
		if err := parseRequest([]byte(tc.body), epChat, &pr); err != nil {
			t.Fatal(err.message)
		}
		var sp []splice
		if tc.cap > 0 {
			sp = pr.setCap(epChat, tc.cap, sp)
		}
		var final, cont bool
		if pr.stream {
			sp, final, cont = pr.meterStream([]byte(tc.body), sp, tc.continuous)
		}
		got := applySplices(nil, []byte(tc.body), sp)
		if string(got) != tc.want || final != tc.final || cont != tc.cont {
			t.Errorf("edit of %s\n got %s (hide final %v, continuous %v)\nwant %s (%v, %v)", tc.body, got, final, cont, tc.want, tc.final, tc.cont)
		}
		if !json.Valid(got) {
			t.Errorf("invalid JSON %s", got)
		}
	}
}

func TestSettle(t *testing.T) {
	est := quota.Amount{Requests: 1, InputTokens: 20, OutputTokens: 100}
	final := func(u usage) *meter { return &meter{final: u, haveFinal: true} }
	// seqs builds a meter of n sequences, perPrompt of them per prompt, fed
	// the output events given as (index, continuous usage or nil).
	type ev struct {
		i int64
		u *usage
	}
	seqs := func(n, perPrompt int64, evs ...ev) *meter {
		m := &meter{}
		m.init(n, perPrompt)
		for _, e := range evs {
			m.output(e.i, 1, e.u)
		}
		return m
	}
	u := func(p, c int64) *usage { return &usage{Prompt: p, Completion: c} }
	for _, tc := range []struct {
		name string
		ep   *endpoint
		o    outcome
		want quota.Amount
		b    basis
	}{
		{"completed with usage", epChat, outcome{ending: completed, answered: true, m: final(usage{11, 7, 0})}, quota.Amount{Requests: 1, InputTokens: 11, OutputTokens: 7}, basisUsage},
		{"usage above the reservation is charged as reported", epChat, outcome{ending: completed, answered: true, m: final(usage{30, 100, 0})}, quota.Amount{Requests: 1, InputTokens: 30, OutputTokens: 100}, basisUsage},
		{"stream completed without usage: the chunks", epChat, outcome{ending: completed, answered: true, streamed: true, m: seqs(1, 0, ev{0, nil}, ev{0, nil})},
			quota.Amount{Requests: 1, InputTokens: 20, OutputTokens: 2}, basisDelivered},
		{"chunks beyond the reservation", epChat, outcome{ending: completed, answered: true, streamed: true, m: &meter{events: 400, seqs: make([]seqMeter, 1)}},
			quota.Amount{Requests: 1, InputTokens: 20, OutputTokens: 100}, basisDelivered},
		{"body without usage: the reservation", epChat, outcome{ending: completed, answered: true, m: &meter{}}, quota.Amount{Requests: 1, InputTokens: 20, OutputTokens: 100}, basisReservation},
		{"body cut: the reservation", epChat, outcome{ending: broken, answered: true, m: &meter{}}, quota.Amount{Requests: 1, InputTokens: 20, OutputTokens: 100}, basisReservation},
		{"client gone mid-stream, continuous usage", epChat, outcome{ending: clientGone, answered: true, streamed: true, m: seqs(1, 0, ev{0, u(19, 33)})},
			quota.Amount{Requests: 1, InputTokens: 19, OutputTokens: 33}, basisContinuous},
		{"continuous usage then chunks without", epChat, outcome{ending: clientGone, answered: true, streamed: true, m: seqs(1, 0, ev{0, u(19, 33)}, ev{0, nil}, ev{0, nil})},
			quota.Amount{Requests: 1, InputTokens: 19, OutputTokens: 35}, basisContinuous},
		// Row 1: continuous usage counts each chunk's own sequence.
		{"n 4 cut: every sequence summed, the prompt once", epChat, outcome{ending: clientGone, answered: true, streamed: true,
			m: seqs(4, 0, ev{0, u(49, 10)}, ev{1, u(49, 12)}, ev{2, u(49, 9)}, ev{3, u(49, 11)}, ev{1, u(49, 13)})},
			quota.Amount{Requests: 1, InputTokens: 49, OutputTokens: 10 + 13 + 9 + 11}, basisContinuous},
		{"2 prompts × n 2 cut: each prompt once, every sequence", epCompletions, outcome{ending: broken, answered: true, streamed: true,
			m: seqs(4, 2, ev{0, u(5, 3)}, ev{1, u(5, 4)}, ev{2, u(7, 6)}, ev{3, u(7, 2)})},
			quota.Amount{Requests: 1, InputTokens: 5 + 7, OutputTokens: 3 + 4 + 6 + 2}, basisContinuous},
		{"a sequence beyond those asked for: the reservation", epChat, outcome{ending: clientGone, answered: true, streamed: true, m: seqs(1, 0, ev{0, u(19, 3)}, ev{5, u(19, 3)})},
			quota.Amount{Requests: 1, InputTokens: 20, OutputTokens: 100}, basisReservation},
		{"an unreadable event: the reservation", epChat, outcome{ending: clientGone, answered: true, streamed: true, m: &meter{unknown: true, seqs: make([]seqMeter, 1)}},
			quota.Amount{Requests: 1, InputTokens: 20, OutputTokens: 100}, basisReservation},
		{"client gone mid-stream, chunks", epChat, outcome{ending: clientGone, answered: true, streamed: true, m: seqs(1, 0, ev{0, nil}, ev{0, nil}, ev{0, nil})},
			quota.Amount{Requests: 1, InputTokens: 20, OutputTokens: 3}, basisDelivered},
		{"client gone before the answer", epChat, outcome{ending: clientGone}, quota.Amount{Requests: 1, InputTokens: 20}, basisDelivered},
		{"no answer in time", epChat, outcome{ending: broken}, quota.Amount{Requests: 1, InputTokens: 20}, basisDelivered},
		{"upstream refused", epChat, outcome{ending: refused}, quota.Amount{}, basisNone},
		{"embeddings charge the prompt only", epEmbeddings, outcome{ending: completed, answered: true, m: final(usage{5, 9, 0})}, quota.Amount{Requests: 1, InputTokens: 5}, basisUsage},
		{"tokenize counts a request", epTokenize, outcome{ending: completed, answered: true}, quota.Amount{Requests: 1}, basisUsage},
		{"tokenize refused", epTokenize, outcome{ending: refused}, quota.Amount{}, basisNone},
		{"tokenize cut", epTokenize, outcome{ending: broken}, quota.Amount{}, basisNone},
		{"cached tokens reported", epChat, outcome{ending: completed, answered: true, m: final(usage{40, 7, 32})},
			quota.Amount{Requests: 1, InputTokens: 40, CachedInputTokens: 32, OutputTokens: 7}, basisUsage},
		{"more cached than the prompt is the prompt", epChat, outcome{ending: completed, answered: true, m: final(usage{40, 7, 90})},
			quota.Amount{Requests: 1, InputTokens: 40, CachedInputTokens: 40, OutputTokens: 7}, basisUsage},
		{"zero usage reported for a cut request", epChat, outcome{ending: clientGone, answered: true, streamed: true, m: final(usage{})}, quota.Amount{Requests: 1, InputTokens: 20}, basisUsage},
	} {
		if got, b := settle(tc.ep, est, tc.o); got != tc.want || b != tc.b {
			t.Errorf("%s: settle = %+v on %v, want %+v on %v", tc.name, got, b, tc.want, tc.b)
		}
	}
}

// TestInspectJSON puts the escaped key `\"usage\"` in every position: a key
// inside a string must never be read as the usage.
func TestInspectJSON(t *testing.T) {
	const fake = `"\"usage\":{\"prompt_tokens\":99,\"completion_tokens\":99}"`
	for _, tc := range []struct {
		doc     string
		usage   usage
		has     bool
		choices int
		cut     string // the document with the usage member cut
	}{
		{`{"choices":[ ],"usage":{"prompt_tokens":3,"completion_tokens":4,"prompt_tokens_details":{"cached_tokens":1}}}`, usage{3, 4, 1}, true, 0, `{"choices":[ ]}`},
		{`{"choices":[{"delta":{"content":` + fake + `}}],"usage":null}`, usage{}, false, 1, ""},
		{`{"x":` + fake + `,"choices":[{}],"usage":{"prompt_tokens":1,"completion_tokens":2}}`, usage{1, 2, 0}, true, 1, `{"x":` + fake + `,"choices":[{}]}`},
		{`{"usage":{"prompt_tokens":5,"completion_tokens":6} , "x":` + fake + `,"choices":[]}`, usage{5, 6, 0}, true, 0, `{"x":` + fake + `,"choices":[]}`},
		{`{"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":6},"x":` + fake + `}`, usage{5, 6, 0}, true, 0, `{"choices":[],"x":` + fake + `}`},
		{`{"id":` + fake + `}`, usage{}, false, -1, ""},
		{`{"type":"response.completed","response":{"id":` + fake + `,"usage":{"input_tokens":8,"output_tokens":9}}}`, usage{8, 9, 0}, true, -1, ""},
		{`{"type":"response.completed","response":{"usage":{"input_tokens":8,"input_tokens_details":{"cached_tokens":6},"output_tokens":9}}}`, usage{8, 9, 6}, true, -1, ""},
		{`{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4,"prompt_tokens_details":null}}`, usage{3, 4, 0}, true, 0, ""},
		{`{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4,"prompt_tokens_details":{"cached_tokens":"2"}}}`, usage{3, 4, 0}, true, 0, ""},
	} {
		ci := inspectJSON([]byte(tc.doc))
		if ci.usage != tc.usage || ci.hasUsage != tc.has || ci.choices != tc.choices {
			t.Errorf("%s: %+v, want usage %+v %v choices %d", tc.doc, ci, tc.usage, tc.has, tc.choices)
		}
		if tc.cut != "" {
			got := tc.doc[:ci.cutStart] + tc.doc[ci.cutEnd:]
			if got != tc.cut {
				t.Errorf("cut of %s\n got %s\nwant %s", tc.doc, got, tc.cut)
			}
		}
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
