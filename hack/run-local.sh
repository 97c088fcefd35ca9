#!/usr/bin/env bash
# `make run`: a local control plane, the operator, the proxy it reconciles and
# a vLLM simulator (or VLLM_URL). State persists in bin/run (etcd data);
# `make run-clean` removes it.
set -euo pipefail
cd "$(dirname "$0")/.."
KUBEBUILDER_ASSETS="$(hack/envtest-assets.sh)"
KUBE_TOOLS_DIR="$(hack/kube-tools.sh)"
export KUBEBUILDER_ASSETS KUBE_TOOLS_DIR
if [ -z "${VLLM_URL:-}" ]; then
  LLM_SIM_BINARY="$(hack/simulator.sh)"
  export LLM_SIM_BINARY
fi
exec go run ./hack/run-local --bin bin --state bin/run "$@"
