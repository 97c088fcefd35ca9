#!/usr/bin/env bash
# Builds the project's image without a registry or a Docker engine, laid out
# as the Dockerfile lays it out: /manager and /proxy built as its build stage
# builds them, on the distroless static:nonroot layout (CA certificates,
# /etc/passwd, /tmp), user 65532:65532, entrypoint /manager. Writes a
# docker-archive tarball for `ctr images import`.
# test/cluster's TestImageMatchesDockerfile fails when the two drift.
#
# usage: hack/image.sh OUT.tar [TAG]   (TAG: localhost/llm-user-operator:dev)
set -euo pipefail
out=${1:?usage: hack/image.sh OUT.tar [TAG]}
tag=${2:-localhost/llm-user-operator:dev}
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
imgbuild=$("${root}/hack/imgbuild.sh")
build="${root}/bin/image"
mkdir -p "${build}"
(
  cd "${root}"
  export CGO_ENABLED=0 GOOS=linux GOARCH=amd64
  go build -trimpath -ldflags="-s -w" -o "${build}/manager" ./cmd/manager
  go build -trimpath -ldflags="-s -w" -o "${build}/proxy" ./cmd/proxy
)
"${imgbuild}" -tag "${tag}" -out "${out}" -base static-nonroot \
  -user 65532:65532 -entrypoint /manager \
  "${build}/manager=/manager" "${build}/proxy=/proxy"
