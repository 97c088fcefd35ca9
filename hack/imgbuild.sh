#!/usr/bin/env bash
# Builds the image builder (hack/tools/imgbuild, pinned in its own module)
# into ./bin if its sources changed, and prints its path.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out="${root}/bin/imgbuild"
src="${root}/hack/tools/imgbuild"
if [ ! -x "${out}" ] || [ -n "$(find "${src}" -newer "${out}" -type f)" ]; then
  mkdir -p "${root}/bin"
  (cd "${src}" && CGO_ENABLED=0 go build -o "${out}.tmp" . >&2)
  mv -f "${out}.tmp" "${out}"
fi
echo "${out}"
