package proxy

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
)

// vllmStream streams exactly as vLLM's servers do, sequence by sequence:
//
//   - chat (chat_completion/serving.py, chat_completion_stream_generator):
//     one role chunk per choice, then one chunk per choice per step, each
//     with continuous usage counting its own choice (prompt_tokens the whole
//     prompt, completion_tokens = previous_num_tokens[i]), then the final
//     usage chunk (choices [], the prompt once, the sum of every choice) and
//     [DONE];
//   - completions (completion/serving.py): choice i + prompt_idx*n, each
//     chunk's usage that prompt's tokens and that choice's; the final usage
//     sums the prompts and every choice;
//   - beam search: the whole answer of each choice in one chunk (and, for
//     completions as older vLLM streamed it, the whole response with its
//     usage in one event);
//   - the Responses API (responses/serving.py): event: lines, reasoning,
//     function-call and text deltas, usage in response.completed only, no
//     [DONE].
//
// Every generated token is one "t" of text, so a client counts what it was
// delivered by reading the text.
type vllmStream struct {
	path    string
	prompts []int64 // prompt tokens of each prompt
	n       int
	steps   int // tokens per sequence
	beam    bool
	// reasoning, args, text: the Responses API's deltas of each kind.
	reasoning, args, text int
	// metadata pads response.created and response.completed.
	metadata int
	// noUsage: an upstream that ignores stream_options.
	noUsage bool
	// breakAfter: the upstream drops the connection after this many events
	// (0: never).
	breakAfter int
	// hold: after the output, wait for the client to leave before the final
	// usage (a client that leaves just before it).
	hold bool
}

// event is one SSE event and the tokens of output it carries.
type event struct {
	text   string
	tokens int64
}

func (v *vllmStream) events(includeUsage, continuous bool) []event {
	if v.noUsage {
		includeUsage, continuous = false, false
	}
	var evs []event
	chunk := func(obj string, u string) string {
		if u != "" {
			obj = obj[:len(obj)-1] + `,"usage":` + u + `}`
		}
		return "data: " + obj + "\n\n"
	}
	usageOf := func(p, c int64) string {
		return fmt.Sprintf(`{"prompt_tokens":%d,"total_tokens":%d,"completion_tokens":%d}`, p, p+c, c)
	}
	var allPrompt, allOut int64
	for _, p := range v.prompts {
		allPrompt += p
	}
	switch v.path {
	case "/v1/responses":
		created := `{"type":"response.created","sequence_number":0,"response":{"id":"resp_1","metadata":{"pad":"` + strings.Repeat("m", v.metadata) + `"},"status":"in_progress","usage":null}}`
		evs = append(evs, event{text: "event: response.created\ndata: " + created + "\n\n"})
		seq := 1
		add := func(typ, extra string, tokens int64) {
			evs = append(evs, event{text: fmt.Sprintf("event: %s\ndata: {\"type\":%q,\"sequence_number\":%d%s}\n\n", typ, typ, seq, extra), tokens: tokens})
			seq++
		}
		add("response.in_progress", `,"response":{"id":"resp_1","usage":null}`, 0)
		if v.reasoning > 0 {
			add("response.output_item.added", `,"output_index":0,"item":{"type":"reasoning","id":"rs_1"}`, 0)
			add("response.reasoning_part.added", `,"item_id":"rs_1","output_index":0,"content_index":0,"part":{"type":"reasoning_text","text":""}`, 0)
			for range v.reasoning {
				add("response.reasoning_text.delta", `,"item_id":"rs_1","output_index":0,"content_index":0,"delta":"t"`, 1)
			}
			add("response.reasoning_text.done", `,"item_id":"rs_1","output_index":0,"content_index":0,"text":"`+strings.Repeat("t", v.reasoning)+`"`, 0)
		}
		if v.args > 0 {
			add("response.output_item.added", `,"output_index":1,"item":{"type":"function_call","id":"fc_1","arguments":""}`, 0)
			for range v.args {
				add("response.function_call_arguments.delta", `,"item_id":"fc_1","output_index":1,"delta":"t"`, 1)
			}
		}
		for range v.text {
			add("response.output_text.delta", `,"item_id":"msg_1","output_index":2,"content_index":0,"delta":"t"`, 1)
		}
		out := int64(v.reasoning + v.args + v.text)
		add("response.completed", fmt.Sprintf(`,"response":{"id":"resp_1","metadata":{"pad":"%s","usage":{"input_tokens":1,"output_tokens":1}},"status":"completed","usage":{"input_tokens":%d,"input_tokens_details":{"cached_tokens":0},"output_tokens":%d,"output_tokens_details":{"reasoning_tokens":%d},"total_tokens":%d},"user":null}`,
			strings.Repeat("m", v.metadata), allPrompt, out, v.reasoning, allPrompt+out), 0)
		return evs
	case "/v1/chat/completions":
		prompt := v.prompts[0]
		for i := range v.n {
			u := ""
			if continuous {
				u = usageOf(prompt, 0)
			}
			evs = append(evs, event{text: chunk(fmt.Sprintf(`{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":%d,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]}`, i), u)})
		}
		emit := func(i, done, tokens int) {
			u := ""
			if continuous {
				u = usageOf(prompt, int64(done))
			}
			evs = append(evs, event{text: chunk(fmt.Sprintf(`{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":%d,"delta":{"content":"%s"},"logprobs":null,"finish_reason":null}]}`, i, strings.Repeat("t", tokens)), u), tokens: int64(tokens)})
		}
		if v.beam {
			for i := range v.n {
				emit(i, v.steps, v.steps)
			}
		} else {
			for step := 1; step <= v.steps; step++ {
				for i := range v.n {
					emit(i, step, 1)
				}
			}
		}
		allOut = int64(v.n * v.steps)
		if includeUsage {
			evs = append(evs, event{text: chunk(`{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"m","choices":[]}`, usageOf(prompt, allOut))})
		}
	case "/v1/completions":
		allOut = int64(len(v.prompts) * v.n * v.steps)
		if v.beam {
			// Older vLLM's fake_stream_generator: the whole response as one
			// event, usage included.
			var choices []string
			for i := range len(v.prompts) * v.n {
				choices = append(choices, fmt.Sprintf(`{"index":%d,"text":"%s","logprobs":null,"finish_reason":"length"}`, i, strings.Repeat("t", v.steps)))
			}
			evs = append(evs, event{text: chunk(`{"id":"cmpl-1","object":"text_completion","created":1,"model":"m","choices":[`+strings.Join(choices, ",")+`]}`, usageOf(allPrompt, allOut)), tokens: allOut})
			break
		}
		for step := 1; step <= v.steps; step++ {
			for p, pt := range v.prompts {
				for j := range v.n {
					u := ""
					if continuous {
						u = usageOf(pt, int64(step))
					}
					evs = append(evs, event{text: chunk(fmt.Sprintf(`{"id":"cmpl-1","object":"text_completion","created":1,"model":"m","choices":[{"index":%d,"text":"t","logprobs":null,"finish_reason":null}]}`, j+p*v.n), u), tokens: 1})
				}
			}
		}
		if includeUsage {
			evs = append(evs, event{text: chunk(`{"id":"cmpl-1","object":"text_completion","created":1,"model":"m","choices":[]}`, usageOf(allPrompt, allOut))})
		}
	}
	return append(evs, event{text: doneEvent})
}

