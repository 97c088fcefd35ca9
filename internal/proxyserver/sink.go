package proxyserver

import (
	"context"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/llm-user-operator/llm-user-operator/internal/proxy"
	"github.com/llm-user-operator/llm-user-operator/internal/quota"
	"github.com/llm-user-operator/llm-user-operator/internal/usage"
)

// sink adapts the usage recorder to the proxy's UsageSink, keeping package
// proxy and package usage independent of each other.
type sink struct{ rec *usage.Recorder }

func newSink(c client.Client, dir *Directory, o Options, reg prometheus.Registerer, log logr.Logger) (*sink, error) {
	return &sink{rec: usage.New(c, usage.Options{
		FlushInterval: o.FlushInterval, Limits: dir.Limits, Registerer: reg,
		Logger: log.WithName("usage"),
	})}, nil
}

// Charge converts directly: the two Charge types have the same fields, and
// the conversion stops compiling if they ever drift apart.
func (s *sink) Charge(c proxy.Charge) { s.rec.Charge(usage.Charge(c)) }

func (s *sink) run(ctx context.Context) { _ = s.rec.Start(ctx) }

func (s *sink) flush(ctx context.Context) error { return s.rec.Flush(ctx) }

func (s *sink) seed(ctx context.Context, counter quota.Counter, r client.Reader) error {
	return usage.SeedFromStatus(ctx, counter, r, time.Now())
}
