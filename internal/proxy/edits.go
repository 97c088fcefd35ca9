package proxy

import (
	"slices"
	"strconv"
)

// The proxy changes a request body surgically: it splices in the members it
// must set and leaves every other byte as the client sent it.

// splice replaces body[start:end] with text.
type splice struct {
	start, end int
	text       []byte
}

// applySplices writes body with the splices (not overlapping) applied into dst.
func applySplices(dst, body []byte, sp []splice) []byte {
	slices.SortStableFunc(sp, func(a, b splice) int { return a.start - b.start })
	last := 0
	for _, s := range sp {
		dst = append(dst, body[last:s.start]...)
		dst = append(dst, s.text...)
		last = s.end
	}
	return append(dst, body[last:]...)
}

// setCap sets the endpoint's first cap field to v: its value is replaced
// when the member exists (the last occurrence, the one Python reads), and
// the member is added otherwise. Another cap field the request gave in a
// form that is not a plain integer gets v too, so that no upstream, however
// strictly it parses, reads anything else.
func (pr *parsed) setCap(ep *endpoint, v int64, sp []splice) []splice {
	text := strconv.AppendInt(make([]byte, 0, 24), v, 10)
	for i := 1; i < len(ep.capFields); i++ {
		if c := pr.caps[i]; c.present && !c.canonical {
			sp = append(sp, splice{start: c.start, end: c.end, text: text})
		}
	}
	if c := pr.caps[0]; c.present {
		return append(sp, splice{start: c.start, end: c.end, text: text})
	}
	member := make([]byte, 0, len(text)+len(ep.capField())+4)
	member = append(member, `,"`...)
	member = append(member, ep.capField()...)
	member = append(member, `":`...)
	member = append(member, text...)
	return append(sp, splice{start: pr.closeBrace, end: pr.closeBrace, text: member})
}

// meterStream asks the upstream for the usage of a stream: on the last
// chunk (include_usage) and, with continuous, on every chunk
// (continuous_usage_stats, which vLLM honours), so that a stream cut short is
// charged what it generated. It reports which of the two the client did not
// ask for: what the relay must hide again.
func (pr *parsed) meterStream(body []byte, sp []splice, continuous bool) (_ []splice, hideFinal, hideContinuous bool) {
	hideFinal = !pr.includeUsage
	hideContinuous = continuous && (!pr.includeUsage || !pr.continuousUsage)
	if !hideFinal && !hideContinuous {
		return sp, false, false
	}
	options := `{"include_usage":true}`
	if continuous {
		options = `{"include_usage":true,"continuous_usage_stats":true}`
	}
	if pr.streamOpts.start < 0 {
		return append(sp, splice{start: pr.closeBrace, end: pr.closeBrace, text: []byte(`,"stream_options":` + options)}), hideFinal, hideContinuous
	}
	so := body[pr.streamOpts.start:pr.streamOpts.end]
	if isNull(so) {
		return append(sp, splice{start: pr.streamOpts.start, end: pr.streamOpts.end, text: []byte(options)}), hideFinal, hideContinuous
	}
	// An object: set each member to true where it is not, or add it.
	var last [2]member
	var found [2]bool
	it := newObjIter(so, 0)
	for m, ok := it.next(); ok; m, ok = it.next() {
		switch string(m.key) {
		case "include_usage":
			last[0], found[0] = m, true
		case "continuous_usage_stats":
			last[1], found[1] = m, true
		}
	}
	names := [2]string{"include_usage", "continuous_usage_stats"}
	want := [2]bool{hideFinal, hideContinuous}
	var add []byte
	for i := range names {
		switch {
		case !want[i]:
		case found[i]:
			sp = append(sp, splice{start: pr.streamOpts.start + last[i].valStart, end: pr.streamOpts.start + last[i].valEnd, text: []byte("true")})
		default:
			if len(add) > 0 {
				add = append(add, ',')
			}
			add = append(add, `"`+names[i]+`":true`...)
		}
	}
	if len(add) > 0 {
		if it.n > 0 {
			add = append(add, ',')
		}
		at := pr.streamOpts.start + it.start + 1
		sp = append(sp, splice{start: at, end: at, text: add})
	}
	return sp, hideFinal, hideContinuous
}
