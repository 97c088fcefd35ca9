package metrics

import (
	"bufio"
	"compress/gzip"
	"io"
	"math"
	"net/http"
	"strconv"
	"strings"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/common/expfmt"
)

// Handler serves /metrics in the Prometheus text format: g's families, and,
// with [Options.DirectUsers], the per-user counters written straight from
// their map, each family in its place by name, byte for byte what the
// registry would have written. The registry builds a message for every
// series and checks it for duplicates; at 50,000 users that is 150,000
// messages a scrape, most of the scrape's cost. The response is gzipped
// (fastest level) when the scraper accepts it, as Prometheus does.
func (m *Metrics) Handler(g prometheus.Gatherer) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mfs, err := g.Gather()
		if err != nil {
			http.Error(w, "gathering the metrics: "+err.Error(), http.StatusInternalServerError)
			return
		}
		h := w.Header()
		h.Set("Content-Type", string(expfmt.NewFormat(expfmt.TypeTextPlain)))
		h.Add("Vary", "Accept-Encoding")
		var out io.Writer = w
		if gzipAccepted(r.Header) {
			h.Set("Content-Encoding", "gzip")
			gz := gzipPool.Get().(*gzip.Writer)
			gz.Reset(w)
			defer func() {
				_ = gz.Close()
				gzipPool.Put(gz)
			}()
			out = gz
		}
		bw := bufio.NewWriterSize(out, 64<<10)
		defer func() { _ = bw.Flush() }() // before the gzip stream is closed
		var users []textFamily
		if m.direct {
			users = m.users.families()
		}
		for _, mf := range mfs {
			for len(users) > 0 && users[0].name < mf.GetName() {
				users[0].write(bw)
				users = users[1:]
			}
			if _, err := expfmt.MetricFamilyToText(bw, mf); err != nil {
				return // the scraper left
			}
		}
		for _, f := range users {
			f.write(bw)
		}
	})
}

var gzipPool = sync.Pool{New: func() any {
	gz, _ := gzip.NewWriterLevel(nil, gzip.BestSpeed)
	return gz
}}

// gzipAccepted reports whether the request's Accept-Encoding offers gzip.
func gzipAccepted(h http.Header) bool {
	for _, v := range h.Values("Accept-Encoding") {
		for part := range strings.SplitSeq(v, ",") {
			part = strings.TrimSpace(part)
			if part == "gzip" || strings.HasPrefix(part, "gzip;") {
				return true
			}
		}
	}
	return false
}

// textFamily is one metric family written as text.
type textFamily struct {
	name  string
	write func(w *bufio.Writer)
}

// families returns the per-user families that have series, sorted by name,
// as writers of their text from one snapshot of the counters.
func (u *userCounters) families() []textFamily {
	entries, costs := u.snapshot()
	var out []textFamily
	if len(entries) > 0 {
		out = append(out, textFamily{"llm_proxy_requests_total", func(w *bufio.Writer) {
			var b []byte
			writeHeader(w, "llm_proxy_requests_total", helpRequests)
			for _, e := range entries {
				b = appendSample(b[:0], "llm_proxy_requests_total", float64(e.c.requests.Load()),
					"model", e.model, "namespace", e.namespace, "user", e.user)
				_, _ = w.Write(b)
			}
		}})
		tokens := false
		for _, e := range entries {
			tokens = tokens || e.c.tokens.Load()
		}
		if tokens {
			out = append(out, textFamily{"llm_proxy_tokens_total", func(w *bufio.Writer) {
				var b []byte
				writeHeader(w, "llm_proxy_tokens_total", helpTokens)
				tokenSeries(entries, func(e userEntry, typ string, v uint64) {
					b = appendSample(b[:0], "llm_proxy_tokens_total", float64(v),
						"model", e.model, "namespace", e.namespace, "type", typ, "user", e.user)
					_, _ = w.Write(b)
				})
			}})
		}
	}
	if len(costs) > 0 {
		out = append(out, textFamily{"llm_user_cost_total", func(w *bufio.Writer) {
			var b []byte
			writeHeader(w, "llm_user_cost_total", helpCost)
			for _, e := range costs {
				b = appendSample(b[:0], "llm_user_cost_total", float64(e.c.Load())/picoPerUnit,
					"currency", e.currency, "model", e.model, "namespace", e.namespace, "user", e.user)
				_, _ = w.Write(b)
			}
		}})
	}
	return out
}

// writeHeader writes a counter family's HELP and TYPE lines.
func writeHeader(w *bufio.Writer, name, help string) {
	_, _ = w.WriteString("# HELP " + name + " " + helpEscaper.Replace(help) + "\n# TYPE " + name + " counter\n")
}

var (
	helpEscaper  = strings.NewReplacer(`\`, `\\`, "\n", `\n`)
	labelEscaper = strings.NewReplacer(`\`, `\\`, "\n", `\n`, `"`, `\"`)
)

// appendSample appends one sample line: name, the labels (name, value
// pairs, in label-name order as the registry writes them) and v.
func appendSample(b []byte, name string, v float64, labels ...string) []byte {
	b = append(b, name...)
	for i := 0; i+1 < len(labels); i += 2 {
		if i == 0 {
			b = append(b, '{')
		} else {
			b = append(b, ',')
		}
		b = append(b, labels[i]...)
		b = append(b, '=', '"')
		b = appendLabelValue(b, labels[i+1])
		b = append(b, '"')
	}
	if len(labels) > 0 {
		b = append(b, '}')
	}
	b = append(b, ' ')
	return append(appendValue(b, v), '\n')
}

// appendLabelValue appends v escaped as a label value.
func appendLabelValue(b []byte, v string) []byte {
	if !strings.ContainsAny(v, "\\\n\"") {
		return append(b, v...)
	}
	return append(b, labelEscaper.Replace(v)...)
}

// appendValue appends f as the text format writes a sample value.
func appendValue(b []byte, f float64) []byte {
	switch {
	case math.IsNaN(f):
		return append(b, "NaN"...)
	case math.IsInf(f, +1):
		return append(b, "+Inf"...)
	case math.IsInf(f, -1):
		return append(b, "-Inf"...)
	}
	return strconv.AppendFloat(b, f, 'g', -1, 64)
}
