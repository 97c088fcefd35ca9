#!/usr/bin/env bash
# A real single-node Kubernetes v1.37.2 on this machine, for the real-node test
# (make test-cluster) and by hand:
#
#   hack/cluster.sh up       build what is missing, start the node, import the images
#   hack/cluster.sh images   rebuild and re-import the images (the project's after a change)
#   hack/cluster.sh kubectl ARGS...   the pinned kubectl against the node
#   hack/cluster.sh exec CMD...       run CMD in the node's network namespace,
#                                     KUBECONFIG set (go test -exec uses it)
#   hack/cluster.sh down     stop everything by PID, remove the namespaces,
#                            mounts and cgroups it made, whatever state it is in
#   hack/cluster.sh clean    down, then remove the node's state (./bin/cluster)
#
# etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubelet,
# kube-proxy, kube-router's network policy controller and containerd (with
# runc and the bridge CNI plugin, Debian's, extracted by hack/node-tools.sh) all run inside a network namespace of
# their own, entered with `nsenter --net` (the host's mount namespace and
# cgroups, which `ip netns exec` would hide). The node's IP sits on a bridge
# in that namespace and nothing there routes outside, so every address the
# cluster uses (pods 10.88.0.0/24, Services 10.96.0.0/24, the node 10.87.0.1)
# exists only inside it. CoreDNS serves cluster.local at 10.96.0.10.
#
# Images are docker-archive tarballs imported into containerd (no registry):
#   localhost/llm-user-operator:dev     the project's (hack/image.sh, the Dockerfile's layout)
#   localhost/llm-d-inference-sim:dev   the simulator (hack/simulator.sh)
#   localhost/cluster-client:dev        test/cluster/client, an openai-go client
#   localhost/coredns:dev, registry.k8s.io/pause:3.10
# Pods use them with imagePullPolicy: Never.
#
# Settings that matter on this kind of machine: the kubelet's failCgroupV1:
# false (a cgroup v1 host) and cgroupDriver: cgroupfs (containerd 1.6 does
# not report its driver); containerd's restrict_oom_score_adj (root here
# lacks CAP_SYS_RESOURCE: runc fails with "can't get final child's PID from
# pipe: EOF" otherwise); the node IP off loopback, which the kubelet refuses.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
S=${CLUSTER_DIR:-${root}/bin/cluster}
NS=${CLUSTER_NETNS:-llmuo-node}
RUN=/run/${NS}
SOCK=${RUN}/containerd.sock
NODE_NAME=${NS}
NODE_IP=10.87.0.1
POD_CIDR=10.88.0.0/24
POD_GW=10.88.0.1
SVC_CIDR=10.96.0.0/24
DNS_IP=10.96.0.10
PAUSE_IMAGE=registry.k8s.io/pause:3.10
K=${S}/etc
PKI=${K}/pki
R=${S}/run
LOG=${S}/log
export CONTAINERD_ADDRESS=${SOCK} CONTAINERD_NAMESPACE=k8s.io

t0=$(date +%s)
say() { echo "cluster: [+$(( $(date +%s) - t0 ))s] $*" >&2; }
inns() { nsenter --net="/run/netns/${NS}" "$@"; }

tools() { # PATH with the pinned binaries; builds what is missing
  local k8s kt node
  k8s=$("${root}/hack/envtest-assets.sh")
  kt=$("${root}/hack/kube-tools.sh")
  node=$("${root}/hack/node-tools.sh")
  NODE_DIR=${node}
  export PATH="${node}/bin:${node}/root/usr/bin:${node}/root/usr/sbin:${k8s}:${kt}:${PATH}"
  export LD_LIBRARY_PATH="${node}/root/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:${LD_LIBRARY_PATH}}"
}

quiet_tools() { # PATH only, for down/exec: never builds
  local d="${root}/bin/k8s/${ENVTEST_K8S_VERSION:-1.37.2}-$(go env GOOS 2>/dev/null || echo linux)-$(go env GOARCH 2>/dev/null || echo amd64)"
  NODE_DIR=${root}/bin/node
  export PATH="${NODE_DIR}/bin:${NODE_DIR}/root/usr/bin:${NODE_DIR}/root/usr/sbin:${d}:${PATH}"
  export LD_LIBRARY_PATH="${NODE_DIR}/root/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:${LD_LIBRARY_PATH}}"
}

