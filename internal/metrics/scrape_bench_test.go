package metrics

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// BenchmarkScrape10kUsers is one /metrics scrape of a proxy whose 10,000
// users each made a request: the series a Prometheus pays for at that scale.
func BenchmarkScrape10kUsers(b *testing.B) {
	reg := prometheus.NewRegistry()
	m := New(reg, Options{UserLabel: true})
	for i := range 10000 {
		m.ObserveRequest(Request{Namespace: fmt.Sprintf("team-%d", i%10), User: fmt.Sprintf("user-%d", i), Model: "org/model",
			Operation: OperationChat, Code: 200, InputTokens: 10, OutputTokens: 16})
	}
	h := promhttp.HandlerFor(reg, promhttp.HandlerOpts{})
	for _, enc := range []string{"identity", "gzip"} {
		b.Run(enc, func(b *testing.B) {
			var size int
			for b.Loop() {
				req := httptest.NewRequest(http.MethodGet, "/metrics", nil)
				req.Header.Set("Accept-Encoding", enc)
				w := httptest.NewRecorder()
				h.ServeHTTP(w, req)
				n, _ := io.Copy(io.Discard, w.Body)
				size = int(n)
			}
			b.ReportMetric(float64(size), "bytes")
		})
	}
}
