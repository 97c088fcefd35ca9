#!/usr/bin/env bash
# `make bench-fairness`: the proxy's fair queue against FCFS in front of a
# busy llm-d-inference-sim (hack/bench/fairness). Builds the proxy arm and
# the benchmark into ./bin and gets the simulator. Results:
# bench/results/fairness-<UTC time>.md and bench/results/fairness-latest.md.
# Extra arguments go to the benchmark; `--help` lists them.
set -euo pipefail
cd "$(dirname "$0")/.."
export GOFLAGS=${GOFLAGS:--buildvcs=false}

for p in proxyarm fairness; do
  CGO_ENABLED=0 go build -trimpath -o "bin/bench-${p}" "./hack/bench/${p}"
done
sim=$(hack/simulator.sh)
exec bin/bench-fairness --bin bin --simulator "${sim}" "$@"
