#!/usr/bin/env bash
# Makes everything a real single-node cluster needs available (hack/cluster.sh)
# and prints the directory that holds it. Idempotent and pinned.
#
#  - kubelet, kube-scheduler and kube-proxy v1.37.2, built from the same pinned
#    k8s.io/kubernetes as kube-apiserver and kube-controller-manager
#    (hack/envtest-assets.sh, hack/kube-tools.sh), with the same go.mod, so
#    Go's build cache from those builds is reused (about a minute each warm);
#    cached in ./bin/k8s/<version>-<os>-<arch> and in the user cache
#    ~/.local/share/kubebuilder-envtest/k8s/<version>-<os>-<arch>, which
#    other clones reuse;
#  - containerd 1.6, runc, the CNI plugins, iptables and conntrack from
#    Debian, downloaded and extracted into ./bin/node/root, never installed,
#    so that a missing install step cannot hide;
#  - CoreDNS (hack/tools/coredns, pinned), kube-router for its network
#    policy controller (hack/tools/kube-router, pinned; with Debian's ipset)
#    and the pause binary (built from k8s.io/kubernetes' build/pause/linux/pause.c);
#  - the image builder (hack/tools/imgbuild).
# All progress goes to stderr; stdout carries only ./bin/node.
set -euo pipefail

K8S_VERSION=${ENVTEST_K8S_VERSION:-1.37.2}
BINARIES=(kubelet kube-scheduler kube-proxy)
# Debian bookworm's; the versions are checked (containerd 1.6 is what the
# node's settings are written for).
DEBS=(containerd runc containernetworking-plugins iptables conntrack ipset libipset13
  libip4tc2 libip6tc2 libxtables12 libnetfilter-conntrack3 libnfnetlink0 libnftnl11 libmnl0)

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
goos=$(go env GOOS)
goarch=$(go env GOARCH)
name="${K8S_VERSION}-${goos}-${goarch}"
local_dir="${root}/bin/k8s/${name}"
user_dir="${XDG_DATA_HOME:-${HOME}/.local/share}/kubebuilder-envtest/k8s/${name}"
node="${root}/bin/node"
mkdir -p "${node}/bin"

log() { echo "node-tools: $*" >&2; }
copy() { # $1: from dir, $2: to dir, $3: binary
  [ "$1" = "$2" ] && return 0
  mkdir -p "$2"
  cp -f "$1/$3" "$2/$3.tmp" && mv -f "$2/$3.tmp" "$2/$3"
}

# --- kubelet, kube-scheduler, kube-proxy
missing=()
for b in "${BINARIES[@]}"; do
  if [ -x "${local_dir}/$b" ]; then continue; fi
  if [ -x "${user_dir}/$b" ]; then copy "${user_dir}" "${local_dir}" "$b"; continue; fi
  missing+=("$b")