kc() { inns kubectl --kubeconfig "${K}/admin.kubeconfig" "$@"; }

# ---------------------------------------------------------------- state files

IDENTITIES=(admin kubelet kcm scheduler proxy router)
pki() {
  local who complete=1
  for who in "${IDENTITIES[@]}"; do [ -s "${K}/${who}.kubeconfig" ] || complete=0; done
  [ -s "${PKI}/ca.crt" ] && [ "${complete}" = 1 ] && return 0
  rm -rf "${PKI}"
  mkdir -p "${PKI}"
  (
    cd "${PKI}"
    openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 30 -subj "/CN=${NS}-ca" 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -keyout apiserver.key -out apiserver.csr -subj "/CN=kube-apiserver" 2>/dev/null
    printf "subjectAltName=IP:127.0.0.1,IP:%s,IP:10.96.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local\nextendedKeyUsage=serverAuth\n" "${NODE_IP}" > apiserver.ext
    openssl x509 -req -in apiserver.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out apiserver.crt -days 30 -extfile apiserver.ext 2>/dev/null
    openssl genrsa -out sa.key 2048 2>/dev/null
    openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
    # The client certificate the API server shows the kubelet (logs, exec).
    openssl req -newkey rsa:2048 -nodes -keyout kubelet-client.key -out kubelet-client.csr -subj "/O=system:masters/CN=kube-apiserver-kubelet-client" 2>/dev/null
    printf "extendedKeyUsage=clientAuth\n" > client.ext
    openssl x509 -req -in kubelet-client.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out kubelet-client.crt -days 30 -extfile client.ext 2>/dev/null
  )
  : > "${PKI}/tokens.csv"
  local user group tok
  for who in "${IDENTITIES[@]}"; do
    case ${who} in
      admin) user=admin; group=system:masters ;;
      kubelet) user=system:node:${NODE_NAME}; group=system:nodes ;;
      kcm) user=system:kube-controller-manager; group=system:masters ;;
      scheduler) user=system:kube-scheduler; group= ;;
      proxy) user=system:kube-proxy; group= ;;
      router) user=kube-router; group=system:masters ;;
    esac
    tok=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
    echo "${tok},${user},${user}${group:+,\"${group}\"}" >> "${PKI}/tokens.csv"
    cat > "${K}/${who}.kubeconfig" <<KC
apiVersion: v1
kind: Config
clusters:
- name: ${NS}
  cluster:
    server: https://127.0.0.1:6443
    certificate-authority: ${PKI}/ca.crt
users:
- name: ${who}
  user:
    token: ${tok}
contexts:
- name: ${NS}
  context: {cluster: ${NS}, user: ${who}}
