#!/usr/bin/env bash
# Makes kube-controller-manager and kubectl available, built from the same
# pinned k8s.io/kubernetes as the envtest kube-apiserver (hack/envtest-assets.sh),
# and prints the directory that holds them. Idempotent and pinned.
#
# Why build them: envtest runs no kube-controller-manager, so without it no
# owner reference is ever garbage-collected and no Deployment gets a
# ReplicaSet; and Debian's kubectl is 1.20, far outside the supported version
# skew of a 1.37 API server. Neither is published on the Go module proxy as a
# binary, and nothing else can be downloaded in CI.
#
# Order of preference:
#   1. $KUBE_TOOLS_DIR, if it already holds both binaries;
#   2. ./bin/k8s/<version>-<os>-<arch> (this clone's cache, beside kube-apiserver);
#   3. the user cache ~/.local/share/kubebuilder-envtest/k8s/<version>-<os>-<arch>,
#      shared by every clone on this machine;
#   4. a build in envtest-assets.sh's module directory (bin/.envtest-build/apiserver),
#      so that the Go build cache its kube-apiserver build left is reused:
#      about 3 minutes per binary warm on 2 cores, 15 cold.
# All progress goes to stderr; stdout carries only the directory.
set -euo pipefail

K8S_VERSION=${ENVTEST_K8S_VERSION:-1.37.2}
BINARIES=(kube-controller-manager kubectl)

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
goos=$(go env GOOS)
goarch=$(go env GOARCH)
name="${K8S_VERSION}-${goos}-${goarch}"
local_dir="${root}/bin/k8s/${name}"
user_dir="${XDG_DATA_HOME:-${HOME}/.local/share}/kubebuilder-envtest/k8s/${name}"

log() { echo "kube-tools: $*" >&2; }
complete() {
  for b in "${BINARIES[@]}"; do [ -x "$1/$b" ] || return 1; done
}
copy() { # $1: from dir, $2: to dir, $3: binary
  [ "$1" = "$2" ] && return 0
  mkdir -p "$2"
  cp -f "$1/$3" "$2/$3.tmp" && mv -f "$2/$3.tmp" "$2/$3"
}

if [ -n "${KUBE_TOOLS_DIR:-}" ] && complete "${KUBE_TOOLS_DIR}"; then
  echo "${KUBE_TOOLS_DIR}"
  exit 0
fi
if complete "${local_dir}"; then
  echo "${local_dir}"
  exit 0
fi
if complete "${user_dir}"; then
  log "using the user cache ${user_dir}"
  for b in "${BINARIES[@]}"; do copy "${user_dir}" "${local_dir}" "$b"; done
  echo "${local_dir}"
  exit 0
fi

# The module directory hack/envtest-assets.sh builds kube-apiserver in: the
# same go.mod (k8s.io/kubernetes with its staging modules replaced by their
# tags) gives the same dependency versions, so every package the three
# commands share comes from the build cache.
work="${root}/bin/.envtest-build"
mod="${work}/apiserver"
mkdir -p "${mod}" "${work}/out"
export CGO_ENABLED=0 GOFLAGS=-mod=mod
(
  cd "${mod}"
  if [ ! -f go.mod ]; then
    modfile=$(go mod download -json "k8s.io/kubernetes@v${K8S_VERSION}" | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",$/\1/p')
    staging_version="v0.${K8S_VERSION#1.}"
    {
      echo "module envtest-apiserver"
      echo
      echo "go $(go env GOVERSION | sed 's/^go//; s/^\([0-9]*\.[0-9]*\).*/\1/')"
      echo
      echo "require k8s.io/kubernetes v${K8S_VERSION}"
      echo
      echo "replace ("
      grep -oE 'k8s\.io/[A-Za-z0-9._/-]+ => \./staging/src/k8s\.io/[A-Za-z0-9._/-]+' "${modfile}" |
        awk -v v="${staging_version}" '{print "\t" $1 " => " $1 " " v}' | sort -u
      echo ")"
    } > go.mod
  fi
  # A file of its own: envtest-assets.sh rewrites tools.go, and `go mod tidy`
  # there must keep what these two commands need.
  cat > tools_kube.go <<'GO'
//go:build tools

package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
GO
  go mod tidy >&2
)

major=${K8S_VERSION%%.*}
minor=${K8S_VERSION#*.}; minor=${minor%%.*}
ldflags="-s -w"
# kubectl reports its version through client-go, the control plane through component-base.
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldflags+=" -X ${pkg}.gitVersion=v${K8S_VERSION} -X ${pkg}.gitMajor=${major} -X ${pkg}.gitMinor=${minor} -X ${pkg}.gitTreeState=clean"
done
for b in "${BINARIES[@]}"; do
  if [ ! -x "${work}/out/$b" ]; then
    log "building $b v${K8S_VERSION} (about 3 minutes with a warm build cache)"
    (cd "${mod}" && go build -trimpath -ldflags "${ldflags}" -o "${work}/out/$b.tmp" "k8s.io/kubernetes/cmd/$b" >&2)
    mv -f "${work}/out/$b.tmp" "${work}/out/$b"
  fi
  copy "${work}/out" "${local_dir}" "$b"
  copy "${work}/out" "${user_dir}" "$b"
done
log "kube-controller-manager and kubectl ready in ${local_dir}"
echo "${local_dir}"
