package proxy

// meter adds up what a stream delivered, sequence by sequence. vLLM's
// continuous usage on a chunk counts that chunk's own sequence: its prompt
// and the tokens generated for it so far (chat_completion/serving.py and
// completion/serving.py: completion_tokens = previous_num_tokens[i]), so a
// stream of several sequences cut short costs the sum over every sequence
// and every prompt, not the last chunk's numbers.
type meter struct {
	// perPrompt is the sequences of each prompt when prompts are reported
	// apart (completions: choice i belongs to prompt i / n); 0 when every
	// sequence shares one prompt (chat, responses).
	perPrompt int64
	seqs      []seqMeter
	one       [1]seqMeter
	// final is the whole request's usage, when haveFinal.
	final     usage
	haveFinal bool
	// haveCont: at least one chunk carried continuous usage.
	haveCont bool
	// unknown: output went by that could not be read (an oversized event
	// without usage, or a sequence index beyond those the request asked
	// for), so what was delivered is not known.
	unknown bool
	// events counts the output events.
	events int64
}

// seqMeter is one sequence: its prompt and output as last reported, and
// the output events since that report, each at least one token.
type seqMeter struct {
	prompt, completion, since int64
}

// maxTrackedSeqs bounds the memory of one stream's meter.
const maxTrackedSeqs = 1 << 16

// newMeter meters a stream of seqs sequences, perPrompt of them per prompt
// when prompts are reported apart.
func (m *meter) init(seqs, perPrompt int64) {
	m.perPrompt = perPrompt
	if seqs <= 1 {
		m.seqs = m.one[:]
		return
	}
	m.seqs = make([]seqMeter, min(seqs, maxTrackedSeqs))
}

// output records one output event of sequence index (n choices in it,
// counted as n tokens), with the continuous usage it carried (nil if none).
func (m *meter) output(index int64, n int, u *usage) {
	m.events += int64(max(n, 1))
	if index < 0 {
		index = 0 // an API without choices (the Responses API): one sequence
	}
	if index >= int64(len(m.seqs)) {
		m.unknown = true
		return
	}
	s := &m.seqs[index]
	if u != nil {
		m.haveCont = true
		s.prompt, s.completion, s.since = u.Prompt, u.Completion, 0
		return
	}
	s.since += int64(max(n, 1))
}

// continuous is the stream's usage summed over every sequence and prompt:
// each sequence's last reported output plus the events since, and each
// prompt once.
func (m *meter) continuous() usage {
	var u usage
	var groupMax int64
	for i := range m.seqs {
		s := &m.seqs[i]
		u.Completion += s.completion + s.since
		if m.perPrompt > 0 && int64(i)%m.perPrompt == 0 {
			u.Prompt += groupMax
			groupMax = 0
		}
		groupMax = max(groupMax, s.prompt)
	}
	u.Prompt += groupMax
	return u
}

// delivered is the output events seen, each at least one token.
func (m *meter) delivered() int64 { return m.events }
