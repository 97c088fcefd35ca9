package proxyserver

import (
	"flag"
	"maps"
	"strings"
	"testing"
	"time"
)

// TestFairQueueFlags: the fair queue's flags, as the operator writes them,
// reach proxy.FairQueue; bad ones say what to fix.
func TestFairQueueFlags(t *testing.T) {
	o := Defaults()
	fs := flag.NewFlagSet("proxy", flag.ContinueOnError)
	o.BindFlags(fs)
	if err := fs.Parse([]string{"--upstreams=http://vllm:8000,http://small:8000", "--max-in-flight-per-upstream=16",
		"--upstream-max-in-flight=http://small:8000=4,http://vllm:8000=64", "--queue-timeout=5s", "--max-queued=50", "--max-queued-per-user=7", "--reserved-slots=2"}); err != nil {
		t.Fatal(err)
	}
	fq := o.FairQueue
	if fq.MaxInFlight != 16 || fq.QueueTimeout != 5*time.Second || fq.MaxQueued != 50 || fq.MaxQueuedPerFlow != 7 || fq.Reserved != 2 ||
		!maps.Equal(fq.PerUpstream, map[string]int{"http://small:8000": 4, "http://vllm:8000": 64}) {
		t.Errorf("fair queue %+v", fq)
	}
	if err := o.Validate(); err != nil {
		t.Errorf("valid flags refused: %v", err)
	}

	o = Defaults()
	fs = flag.NewFlagSet("proxy", flag.ContinueOnError)
	o.BindFlags(fs)
	if err := fs.Parse([]string{"--upstreams=http://vllm:8000"}); err != nil {
		t.Fatal(err)
	}
	if fq := o.FairQueue; fq.MaxInFlight != 0 || fq.QueueTimeout != 30*time.Second || fq.MaxQueued != 1000 || fq.MaxQueuedPerFlow != 100 {
		t.Errorf("default fair queue %+v: want no limit, 30s, 1000, 100", fq)
	}

	fs = flag.NewFlagSet("proxy", flag.ContinueOnError)
	fs.SetOutput(new(strings.Builder))
	o.BindFlags(fs)
	if err := fs.Parse([]string{"--upstream-max-in-flight=http://vllm:8000"}); err == nil || !strings.Contains(err.Error(), "is not URL=N") {
		t.Errorf("a pair without =N: %v", err)
	}
	o.FairQueue.Reserved = -1
	if err := o.Validate(); err == nil || !strings.Contains(err.Error(), "--reserved-slots must not be negative, not -1") {
		t.Errorf("--reserved-slots=-1: %v", err)
	}
	o.FairQueue.Reserved = 0
	o.FairQueue.MaxQueued = 0
	if err := o.Validate(); err == nil || !strings.Contains(err.Error(), "--max-queued (0)") {
		t.Errorf("--max-queued=0: %v", err)
	}
}
