#!/usr/bin/env bash
# `make run`: the local control plane, operator, proxy and vLLM simulator.
set -euo pipefail
cd "$(dirname "$0")/.."
export KUBEBUILDER_ASSETS="$(hack/envtest-assets.sh)"
export LLM_SIM_BINARY="$(hack/simulator.sh)"
exec go run ./hack/run-local --bin bin --simulator "${LLM_SIM_BINARY}" "$@"
