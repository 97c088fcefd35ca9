#!/usr/bin/env bash
# `make bench`: the proxy overhead benchmark. Builds the static upstream, the
# proxy-arm runner and the load generator into ./bin, gets the vLLM simulator,
# and runs the load generator on CPU 1 (it starts every proxy arm on CPU 0).
# All traffic stays on 127.0.0.1. Results: bench/results/<UTC time>.md and
# bench/results/latest.md. Extra arguments go to the load generator, e.g.
# `hack/bench.sh --quick` or `hack/bench.sh --rounds 5`; `--help` lists them.
set -euo pipefail
cd "$(dirname "$0")/.."
export GOFLAGS=${GOFLAGS:--buildvcs=false}

for p in upstream proxyarm load; do
  CGO_ENABLED=0 go build -trimpath -o "bin/bench-${p}" "./hack/bench/${p}"
done
sim=$(hack/simulator.sh)

pin=()
if command -v taskset >/dev/null && [ "$(nproc --all)" -ge 2 ]; then
  pin=(taskset -c 1)
fi
exec "${pin[@]}" bin/bench-load --bin bin --simulator "${sim}" "$@"
