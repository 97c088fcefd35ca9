#!/usr/bin/env bash
# Builds llm-d-inference-sim, the vLLM-compatible simulator used by the
# end-to-end tests and `make run`, from the Go module proxy into ./bin, and
# prints its path. It is a program, not a library: it is built in its own
# module directory and never enters our go.mod. Pinned; idempotent.
set -euo pipefail

SIM_VERSION=${LLM_SIM_VERSION:-v0.10.2}
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out="${root}/bin/llm-d-inference-sim-${SIM_VERSION}"
user_cache="${XDG_CACHE_HOME:-${HOME}/.cache}/llm-user-operator/llm-d-inference-sim-${SIM_VERSION}"

if [ -x "${out}" ]; then echo "${out}"; exit 0; fi
mkdir -p "${root}/bin"
if [ -x "${user_cache}" ]; then
  cp -f "${user_cache}" "${out}.tmp" && mv -f "${out}.tmp" "${out}"
  echo "${out}"; exit 0
fi

echo "simulator: building github.com/llm-d/llm-d-inference-sim@${SIM_VERSION}" >&2
work="${root}/bin/.sim-build"
mkdir -p "${work}"
(
  cd "${work}"
  [ -f go.mod ] || go mod init sim-build >/dev/null 2>&1
  export GOFLAGS=-mod=mod CGO_ENABLED=0
  go get "github.com/llm-d/llm-d-inference-sim@${SIM_VERSION}" >&2
  pkg=github.com/llm-d/llm-d-inference-sim/cmd/llm-d-inference-sim
  go build -trimpath -o "${out}.tmp" "${pkg}" >&2
)
mv -f "${out}.tmp" "${out}"
mkdir -p "$(dirname "${user_cache}")" && cp -f "${out}" "${user_cache}"
echo "${out}"
