package metrics

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// BenchmarkScrape is one /metrics scrape of a proxy whose users each made
// a request (three series each), at 10,000 and 50,000 users, plain and
// gzipped as Prometheus asks: the registry's way (promhttp over a registry
// holding the per-user counters, the baseline) and [Metrics.Handler]'s,
// which writes them directly, one after the other in each iteration. It
// reports both times, their ratio and the page's size.
//
//	go test -run '^$' -bench Scrape -benchtime 10x ./internal/metrics
func BenchmarkScrape(b *testing.B) {
	for _, users := range []int{10000, 50000} {
		viaReg := prometheus.NewRegistry()
		observeUsers(New(viaReg, Options{UserLabel: true}), users)
		directReg := prometheus.NewRegistry()
		direct := New(directReg, Options{UserLabel: true, DirectUsers: true})
		observeUsers(direct, users)
		baseline := promhttp.HandlerFor(viaReg, promhttp.HandlerOpts{})
		handler := direct.Handler(directReg)
		for _, enc := range []string{"identity", "gzip"} {
			b.Run(fmt.Sprintf("users=%d/%s", users, enc), func(b *testing.B) {
				var base, dir time.Duration
				var size, baseSize int64
				for b.Loop() {
					t0 := time.Now()
					baseSize = serve(baseline, enc)
					t1 := time.Now()
					size = serve(handler, enc)
					base += t1.Sub(t0)
					dir += time.Since(t1)
				}
				n := float64(b.N)
				b.ReportMetric(float64(base.Microseconds())/1e3/n, "registry-ms")
				b.ReportMetric(float64(dir.Microseconds())/1e3/n, "direct-ms")
				b.ReportMetric(float64(dir)/float64(base), "direct/registry")
				b.ReportMetric(float64(size), "bytes")
				if size != baseSize && enc == "identity" {
					b.Errorf("the direct page has %d bytes, the registry's %d", size, baseSize)
				}
			})
		}
	}
}

// observeUsers has n users (in ten namespaces) each make one chat request.
func observeUsers(m *Metrics, n int) {
	for i := range n {
		m.ObserveRequest(Request{Namespace: fmt.Sprintf("team-%d", i%10), User: fmt.Sprintf("user-%d", i), Model: "org/model",
			Operation: OperationChat, Code: 200, InputTokens: 10, OutputTokens: 16})
	}
}

// serve scrapes h once, as a scraper accepting enc, and returns the bytes
// sent.
func serve(h http.Handler, enc string) int64 {
	req := httptest.NewRequest(http.MethodGet, "/metrics", nil)
	req.Header.Set("Accept-Encoding", enc)
	w := httptest.NewRecorder()
	h.ServeHTTP(w, req)
	n, _ := io.Copy(io.Discard, w.Body)
	return n
}
