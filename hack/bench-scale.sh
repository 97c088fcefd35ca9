#!/usr/bin/env bash
# `make bench-scale`: the scale benchmark (issue 10). Not part of make test.
#   1. hack/bench-scale/operator: N users onboarded by the operator against a
#      fresh API server, timed against the API server's own floor for the
#      same writes; the operator's writes while idle.
#   2. test/scale (go test -tags scale): the operator, the proxy (run from the
#      reconciled pod template) and N users; idle writes, one request per
#      user, the flush to status against the API server's own write counts,
#      the /metrics scrape.
#   3. internal/quota's BenchmarkAdmissionLatency: what one admission and its
#      settle wait for the counter store, in-process, on one Redis and on a
#      Redis Cluster (p50, p99, the ratio to in-process).
# Results: bench/results/scale-<UTC time>.md and bench/results/scale-latest.md.
# SCALE_USERS (default 10000) sets N.
set -euo pipefail
cd "$(dirname "$0")/.."
users=${SCALE_USERS:-10000}
export KUBEBUILDER_ASSETS=${KUBEBUILDER_ASSETS:-$(hack/envtest-assets.sh)}
export LLM_SIM_BINARY=${LLM_SIM_BINARY:-$(hack/simulator.sh)}
export KUBE_TOOLS_DIR=${KUBE_TOOLS_DIR:-$(hack/kube-tools.sh | tail -1)}
results=$(mktemp)
trap 'rm -f "${results}"' EXIT

echo "== operator: ${users} users" >&2
go run ./hack/bench-scale/operator -users "${users}" >>"${results}"
echo "== operator and proxy: ${users} users" >&2
SCALE_USERS=${users} SCALE_REPORT=${results} go test -tags scale -run TestScale -count=1 -timeout 60m -v ./test/scale >&2

echo "== the counter store's round trip per admission: in-process, Redis, Redis Cluster" >&2
BENCH_REPORT=${results} go test -run '^$' -bench AdmissionLatency -benchtime 20000x -count=1 ./internal/quota >&2

mkdir -p bench/results
out=bench/results/scale-$(date -u +%Y%m%dT%H%M%SZ).md
go run ./hack/bench-scale/report -in "${results}" -out "${out}"
cp "${out}" bench/results/scale-latest.md
cat "${out}"