current-context: ${NS}
KC
  done
  chmod 600 "${PKI}"/*.key "${PKI}/tokens.csv" "${K}"/*.kubeconfig
}

configs() {
  mkdir -p "${K}/cni" "${R}" "${LOG}"
  cat > "${K}/containerd.toml" <<EOF
version = 2
root = "${R}/containerd"
state = "${RUN}/state"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs", "io.containerd.internal.v1.tracing", "io.containerd.tracing.processor.v1.otlp"]

[grpc]
  address = "${SOCK}"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "${PAUSE_IMAGE}"
  enable_selinux = false
  # Root here lacks CAP_SYS_RESOURCE: a negative oom_score_adj (the pause
  # container's -998) makes runc fail; clamp to containerd's own instead.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        BinaryName = "${NODE_DIR}/root/usr/sbin/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "${NODE_DIR}/root/usr/lib/cni"
    conf_dir = "${K}/cni"
EOF
  cat > "${K}/cni/10-${NS}.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "${NS}",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "cni0",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": "${POD_CIDR}", "gateway": "${POD_GW}"}]],
        "routes": [{"dst": "0.0.0.0/0"}],
        "dataDir": "${R}/cni-ipam"
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF
  echo "nameserver ${DNS_IP}" > "${K}/resolv.conf"
  cat > "${K}/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# A cgroup v1 host: kubelet 1.35+ refuses to start unless this is false.
failCgroupV1: false
failSwapOn: false
# containerd 1.6 does not answer the CRI RuntimeConfig call, so the kubelet
# takes its cgroup driver from here.
cgroupDriver: cgroupfs
containerRuntimeEndpoint: unix://${SOCK}
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: ${PKI}/ca.crt}
authorization:
  mode: Webhook
address: ${NODE_IP}
healthzBindAddress: 127.0.0.1
healthzPort: 10248
readOnlyPort: 0
clusterDomain: cluster.local
clusterDNS: [${DNS_IP}]
resolvConf: ${K}/resolv.conf
podLogsDir: ${R}/pod-logs
registerNode: true
staticPodPath: ""
evictionHard:
  memory.available: 100Mi
  nodefs.available: "2%"
  imagefs.available: "2%"
  nodefs.inodesFree: "2%"
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
maxPods: 40
serializeImagePulls: false
EOF
  cat > "${K}/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: ${K}/proxy.kubeconfig
mode: iptables
clusterCIDR: ${POD_CIDR}
hostnameOverride: ${NODE_NAME}
bindAddress: ${NODE_IP}
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
EOF
  cp "${K}/admin.kubeconfig" "${S}/kubeconfig"
}

# ---------------------------------------------------------------- images

images() {
  local img="${S}/images" imgbuild sim
  mkdir -p "${img}"
  imgbuild=$("${root}/hack/imgbuild.sh")
  [ -s "${img}/pause.tar" ] || "${imgbuild}" -tag "${PAUSE_IMAGE}" -out "${img}/pause.tar" \
    -user 65535:65535 -entrypoint /pause "${NODE_DIR}/pause=/pause"
  [ -s "${img}/coredns.tar" ] && [ "${img}/coredns.tar" -nt "$(readlink -f "${NODE_DIR}/coredns")" ] ||
    "${imgbuild}" -tag localhost/coredns:dev -out "${img}/coredns.tar" -base static-nonroot \
      -user 65532:65532 -entrypoint /coredns "$(readlink -f "${NODE_DIR}/coredns")=/coredns"
  sim=$("${root}/hack/simulator.sh")
  [ -s "${img}/simulator.tar" ] && [ "${img}/simulator.tar" -nt "${sim}" ] ||
    "${imgbuild}" -tag localhost/llm-d-inference-sim:dev -out "${img}/simulator.tar" -base static-nonroot \
      -user 65532:65532 -entrypoint /llm-d-inference-sim "${sim}=/llm-d-inference-sim"
  "${root}/hack/image.sh" "${img}/llm-user-operator.tar" localhost/llm-user-operator:dev
  (cd "${root}" && CGO_ENABLED=0 GOOS=linux GOARCH=amd64 go build -trimpath -ldflags="-s -w" -o "${img}/client" ./test/cluster/client)
  "${imgbuild}" -tag localhost/cluster-client:dev -out "${img}/client.tar" -base static-nonroot \
    -user 65532:65532 -entrypoint /client "${img}/client=/client"
  local t
  for t in pause coredns simulator llm-user-operator client; do
    ctr images import "${img}/$t.tar" >/dev/null
  done
  say "images imported"
}

# ---------------------------------------------------------------- processes

# pidof_ is the recorded PID of a daemon, if that process still runs it (a
# PID the kernel gave to another program since is not ours).
pidof_() {
  local f="${R}/$1.pid" pid
  [ -s "${f}" ] || return 1
  pid=$(cat "${f}")
  { tr '\0' ' ' < "/proc/${pid}/cmdline"; } 2>/dev/null | grep -q -- "$1" || return 1
  echo "${pid}"
}
running() { pidof_ "$1" >/dev/null; }
start() { # name cmd...: the daemon writes its own PID (the shell execs it)
  local name=$1 i; shift
  if running "${name}"; then say "${name} already running"; return 0; fi
  rm -f "${R}/${name}.pid"
  inns setsid bash -c 'echo $$ > "$0"; exec "$@"' "${R}/${name}.pid" "$@" > "${LOG}/${name}.log" 2>&1 < /dev/null &
  for ((i = 0; i < 50; i++)); do [ -s "${R}/${name}.pid" ] && break; sleep 0.1; done
  say "started ${name} (pid $(cat "${R}/${name}.pid"))"
}
waitfor() { # what seconds name-of-process cmd...
  local what=$1 to=$2 proc=$3 i; shift 3
  for ((i = 0; i < to * 2; i++)); do
    if "$@" >/dev/null 2>&1; then say "${what} ready"; return 0; fi
    if [ -n "${proc}" ] && ! running "${proc}"; then
      say "${proc} exited; the end of ${LOG}/${proc}.log:"; tail -n 20 "${LOG}/${proc}.log" >&2; return 1
    fi
    sleep 0.5
  done
  say "timed out waiting for ${what}; the end of ${LOG}/${proc:-kube-apiserver}.log:"
  tail -n 20 "${LOG}/${proc:-kube-apiserver}.log" >&2
  return 1
}

netns_up() {
  [ -e "/run/netns/${NS}" ] && return 0
  ip netns add "${NS}"
  ip -n "${NS}" link set lo up
  ip -n "${NS}" link add node0 type bridge
  ip -n "${NS}" addr add "${NODE_IP}/24" dev node0
  ip -n "${NS}" link set node0 up
  # Whatever is not local (a Service IP with no endpoint) goes to the empty
  # bridge and nowhere else: the namespace has no way out.
  ip -n "${NS}" route add default dev node0
}

up() {
  [ "$(id -u)" = 0 ] || { echo "cluster: needs root (network namespaces, containerd)" >&2; exit 1; }
  tools
  # A fresh node every time: what an earlier run left (processes, mounts,
  # namespaces) goes first, then its etcd, kubelet and containerd state.
  down
  rm -rf "${R}" "${LOG}"
  mkdir -p "${S}" "${R}" "${LOG}" "${RUN}"
  pki
  configs
  netns_up

  start containerd containerd --config "${K}/containerd.toml"
  waitfor containerd 30 containerd ctr version
  images

  start etcd etcd --name "${NS}" --data-dir "${R}/etcd" \
    --listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
    --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
    --initial-cluster "${NS}=http://127.0.0.1:2380" --log-level warn
  waitfor etcd 30 etcd inns curl -fsS http://127.0.0.1:2379/health

  start kube-apiserver kube-apiserver --etcd-servers=http://127.0.0.1:2379 \
    --bind-address=0.0.0.0 --secure-port=6443 --advertise-address="${NODE_IP}" \
    --tls-cert-file="${PKI}/apiserver.crt" --tls-private-key-file="${PKI}/apiserver.key" \
    --client-ca-file="${PKI}/ca.crt" --token-auth-file="${PKI}/tokens.csv" \
    --authorization-mode=Node,RBAC --enable-admission-plugins=NodeRestriction \
    --service-cluster-ip-range="${SVC_CIDR}" --allow-privileged=true \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --service-account-key-file="${PKI}/sa.pub" --service-account-signing-key-file="${PKI}/sa.key" \
    --kubelet-client-certificate="${PKI}/kubelet-client.crt" --kubelet-client-key="${PKI}/kubelet-client.key" \
    --kubelet-preferred-address-types=InternalIP --cert-dir="${R}/apiserver-certs" --profiling=false
  waitfor kube-apiserver 120 kube-apiserver inns curl -fsS --cacert "${PKI}/ca.crt" https://127.0.0.1:6443/readyz

  start kube-controller-manager kube-controller-manager --kubeconfig="${K}/kcm.kubeconfig" \
    --authentication-kubeconfig="${K}/kcm.kubeconfig" --authorization-kubeconfig="${K}/kcm.kubeconfig" \
    --bind-address=127.0.0.1 --leader-elect=false --root-ca-file="${PKI}/ca.crt" \
    --service-account-private-key-file="${PKI}/sa.key" --use-service-account-credentials=false \
    --cluster-signing-cert-file="${PKI}/ca.crt" --cluster-signing-key-file="${PKI}/ca.key" \
    --service-cluster-ip-range="${SVC_CIDR}" --profiling=false \
    --allocate-node-cidrs=true --cluster-cidr="${POD_CIDR}" --node-cidr-mask-size=24
  start kube-scheduler kube-scheduler --kubeconfig="${K}/scheduler.kubeconfig" \
    --authentication-kubeconfig="${K}/scheduler.kubeconfig" --authorization-kubeconfig="${K}/scheduler.kubeconfig" \
    --bind-address=127.0.0.1 --leader-elect=false --profiling=false
  start kubelet kubelet --config="${K}/kubelet.yaml" --kubeconfig="${K}/kubelet.kubeconfig" \
    --hostname-override="${NODE_NAME}" --node-ip="${NODE_IP}" \
    --root-dir="${R}/kubelet" --cert-dir="${R}/kubelet-pki" -v=1
  start kube-proxy kube-proxy --config="${K}/kube-proxy.yaml" -v=1

  waitfor kube-proxy 60 kube-proxy inns curl -fsS http://127.0.0.1:10256/healthz
  # kube-router's network policy controller alone: the bridge CNI plugin
  # enforces no NetworkPolicy.
  start kube-router kube-router --kubeconfig="${K}/router.kubeconfig" --hostname-override="${NODE_NAME}" \
    --run-firewall=true --run-router=false --run-service-proxy=false \
    --service-cluster-ip-range="${SVC_CIDR}" --health-port=20244 --metrics-port=0 -v=1
  waitfor kube-router 60 kube-router inns curl -fsS http://127.0.0.1:20244/healthz
  waitfor "node registration" 120 kubelet kc get node "${NODE_NAME}"
  kc wait --for=condition=Ready "node/${NODE_NAME}" --timeout=180s >/dev/null
  say "node Ready"
  waitfor "the default ServiceAccount" 60 kube-controller-manager kc get serviceaccount default

  coredns
  kc -n kube-system rollout status deploy/coredns --timeout=180s >&2
  say "up: KUBECONFIG=${S}/kubeconfig (reachable inside the namespace: hack/cluster.sh exec|kubectl)"
}

coredns() {
  kc apply -f - >/dev/null <<EOF
apiVersion: v1
kind: ServiceAccount
metadata: {name: coredns, namespace: kube-system}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: "cluster:coredns"}
rules:
- apiGroups: [""]
  resources: [services, pods, namespaces]
  verbs: [list, watch]
- apiGroups: [discovery.k8s.io]
  resources: [endpointslices]
  verbs: [list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: "cluster:coredns"}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "cluster:coredns"}
subjects:
- {kind: ServiceAccount, name: coredns, namespace: kube-system}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: coredns, namespace: kube-system}
data:
  Corefile: |
    .:5353 {
        errors
        health :8081
        ready :8181
        kubernetes cluster.local in-addr.arpa ip6.arpa
        cache 30
        loadbalance
    }
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: coredns, namespace: kube-system}
spec:
  replicas: 1
  selector: {matchLabels: {k8s-app: kube-dns}}
  template:
    metadata: {labels: {k8s-app: kube-dns}}
    spec:
      serviceAccountName: coredns
      dnsPolicy: Default
      securityContext: {runAsNonRoot: true, seccompProfile: {type: RuntimeDefault}}
      containers:
      - name: coredns
        image: localhost/coredns:dev
        imagePullPolicy: Never
        args: ["-conf", "/etc/coredns/Corefile"]
        volumeMounts: [{name: config, mountPath: /etc/coredns}]
        readinessProbe: {httpGet: {path: /ready, port: 8181}, periodSeconds: 2}
        livenessProbe: {httpGet: {path: /health, port: 8081}}
        securityContext: {allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, capabilities: {drop: [ALL]}}
        resources: {requests: {cpu: 10m, memory: 32Mi}, limits: {memory: 128Mi}}
      volumes:
      - name: config
        configMap: {name: coredns}
---
apiVersion: v1
kind: Service
metadata: {name: kube-dns, namespace: kube-system}
spec:
  clusterIP: ${DNS_IP}
  selector: {k8s-app: kube-dns}
  ports:
  - {name: dns, port: 53, targetPort: 5353, protocol: UDP}
  - {name: dns-tcp, port: 53, targetPort: 5353, protocol: TCP}
EOF
}

# ---------------------------------------------------------------- teardown

stop() { # name: SIGTERM, up to 15 s, then SIGKILL; by recorded PID only
  local f="${R}/$1.pid" pid i
  if pid=$(pidof_ "$1"); then
    kill "${pid}" 2>/dev/null || true
    for ((i = 0; i < 30; i++)); do kill -0 "${pid}" 2>/dev/null || break; sleep 0.5; done
    if kill -0 "${pid}" 2>/dev/null; then kill -9 "${pid}" 2>/dev/null || true; fi
    say "stopped $1 (pid ${pid})"
  fi
  rm -f "${f}"
}

down() {
  quiet_tools
  local pid ns m t c sub top
  # The kubelet first, so that it restarts nothing while containers go.
  for n in kube-router kubelet kube-proxy kube-scheduler kube-controller-manager kube-apiserver etcd; do stop "$n"; done
  # Every container's network namespace (the pods' cni-*), read from
  # containerd before it stops.
  local netns=()
  if running containerd; then
    for c in $(ctr containers ls -q 2>/dev/null); do
      m=$(ctr containers info "$c" 2>/dev/null | sed -n 's|.*"path": "\(/var/run/netns/[^"]*\)".*|\1|p; s|.*"path": "\(/run/netns/[^"]*\)".*|\1|p' | head -n 1)
      [ -n "$m" ] && netns+=("$(basename "$m")")
    done
    for t in $(ctr tasks ls -q 2>/dev/null); do ctr tasks kill -s SIGKILL "$t" >/dev/null 2>&1 || true; done
    sleep 1
    for t in $(ctr tasks ls -q 2>/dev/null); do ctr tasks rm -f "$t" >/dev/null 2>&1 || true; done
    for c in $(ctr containers ls -q 2>/dev/null); do ctr containers rm "$c" >/dev/null 2>&1 || true; done
  fi
  stop containerd
  # Shims outlive containerd (their parent is init): ours name our socket.
  for pid in $(ps -eo pid=,args= | awk -v s="-address ${SOCK}" 'index($0, "containerd-shim") && index($0, s) {print $1}'); do
    kill -9 "${pid}" 2>/dev/null && say "killed shim ${pid}"
  done
  # A container whose shim was killed above (containerd had died) keeps
  # running, reparented to init: what is left in the kubelet's cgroups goes.
  for pid in $(cat /sys/fs/cgroup/*/kubepods/cgroup.procs /sys/fs/cgroup/*/kubepods/*/cgroup.procs \
      /sys/fs/cgroup/*/kubepods/*/*/cgroup.procs /sys/fs/cgroup/*/kubepods/*/*/*/cgroup.procs 2>/dev/null | sort -u); do
    kill -9 "${pid}" 2>/dev/null && say "killed container process ${pid}"
  done
  sleep 0.5
  # Mounts under our directories (overlay rootfs, shm, volumes), deepest first.
  for m in $(awk '{print $5}' /proc/self/mountinfo | grep -E "^(${R}|${RUN})(/|$)" | sort -r); do
    umount -l "$m" 2>/dev/null || true
  done
  # Pod namespaces containerd could not tell of (it had died): those with
  # no process left whose eth0 holds an address of our pod range.
  for ns in $(ls /run/netns 2>/dev/null | grep '^cni-'); do
    if [ -z "$(ip netns pids "${ns}" 2>/dev/null)" ] && ip -n "${ns}" -4 addr show dev eth0 2>/dev/null | grep -q "inet ${POD_CIDR%.*}\."; then
      netns+=("${ns}")
    fi
  done
  for ns in "${netns[@]}"; do
    [ -e "/run/netns/${ns}" ] && { umount "/run/netns/${ns}" 2>/dev/null; rm -f "/run/netns/${ns}"; say "removed pod network namespace ${ns}"; }
  done
  if [ -e "/run/netns/${NS}" ]; then
    ip netns del "${NS}" && say "removed network namespace ${NS} (its bridges, veths, iptables rules)"
  fi
  # Cgroups the kubelet (kubepods) and containerd made, deepest first, only
  # when empty (rmdir refuses a cgroup that still holds a process).
  for sub in /sys/fs/cgroup/*/; do
    for top in kubepods kubepods.slice; do
      [ -d "${sub}${top}" ] && find "${sub}${top}" -depth -type d -exec rmdir {} \; 2>/dev/null
      [ -d "${sub}${top}" ] && say "cgroup left: ${sub}${top}"
    done
  done
  # The kubelet's legacy log links point into our pod-logs directory.
  if [ -d /var/log/containers ]; then
    find /var/log/containers -maxdepth 1 -type l -lname "${R}/pod-logs/*" -delete 2>/dev/null || true
    rmdir /var/log/containers 2>/dev/null || true
  fi
  rm -rf "${RUN}" /var/lib/cni/results/"${NS}"-* 2>/dev/null || true
  say "down"
}

clean() {
  down
  rm -rf "${S}"
  say "removed ${S}"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  clean) clean ;;
  images) tools; images ;;
  kubectl) shift; quiet_tools; kc "$@" ;;
  exec) shift; quiet_tools; KUBECONFIG="${S}/kubeconfig" CLUSTER_DIR="${S}" exec nsenter --net="/run/netns/${NS}" "$@" ;;
  *) echo "usage: hack/cluster.sh up|down|clean|images|kubectl ARGS...|exec CMD..." >&2; exit 2 ;;
esac