done
if [ ${#missing[@]} -gt 0 ]; then
  # A module directory of its own whose go.mod is the one envtest-assets.sh
  # and kube-tools.sh write (k8s.io/kubernetes with its staging modules
  # replaced by their tags): the same dependency versions, so the packages
  # the commands share come from the build cache.
  mod="${root}/bin/.envtest-build/node"
  mkdir -p "${mod}" "${root}/bin/.envtest-build/out"
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
      cat > tools.go <<'GO'
//go:build tools

package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-proxy"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubelet"
)
GO
      go mod tidy >&2
    fi
  )
  major=${K8S_VERSION%%.*}
  minor=${K8S_VERSION#*.}; minor=${minor%%.*}
  ldflags="-s -w"
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X ${pkg}.gitVersion=v${K8S_VERSION} -X ${pkg}.gitMajor=${major} -X ${pkg}.gitMinor=${minor} -X ${pkg}.gitTreeState=clean"
  done
  out="${root}/bin/.envtest-build/out"
  for b in "${missing[@]}"; do
    if [ ! -x "${out}/$b" ]; then
      log "building $b v${K8S_VERSION} (about a minute with a warm build cache, far longer cold)"
      s=$(date +%s)
      (cd "${mod}" && go build -trimpath -ldflags "${ldflags}" -o "${out}/$b.tmp" "k8s.io/kubernetes/cmd/$b" >&2)
      mv -f "${out}/$b.tmp" "${out}/$b"
      log "built $b in $(( $(date +%s) - s ))s"
    fi
    copy "${out}" "${local_dir}" "$b"
    copy "${out}" "${user_dir}" "$b"
  done
fi

# --- Debian packages, extracted
if [ ! -x "${node}/root/usr/bin/containerd" ] || [ ! -x "${node}/root/usr/sbin/runc" ] || [ ! -x "${node}/root/usr/lib/cni/bridge" ] || [ ! -x "${node}/root/usr/sbin/xtables-nft-multi" ] || [ ! -x "${node}/root/usr/sbin/ipset" ]; then
  debs="${node}/debs"
  rm -rf "${debs}" "${node}/root"
  mkdir -p "${debs}" "${node}/root"
  if ! (cd "${debs}" && apt-get download "${DEBS[@]}" >&2); then
    log "apt-get download failed; updating the package lists once"
    if [ "$(id -u)" != 0 ]; then SUDO=sudo; else SUDO=; fi
    $SUDO apt-get update -qq >&2
    (cd "${debs}" && apt-get download "${DEBS[@]}" >&2)
  fi
  for f in "${debs}"/*.deb; do dpkg-deb -x "$f" "${node}/root"; done
  containerd_version=$("${node}/root/usr/bin/containerd" --version | awk '{print $3}')
  case "${containerd_version}" in
    1.6.*) ;;
    *) log "containerd ${containerd_version}: the node's settings are written for 1.6"; exit 1 ;;
  esac
fi
# kube-proxy and the CNI plugins exec iptables by name.
lib="${node}/root/usr/lib/x86_64-linux-gnu"
for n in iptables iptables-save iptables-restore ip6tables ip6tables-save ip6tables-restore; do
  printf '#!/bin/bash\nexport LD_LIBRARY_PATH=%s XTABLES_LIBDIR=%s\nexec -a %s %s "$@"\n' \
    "${lib}" "${lib}/xtables" "$n" "${node}/root/usr/sbin/xtables-nft-multi" > "${node}/bin/$n.tmp"
  chmod +x "${node}/bin/$n.tmp" && mv -f "${node}/bin/$n.tmp" "${node}/bin/$n"
done
for n in conntrack ipset; do
  printf '#!/bin/sh\nexport LD_LIBRARY_PATH=%s\nexec %s "$@"\n' "${lib}" "${node}/root/usr/sbin/$n" > "${node}/bin/$n"
  chmod +x "${node}/bin/$n"
done

# --- CoreDNS, the pause binary, the image builder
# modversion TOOL MODULE: the version hack/tools/TOOL/go.mod pins MODULE at.
modversion() {
  local v
  v=$(awk -v m="$2" '($1 == m && $2 ~ /^v/) {print $2} ($1 == "require" && $2 == m) {print $3}' "${root}/hack/tools/$1/go.mod")
  [ -n "$v" ] || { log "no version of $2 in hack/tools/$1/go.mod"; exit 1; }
  echo "$v"
}
coredns_version=$(modversion coredns github.com/coredns/coredns)
coredns_cache="${XDG_CACHE_HOME:-${HOME}/.cache}/llm-user-operator/coredns-${coredns_version}"
if [ ! -x "${node}/coredns-${coredns_version}" ]; then
  if [ -x "${coredns_cache}" ]; then
    cp -f "${coredns_cache}" "${node}/coredns-${coredns_version}"
  else
    log "building CoreDNS ${coredns_version}"
    (cd "${root}/hack/tools/coredns" && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "${node}/coredns.tmp" . >&2)
    mv -f "${node}/coredns.tmp" "${node}/coredns-${coredns_version}"
    mkdir -p "$(dirname "${coredns_cache}")" && cp -f "${node}/coredns-${coredns_version}" "${coredns_cache}"
  fi
fi
ln -sf "coredns-${coredns_version}" "${node}/coredns"
router_version=$(modversion kube-router github.com/cloudnativelabs/kube-router/v2)
router_cache="${XDG_CACHE_HOME:-${HOME}/.cache}/llm-user-operator/kube-router-${router_version}"
if [ ! -x "${node}/kube-router-${router_version}" ]; then
  if [ -x "${router_cache}" ]; then
    cp -f "${router_cache}" "${node}/kube-router-${router_version}"
  else
    log "building kube-router ${router_version}"
    (cd "${root}/hack/tools/kube-router" && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "${node}/kube-router.tmp" github.com/cloudnativelabs/kube-router/v2/cmd/kube-router >&2)
    mv -f "${node}/kube-router.tmp" "${node}/kube-router-${router_version}"
    mkdir -p "$(dirname "${router_cache}")" && cp -f "${node}/kube-router-${router_version}" "${router_cache}"
  fi
fi
ln -sf "../kube-router-${router_version}" "${node}/bin/kube-router"
if [ ! -x "${node}/pause" ]; then
  pause_c="$(cd "${root}" && go env GOMODCACHE)/k8s.io/kubernetes@v${K8S_VERSION}/build/pause/linux/pause.c"
  [ -f "${pause_c}" ] || (cd "${root}" && go mod download "k8s.io/kubernetes@v${K8S_VERSION}" >&2)
  gcc -Os -static -o "${node}/pause.tmp" "${pause_c}" -DVERSION="v${K8S_VERSION}" >&2
  mv -f "${node}/pause.tmp" "${node}/pause"
fi
"${root}/hack/imgbuild.sh" >/dev/null

echo "${node}"
