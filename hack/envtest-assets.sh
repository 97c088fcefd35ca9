#!/usr/bin/env bash
# Makes kube-apiserver and etcd for envtest available and prints the directory
# that holds them (the value for KUBEBUILDER_ASSETS). Idempotent and pinned.
#
# Order of preference:
#   1. $KUBEBUILDER_ASSETS, if it already holds both binaries;
#   2. ./bin/k8s/<version>-<os>-<arch> (this clone's cache);
#   3. the user cache, shared by every clone on this machine
#      (setup-envtest's store, ~/.local/share/kubebuilder-envtest/k8s/<version>-<os>-<arch>);
#   4. setup-envtest (downloads release binaries on an ordinary online machine);
#   5. a build from the Go module proxy: etcd from go.etcd.io/etcd/server/v3 and
#      kube-apiserver from k8s.io/kubernetes with its staging modules replaced by
#      the matching k8s.io/* tags. ~17 min cold on 2 cores, ~1 min with a warm cache.
# All progress goes to stderr; stdout carries only the directory.
set -euo pipefail

K8S_VERSION=${ENVTEST_K8S_VERSION:-1.37.2}
ETCD_VERSION=${ENVTEST_ETCD_VERSION:-3.7.3}
SETUP_ENVTEST_VERSION=${SETUP_ENVTEST_VERSION:-release-0.22}

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
goos=$(go env GOOS)
goarch=$(go env GOARCH)
name="${K8S_VERSION}-${goos}-${goarch}"
local_dir="${root}/bin/k8s/${name}"
user_dir="${XDG_DATA_HOME:-${HOME}/.local/share}/kubebuilder-envtest/k8s/${name}"

log() { echo "envtest-assets: $*" >&2; }
complete() { [ -x "$1/kube-apiserver" ] && [ -x "$1/etcd" ]; }

if [ -n "${KUBEBUILDER_ASSETS:-}" ] && complete "${KUBEBUILDER_ASSETS}"; then
  echo "${KUBEBUILDER_ASSETS}"
  exit 0
fi
if complete "${local_dir}"; then
  echo "${local_dir}"
  exit 0
fi

publish() { # $1: dir holding both binaries -> copies into the local and the user cache
  mkdir -p "${local_dir}" "${user_dir}"
  for b in kube-apiserver etcd; do
    if [ "$1" != "${local_dir}" ]; then cp -f "$1/$b" "${local_dir}/$b.tmp" && mv -f "${local_dir}/$b.tmp" "${local_dir}/$b"; fi
    if [ "$1" != "${user_dir}" ]; then cp -f "$1/$b" "${user_dir}/$b.tmp" && mv -f "${user_dir}/$b.tmp" "${user_dir}/$b"; fi
  done
}

if complete "${user_dir}"; then
  log "using the user cache ${user_dir}"
  publish "${user_dir}"
  echo "${local_dir}"
  exit 0
fi

if [ "${ENVTEST_SKIP_DOWNLOAD:-}" != "1" ]; then
  log "trying setup-envtest ${SETUP_ENVTEST_VERSION} for ${K8S_VERSION}"
  dl=$(mktemp -d)
  if dir=$(timeout 120 go run "sigs.k8s.io/controller-runtime/tools/setup-envtest@${SETUP_ENVTEST_VERSION}" \
      use "${K8S_VERSION}" --bin-dir "${dl}" -p path 2>/dev/null) && complete "${dir}"; then
    publish "${dir}"
    rm -rf "${dl}"
    echo "${local_dir}"
    exit 0
  fi
  rm -rf "${dl}"
  log "setup-envtest could not fetch release binaries; building from the Go module proxy"
fi

work="${root}/bin/.envtest-build"
mkdir -p "${work}/etcd" "${work}/apiserver" "${work}/out"
export CGO_ENABLED=0 GOFLAGS=-mod=mod

if [ ! -x "${work}/out/etcd" ]; then
  log "building etcd v${ETCD_VERSION}"
  (
    cd "${work}/etcd"
    [ -f go.mod ] || go mod init envtest-etcd >/dev/null 2>&1
    go get "go.etcd.io/etcd/server/v3@v${ETCD_VERSION}" >&2
    go build -trimpath -o "${work}/out/etcd" go.etcd.io/etcd/server/v3
  )
fi

if [ ! -x "${work}/out/kube-apiserver" ]; then
  log "building kube-apiserver v${K8S_VERSION} (slow the first time)"
  (
    cd "${work}/apiserver"
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
    cat > tools.go <<'GO'
//go:build tools

package tools

import _ "k8s.io/kubernetes/cmd/kube-apiserver"
GO
    go mod tidy >&2
    major=${K8S_VERSION%%.*}
    minor=${K8S_VERSION#*.}; minor=${minor%%.*}
    ldflags="-s -w -X k8s.io/component-base/version.gitVersion=v${K8S_VERSION} -X k8s.io/component-base/version.gitMajor=${major} -X k8s.io/component-base/version.gitMinor=${minor}"
    go build -trimpath -ldflags "${ldflags}" -o "${work}/out/kube-apiserver" k8s.io/kubernetes/cmd/kube-apiserver
  )
fi

publish "${work}/out"
log "assets ready in ${local_dir}"
echo "${local_dir}"