// serve streams the events; with hold, it stops after the last output
// event and waits for the client to go.
func (v *vllmStream) serve(w http.ResponseWriter, r *http.Request, body []byte) {
	final, continuous := streamOptions(body)
	evs := v.events(final, continuous)
	w.Header().Set("Content-Type", "text/event-stream")
	fl := w.(http.Flusher)
	lastOutput := 0
	for i, ev := range evs {
		if ev.tokens > 0 {
			lastOutput = i
		}
	}
	for i, ev := range evs {
		if v.breakAfter > 0 && i == v.breakAfter {
			panic(http.ErrAbortHandler) // the connection drops mid-stream
		}
		if v.hold && i > lastOutput {
			<-r.Context().Done()
			return
		}
		if _, err := io.WriteString(w, ev.text); err != nil {
			return
		}
		fl.Flush()
	}
}

// readDelivered reads SSE events from r until it has seen want output
// events (all of them when want < 0) and returns the generated tokens they
// delivered: the "t"s of their text.
func readDelivered(t *testing.T, r io.Reader, want int) (tokens int64, events int) {
	t.Helper()
	br := bufio.NewReader(r)
	var data strings.Builder
	for want < 0 || events < want {
		line, err := br.ReadString('\n')
		if err != nil {
			return tokens, events
		}
		line = strings.TrimRight(line, "\r\n")
		if line != "" {
			if d, ok := strings.CutPrefix(line, "data: "); ok {
				data.WriteString(d)
			}
			continue
		}
		n := generated(data.String())
		data.Reset()
		if n > 0 {
			tokens += n
			events++
		}
	}
	return tokens, events
}

// generated counts the "t"s of the generated text in one event's data.
func generated(data string) int64 {
	var ev struct {
		Type    string `json:"type"`
		Delta   string `json:"delta"`
		Choices []struct {
			Text  string `json:"text"`
			Delta struct {
				Content string `json:"content"`
			} `json:"delta"`
		} `json:"choices"`
	}
	if json.Unmarshal([]byte(data), &ev) != nil {
		return 0
	}
	var n int64
	if strings.HasSuffix(ev.Type, ".delta") {
		n += int64(strings.Count(ev.Delta, "t"))
	}
	for _, c := range ev.Choices {
		n += int64(strings.Count(c.Text+c.Delta.Content, "t"))
	}
	return n
}
