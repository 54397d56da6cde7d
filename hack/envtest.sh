#!/usr/bin/env bash
# Local Kubernetes control plane on loopback for end-to-end tests and the demo:
# etcd + kube-apiserver + kube-controller-manager + kube-scheduler built from
# source at pinned versions, and kwok playing the kubelets of fake nodes.
#
#   hack/envtest.sh build | up | env | status | down
#   hack/envtest.sh node-add NAME [--gpu-count N | --no-gpu]
#   hack/envtest.sh node-power-off NAME | node-power-on NAME | node-delete NAME
#   hack/envtest.sh node-partition NAME | node-reconnect NAME | node-bmc NAME
# See hack/envtest/README.md.
set -euo pipefail

# ---- pinned versions (the build cache is keyed by these) --------------------
K8S_VERSION=v1.37.2   # k8s.io/kubernetes; staging modules are v0.<minor>.<patch>
ETCD_VERSION=v3.7.3   # go.etcd.io/etcd/server/v3 (k8s v1.37 vendors etcd client v3.7)
KWOK_VERSION=v0.8.0   # sigs.k8s.io/kwok

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
source "$REPO_ROOT/hack/lib-bmc.sh"
FIXTURES="$REPO_ROOT/hack/envtest"
CACHE_DIR=${JFHA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/jellyfin-ha}
K8S_DIR="$CACHE_DIR/kubernetes-$K8S_VERSION"
ETCD_DIR="$CACHE_DIR/etcd-$ETCD_VERSION"
KWOK_DIR="$CACHE_DIR/kwok-$KWOK_VERSION"
# One directory on PATH with all binaries of this version combination.
BIN_DIR="$CACHE_DIR/envtest-k8s-$K8S_VERSION-etcd-$ETCD_VERSION-kwok-$KWOK_VERSION/bin"

# Overridable, like the ports below, so that a second control plane can run beside the first.
STATE_DIR=${ENVTEST_STATE_DIR:-$REPO_ROOT/target/envtest}
PKI_DIR="$STATE_DIR/pki"
LOG_DIR="$STATE_DIR/logs"
PID_DIR="$STATE_DIR/pids"
KUBECONFIG_FILE="$STATE_DIR/kubeconfig"
BMC_DIR="$STATE_DIR/bmc"                  # one directory per node's BMC

# Loopback ports; overridable so two checkouts can run side by side.
ETCD_CLIENT_PORT=${ENVTEST_ETCD_PORT:-12379}
ETCD_PEER_PORT=${ENVTEST_ETCD_PEER_PORT:-12380}
APISERVER_PORT=${ENVTEST_APISERVER_PORT:-16443}
KCM_PORT=${ENVTEST_KCM_PORT:-10257}
SCHEDULER_PORT=${ENVTEST_SCHEDULER_PORT:-10259}
KWOK_PORT=${ENVTEST_KWOK_PORT:-10247}       # the cluster-wide kwok's healthz
BMC_PORT_BASE=${ENVTEST_BMC_PORT_BASE:-16600} # nodes' BMCs take the first free ports from here

NODE_MONITOR_GRACE=${ENVTEST_NODE_MONITOR_GRACE:-40s}
NODE_MONITOR_PERIOD=${ENVTEST_NODE_MONITOR_PERIOD:-5s}
# Seconds; kwok, like the kubelet, renews the Lease every duration/4 (10 s).
NODE_LEASE_DURATION=${ENVTEST_NODE_LEASE_DURATION:-40}
SCHEDULER_CONFIG=${ENVTEST_SCHEDULER_CONFIG:-}

COMPONENTS=(etcd kube-apiserver kube-controller-manager kube-scheduler kwok attach-gate)

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

# Install a Debian package only when the command is missing.
need_cmd() {
  local cmd=$1 pkg=${2:-$1}
  command -v "$cmd" >/dev/null 2>&1 && return 0
  log "installing $pkg (for $cmd)"
  local sudo=()
  [[ $(id -u) -eq 0 ]] || sudo=(sudo)
  "${sudo[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq "$pkg" >/dev/null
}

# ---- build ------------------------------------------------------------------

go_env() {
  command -v go >/dev/null 2>&1 || die "go is required to build the control plane (Go >= 1.26)"
  local v; v=$(go env GOVERSION)
  if ! [[ $v =~ ^go1\.([0-9]+) ]] || ((BASH_REMATCH[1] < 26)); then
    die "Go >= 1.26 is required to build kubernetes $K8S_VERSION (found $v)"
  fi
  # Never fetch a toolchain; build with the local Go, one compile per core.
  export GOTOOLCHAIN=local GOFLAGS="-p=${ENVTEST_GO_JOBS:-$(nproc)} -buildvcs=false -mod=mod"
}

# Time one build step and report it.
timed() {
  local what=$1; shift
  local t0; t0=$(now)
  "$@"
  log "built $what in $(elapsed "$t0") s"
}

# The module cache copy of a module's go.mod / a field of its download info.
mod_download_field() {
  local mod=$1 field=$2
  go mod download -json "$mod" | sed -n "s/^[[:space:]]*\"$field\": \"\(.*\)\",\{0,1\}\$/\1/p"
}

# k8s.io/kubernetes replaces its staging modules with ./staging, which breaks
# `go install ...@version`. A wrapper module pins each staging module to the
# published v0.<minor>.<patch> tag instead.
k8s_write_wrapper() {
  local src=$1 gomod staging_version
  staging_version="v0.${K8S_VERSION#v1.}"
  gomod=$(mod_download_field "k8s.io/kubernetes@$K8S_VERSION" GoMod)
  [[ -f $gomod ]] || die "could not download k8s.io/kubernetes@$K8S_VERSION"
  mkdir -p "$src"
  {
    echo "module envtest.local/kubernetes"
    echo
    echo "go $(awk '$1 == "go" { print $2; exit }' "$gomod")"
    echo
    echo "require k8s.io/kubernetes $K8S_VERSION"
    echo
    echo "replace ("
    # Only staging modules kubernetes actually requires (some, like the
    # sample-* ones, are not published).
    awk -v v="$staging_version" '
      /^require[[:space:]]*\(/ { inreq = 1; next }
      inreq && /^\)/ { inreq = 0 }
      inreq && $2 == "v0.0.0" { req[$1] = 1 }
      /=>[[:space:]]*\.\/staging\// { if ($1 in req) printf "\t%s => %s %s\n", $1, $1, v }
    ' "$gomod"
    echo ")"
  } >"$src/go.mod"
  cat >"$src/tools.go" <<'GO'
//go:build tools

// Keeps the commands in the module graph so `go mod tidy` records their deps.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
GO
}

build_k8s() {
  local src="$K8S_DIR/src" out="$K8S_DIR/bin"
  [[ -f $K8S_DIR/.complete ]] && return 0
  log "building kubernetes $K8S_VERSION into $out"
  go_env
  timed "k8s.io/kubernetes module download + wrapper" k8s_write_wrapper "$src"
  (cd "$src" && timed "go mod tidy (kubernetes deps)" go mod tidy)
  local minor=${K8S_VERSION#v1.}; minor=${minor%%.*}
  local date; date=$(mod_download_field "k8s.io/kubernetes@$K8S_VERSION" Time)
  local ldflags="-s -w" pkg
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
    ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=$date"
  done
  mkdir -p "$out"
  local cmd
  for cmd in kube-apiserver kube-controller-manager kube-scheduler kubectl; do
    (cd "$src" && timed "$cmd" go build -trimpath -ldflags="$ldflags" -o "$out/$cmd" "k8s.io/kubernetes/cmd/$cmd")
  done
  echo "$K8S_VERSION" >"$K8S_DIR/.complete"
}

# etcd's main module also uses local replaces; a three-line main calling
# etcdmain.Main is exactly what the etcd binary does.
build_etcd() {
  local src="$ETCD_DIR/src" out="$ETCD_DIR/bin"
  [[ -f $ETCD_DIR/.complete ]] && return 0
  log "building etcd $ETCD_VERSION into $out"
  go_env
  mkdir -p "$src" "$out"
  cat >"$src/go.mod" <<MOD
module envtest.local/etcd

go 1.26.0

require go.etcd.io/etcd/server/v3 $ETCD_VERSION
MOD
  cat >"$src/main.go" <<'GO'
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
GO
  (cd "$src" && timed "go mod tidy (etcd deps)" go mod tidy)
  (cd "$src" && timed etcd go build -trimpath -ldflags="-s -w" -o "$out/etcd" .)
  echo "$ETCD_VERSION" >"$ETCD_DIR/.complete"
}

# kwok has no replace directives, so `go install pkg@version` works as is.
# Its stock node/pod stages and the Stage CRD are copied next to the binary so
# `up` does not depend on the module cache later.
build_kwok() {
  local out="$KWOK_DIR/bin" share="$KWOK_DIR/share"
  if [[ ! -f $KWOK_DIR/.complete ]]; then
    log "building kwok $KWOK_VERSION into $out"
    go_env
    mkdir -p "$out"
    GOBIN="$out" timed kwok go install -trimpath \
      -ldflags="-s -w -X sigs.k8s.io/kwok/pkg/consts.Version=${KWOK_VERSION#v}" \
      "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION"
    echo "$KWOK_VERSION" >"$KWOK_DIR/.complete"
  fi
  [[ -f $share/node-stages.yaml && -f $share/stage-crd.yaml ]] && return 0
  go_env
  local src
  src=$(mod_download_field "sigs.k8s.io/kwok@$KWOK_VERSION" Dir)
  [[ -d $src ]] || die "could not download sigs.k8s.io/kwok@$KWOK_VERSION"
  mkdir -p "$share"
  # What a kubelet does: register Ready, keep the lease, run/complete/delete pods.
  local f first=1
  {
    for f in node/fast/node-initialize.yaml node/heartbeat-with-lease/node-heartbeat-with-lease.yaml \
      pod/fast/pod-ready.yaml pod/fast/pod-complete.yaml pod/fast/pod-delete.yaml; do
      [[ $first -eq 1 ]] || echo "---"
      first=0
      cat "$src/kustomize/stage/$f"
    done
  } >"$share/node-stages.yaml.tmp"
  cp "$src/kustomize/crd/bases/kwok.x-k8s.io_stages.yaml" "$share/stage-crd.yaml"
  mv "$share/node-stages.yaml.tmp" "$share/node-stages.yaml"
}

link_bins() {
  mkdir -p "$BIN_DIR"
  local b
  for b in "$K8S_DIR"/bin/* "$ETCD_DIR/bin/etcd" "$KWOK_DIR/bin/kwok"; do
    ln -sfn "$b" "$BIN_DIR/$(basename "$b")"
  done
}

built() {
  [[ -f $K8S_DIR/.complete && -f $ETCD_DIR/.complete && -f $KWOK_DIR/.complete &&
     -f $KWOK_DIR/share/node-stages.yaml && -x $BIN_DIR/kwok && -x $BIN_DIR/kube-apiserver ]]
}

cmd_build() {
  if built; then
    log "binaries up to date in $BIN_DIR"
    return 0
  fi
  # Parallel CI jobs share the cache: one builds, the others wait.
  mkdir -p "$CACHE_DIR"
  exec 9>"$CACHE_DIR/.build.lock"
  flock 9
  if built; then
    log "binaries up to date in $BIN_DIR"
    return 0
  fi
  local t0; t0=$(now)
  build_etcd
  build_kwok
  build_k8s
  link_bins
  log "build finished in $(elapsed "$t0") s; binaries in $BIN_DIR"
}

# ---- processes ----------------------------------------------------------------

kc() { "$BIN_DIR/kubectl" --kubeconfig "$KUBECONFIG_FILE" "$@"; }

pid_of() {
  local f="$PID_DIR/$1.pid" pid
  [[ -f $f ]] || return 1
  pid=$(<"$f")
  # Guard against PID reuse: every process we start has the state dir in its
  # command line, which is empty for a moment between two execs (setsid, then
  # the program).
  pid_alive "$pid" || return 1
  local cmd
  cmd=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || return 1
  [[ -z $cmd || $cmd == *"$STATE_DIR"* ]] || return 1
  echo "$pid"
}

running() { pid_of "$1" >/dev/null; }

# Exists and is not a zombie (an exited child of this shell stays one).
pid_alive() {
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  stat=${stat##*) }
  [[ ${stat%% *} != Z ]]
}

# Start a process detached from this shell: own session, no inherited
# stdin/stdout, so callers capturing our output do not hang on it.
start_proc() {
  local name=$1; shift
  mkdir -p "$LOG_DIR" "$PID_DIR"
  setsid "$@" </dev/null >>"$LOG_DIR/$name.log" 2>&1 &
  local pid=$!
  echo "$pid" >"$PID_DIR/$name.pid"
  # Until the forked shell has exec'd, it shows this script's command line, which
  # pid_of would take for a reused PID and report the process as gone. On a busy
  # machine that window outlasts a refused health check.
  local deadline=$((SECONDS + 10))
  while pid_alive "$pid" && ! tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF "$STATE_DIR"; do
    ((SECONDS < deadline)) || break
    sleep 0.02
  done
}

# SIGTERM, then SIGKILL after a grace period; only PIDs from our pid files.
stop_procs() {
  local grace=$1; shift
  local name pid pids=() names=()
  for name in "$@"; do
    if pid=$(pid_of "$name"); then
      kill -TERM "$pid" 2>/dev/null || true
      pids+=("$pid"); names+=("$name")
    fi
    rm -f "$PID_DIR/$name.pid"
  done
  [[ ${#pids[@]} -gt 0 ]] || return 0
  local deadline=$((SECONDS + grace)) alive
  while :; do
    alive=()
    for pid in "${pids[@]}"; do
      pid_alive "$pid" && alive+=("$pid")
    done
    [[ ${#alive[@]} -eq 0 ]] && break
    if ((SECONDS >= deadline)); then
      log "killing ${alive[*]} after ${grace}s"
      kill -KILL "${alive[@]}" 2>/dev/null || true
      break
    fi
    sleep 0.1
  done
  log "stopped ${names[*]}"
}

all_proc_names() {
  local f
  for f in "$PID_DIR"/*.pid; do
    [[ -e $f ]] && basename "$f" .pid
  done
}

fail_start() {
  local name=$1 msg=$2
  printf 'error: %s failed to start: %s\n--- last lines of %s ---\n' "$name" "$msg" "$LOG_DIR/$name.log" >&2
  tail -n 40 "$LOG_DIR/$name.log" >&2 || true
  printf -- '---\n' >&2
  log "stopping what was started; logs are kept in $LOG_DIR"
  stop_all
  exit 1
}

# Poll a check until it passes; fail fast if the process died.
wait_for() {
  local name=$1 timeout=$2; shift 2
  local deadline=$((SECONDS + timeout))
  until "$@" >/dev/null 2>&1; do
    running "$name" || fail_start "$name" "process exited"
    ((SECONDS < deadline)) || fail_start "$name" "not healthy after ${timeout}s (check: $*)"
    sleep 0.2
  done
  # The check must have been answered by our process, not a leftover one.
  running "$name" || fail_start "$name" "process exited"
}

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# A leftover control plane (another checkout, a killed test run) would
# answer our health checks; refuse to start on top of it.
check_ports_free() {
  local p
  for p in "$ETCD_CLIENT_PORT" "$ETCD_PEER_PORT" "$APISERVER_PORT" "$KCM_PORT" "$SCHEDULER_PORT" "$KWOK_PORT"; do
    port_in_use "$p" && die "127.0.0.1:$p is already in use (another envtest? see ENVTEST_*_PORT in $0)"
  done
  return 0
}

https_ok() { curl -fsS --max-time 2 -k "$1" | grep -qx ok; }
etcd_ok() { curl -fsS --max-time 2 "http://127.0.0.1:$ETCD_CLIENT_PORT/health" | grep -q '"health":"true"'; }
apiserver_ok() {
  curl -fsS --max-time 2 --cacert "$PKI_DIR/ca.crt" --cert "$PKI_DIR/admin.crt" --key "$PKI_DIR/admin.key" \
    "https://127.0.0.1:$APISERVER_PORT/readyz" | grep -qx ok
}
kwok_ok() { curl -fsS --max-time 2 "http://127.0.0.1:$KWOK_PORT/healthz" | grep -qx ok; }

is_up() {
  local c
  for c in "${COMPONENTS[@]}"; do running "$c" || return 1; done
  [[ -f $KUBECONFIG_FILE ]] && apiserver_ok
}

# ---- PKI and kubeconfigs ------------------------------------------------------

# The cluster's PKI, made by envtest-pki (test support) with the project's own certs crate.
gen_pki() {
  local bin
  bin=$(build_test_support_bin envtest-pki)
  "$bin" "$PKI_DIR" || die "making the PKI in $PKI_DIR failed"
}

# Builds a binary of the test support crate and prints its path.
build_test_support_bin() {
  (cd "$REPO_ROOT" && cargo build -j2 -q -p jellyfin-ha-e2e --bin "$1") || die "building $1 failed"
  echo "${CARGO_TARGET_DIR:-$REPO_ROOT/target}/debug/$1"
}

b64() { base64 -w0 <"$1"; }

write_kubeconfig() {
  local file=$1 user=$2
  cat >"$file" <<YAML
apiVersion: v1
kind: Config
clusters:
- name: envtest
  cluster:
    server: https://127.0.0.1:$APISERVER_PORT
    certificate-authority-data: $(b64 "$PKI_DIR/ca.crt")
users:
- name: $user
  user:
    client-certificate-data: $(b64 "$PKI_DIR/$user.crt")
    client-key-data: $(b64 "$PKI_DIR/$user.key")
contexts:
- name: envtest
  context:
    cluster: envtest
    user: $user
current-context: envtest
YAML
}

# A user-supplied KubeSchedulerConfiguration may use @KUBECONFIG@ for the
# scheduler's kubeconfig; clientConnection and leaderElection are added when
# missing.
write_scheduler_config() {
  local out="$STATE_DIR/scheduler-config.yaml" kubeconfig="$STATE_DIR/scheduler.kubeconfig"
  if [[ -n $SCHEDULER_CONFIG ]]; then
    [[ -f $SCHEDULER_CONFIG ]] || die "ENVTEST_SCHEDULER_CONFIG=$SCHEDULER_CONFIG does not exist"
    sed "s|@KUBECONFIG@|$kubeconfig|g" "$SCHEDULER_CONFIG" >"$out"
  else
    printf 'apiVersion: kubescheduler.config.k8s.io/v1\nkind: KubeSchedulerConfiguration\n' >"$out"
  fi
  grep -q '^clientConnection:' "$out" || printf 'clientConnection:\n  kubeconfig: %s\n' "$kubeconfig" >>"$out"
  grep -q '^leaderElection:' "$out" || printf 'leaderElection:\n  leaderElect: false\n' >>"$out"
}

# ---- control plane ------------------------------------------------------------

start_etcd() {
  start_proc etcd "$BIN_DIR/etcd" \
    --name=envtest --data-dir="$STATE_DIR/etcd" \
    --listen-client-urls="http://127.0.0.1:$ETCD_CLIENT_PORT" \
    --advertise-client-urls="http://127.0.0.1:$ETCD_CLIENT_PORT" \
    --listen-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-advertise-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster="envtest=http://127.0.0.1:$ETCD_PEER_PORT" \
    --unsafe-no-fsync --log-level=warn
}

start_apiserver() {
  # The `kubernetes` Service gets no endpoints: loopback IPs are not valid
  # endpoints and nothing runs in-cluster here. Webhook Services are reached through
  # their endpoints (aggregator routing) rather than a cluster IP, since nothing proxies
  # cluster IPs here: a Service whose endpoints are this host's address reaches processes
  # on the host, as replicas behind a Service.
  # Default admission plugins stay on (they include DefaultTolerationSeconds,
  # MutatingAdmissionWebhook, ValidatingAdmissionWebhook); NodeRestriction is added.
  start_proc kube-apiserver "$BIN_DIR/kube-apiserver" \
    --bind-address=127.0.0.1 --advertise-address=127.0.0.1 --secure-port="$APISERVER_PORT" \
    --etcd-servers="http://127.0.0.1:$ETCD_CLIENT_PORT" \
    --cert-dir="$STATE_DIR/apiserver" \
    --client-ca-file="$PKI_DIR/ca.crt" \
    --tls-cert-file="$PKI_DIR/apiserver.crt" --tls-private-key-file="$PKI_DIR/apiserver.key" \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --service-account-key-file="$PKI_DIR/sa.pub" \
    --service-account-signing-key-file="$PKI_DIR/sa.key" \
    --service-cluster-ip-range=10.96.0.0/16 \
    --authorization-mode=Node,RBAC \
    --enable-admission-plugins=NodeRestriction \
    --allow-privileged=true \
    --endpoint-reconciler-type=none \
    --enable-aggregator-routing=true \
    --requestheader-client-ca-file="$PKI_DIR/front-proxy-ca.crt" \
    --requestheader-allowed-names=front-proxy-client \
    --requestheader-username-headers=X-Remote-User \
    --requestheader-group-headers=X-Remote-Group \
    --requestheader-extra-headers-prefix=X-Remote-Extra- \
    --proxy-client-cert-file="$PKI_DIR/front-proxy-client.crt" \
    --proxy-client-key-file="$PKI_DIR/front-proxy-client.key" \
    --profiling=false
}

start_controller_manager() {
  write_kubeconfig "$STATE_DIR/controller-manager.kubeconfig" controller-manager
  # `*` = every default controller, including nodelifecycle, attachdetach,
  # podgc, replicaset, deployment, statefulset, serviceaccount-token,
  # namespace and garbagecollector. One identity per controller, as in kubeadm.
  start_proc kube-controller-manager "$BIN_DIR/kube-controller-manager" \
    --kubeconfig="$STATE_DIR/controller-manager.kubeconfig" \
    --authentication-kubeconfig="$STATE_DIR/controller-manager.kubeconfig" \
    --authorization-kubeconfig="$STATE_DIR/controller-manager.kubeconfig" \
    --bind-address=127.0.0.1 --secure-port="$KCM_PORT" --cert-dir="$STATE_DIR/controller-manager" \
    --leader-elect=false \
    --controllers='*' \
    --use-service-account-credentials=true \
    --service-account-private-key-file="$PKI_DIR/sa.key" \
    --root-ca-file="$PKI_DIR/ca.crt" \
    --cluster-signing-cert-file="$PKI_DIR/ca.crt" --cluster-signing-key-file="$PKI_DIR/ca.key" \
    --service-cluster-ip-range=10.96.0.0/16 \
    --node-monitor-grace-period="$NODE_MONITOR_GRACE" \
    --node-monitor-period="$NODE_MONITOR_PERIOD" \
    --profiling=false
}

start_scheduler() {
  write_kubeconfig "$STATE_DIR/scheduler.kubeconfig" scheduler
  write_scheduler_config
  start_proc kube-scheduler "$BIN_DIR/kube-scheduler" \
    --config="$STATE_DIR/scheduler-config.yaml" \
    --authentication-kubeconfig="$STATE_DIR/scheduler.kubeconfig" \
    --authorization-kubeconfig="$STATE_DIR/scheduler.kubeconfig" \
    --bind-address=127.0.0.1 --secure-port="$SCHEDULER_PORT" --cert-dir="$STATE_DIR/scheduler" \
    --profiling=false
}

# The cluster-wide kwok runs the Stage objects from the cluster (the CSI
# external-attacher stand-in). It manages no node: every node gets its own
# kwok ("kubelet") process, so that powering a node off is killing a process.
start_kwok() {
  start_proc kwok env HOME="$STATE_DIR/kwok-home" "$BIN_DIR/kwok" \
    --kubeconfig="$KUBECONFIG_FILE" \
    --enable-crds=Stage \
    --manage-single-node=envtest-no-such-node \
    --server-address="127.0.0.1:$KWOK_PORT"
}

# A kubelet starts a pod's containers only once its volumes are attached; kwok does not
# wait. The gate (hack/envtest/attach-gate.py) annotates a pod that uses a claim once its CSI
# volumes are attached to the pod's node, and the node kwoks' pod-ready stage waits for that.
start_attach_gate() {
  rm -f "$STATE_DIR/attach-gate.ready"
  start_proc attach-gate "$BMC_VENV/bin/python3" -u "$FIXTURES/attach-gate.py" \
    "https://127.0.0.1:$APISERVER_PORT" "$PKI_DIR/ca.crt" "$PKI_DIR/admin.crt" "$PKI_DIR/admin.key" \
    "$STATE_DIR/attach-gate.ready"
}

# kwok's stock kubelet stages with its pod-ready stage left out: the node kwoks run
# hack/envtest/kubelet/pod-ready.yaml instead, which waits for the attach gate.
write_kubelet_stages() {
  awk '
    function flush() {
      if (doc != "" && doc !~ /\n  name: pod-ready\n/) { printf "%s%s", sep, doc; sep = "---\n" }
      doc = ""
    }
    $0 == "---" { flush(); next }
    { doc = doc $0 "\n" }
    END { flush() }
  ' "$KWOK_DIR/share/node-stages.yaml" >"$STATE_DIR/kubelet-stages.yaml"
  grep -q '^  name: pod-ready$' "$STATE_DIR/kubelet-stages.yaml" && die "could not drop kwok's pod-ready stage"
  grep -q '^  name: pod-delete$' "$STATE_DIR/kubelet-stages.yaml" || die "kwok's stages in $KWOK_DIR/share/node-stages.yaml are not as expected"
}

apply_fixtures() {
  kc apply -f "$KWOK_DIR/share/stage-crd.yaml" >/dev/null
  kc wait --for=condition=Established --timeout=30s crd/stages.kwok.x-k8s.io >/dev/null
  kc apply -f "$FIXTURES/" >/dev/null
}

# The settings a running environment was started with, to notice a reuse
# under different ones.
settings() {
  echo "ENVTEST_NODE_MONITOR_GRACE=$NODE_MONITOR_GRACE"
  echo "ENVTEST_NODE_MONITOR_PERIOD=$NODE_MONITOR_PERIOD"
  echo "ENVTEST_NODE_LEASE_DURATION=$NODE_LEASE_DURATION"
  echo "ENVTEST_SCHEDULER_CONFIG=$SCHEDULER_CONFIG${SCHEDULER_CONFIG:+ ($(cksum <"$SCHEDULER_CONFIG" 2>/dev/null | cut -d' ' -f1))}"
}

cmd_up() {
  local t0; t0=$(now)
  if is_up; then
    if [[ $(settings) != "$(cat "$STATE_DIR/settings" 2>/dev/null)" ]]; then
      log "WARNING: reusing a running environment started with different settings; run '$0 down' first to apply yours:"
      diff <(cat "$STATE_DIR/settings" 2>/dev/null) <(settings) | sed -n 's/^</  running:/p; s/^>/  wanted: /p' >&2 || true
    fi
    log "already up (kubeconfig: $KUBECONFIG_FILE)"
    return 0
  fi
  if [[ -d $STATE_DIR ]]; then
    log "discarding stale state in $STATE_DIR"
    cmd_down
  fi
  cmd_build
  ensure_bmc_tools
  check_ports_free
  mkdir -p "$STATE_DIR" "$LOG_DIR" "$PID_DIR" "$STATE_DIR/kwok-home" "$BMC_DIR"
  settings >"$STATE_DIR/settings"
  node_tools >"$STATE_DIR/node-tools"
  gen_pki
  write_kubelet_stages
  write_kubeconfig "$STATE_DIR/admin.kubeconfig" admin

  start_etcd
  wait_for etcd 30 etcd_ok
  start_apiserver
  wait_for kube-apiserver 60 apiserver_ok
  # Published only once the API answers, so its presence means "usable".
  cp "$STATE_DIR/admin.kubeconfig" "$KUBECONFIG_FILE"
  wait_for kube-apiserver 10 kc get --raw /readyz

  start_controller_manager
  start_scheduler
  apply_fixtures || fail_start kube-apiserver "applying fixtures from $FIXTURES failed"
  start_kwok
  start_attach_gate
  wait_for kube-controller-manager 30 https_ok "https://127.0.0.1:$KCM_PORT/healthz"
  wait_for kube-scheduler 30 https_ok "https://127.0.0.1:$SCHEDULER_PORT/healthz"
  wait_for kwok 30 kwok_ok
  wait_for attach-gate 30 test -f "$STATE_DIR/attach-gate.ready"
  # Pods are rejected until the namespace's default ServiceAccount exists.
  wait_for kube-controller-manager 30 kc -n default get serviceaccount default
  log "up in $(elapsed "$t0") s; export KUBECONFIG=$KUBECONFIG_FILE"
}

# Clients first, then the apiserver, etcd last: an apiserver whose etcd is
# gone does not shut down cleanly.
stop_all() {
  local names=() n clients=()
  mapfile -t names < <(all_proc_names)
  for n in "${names[@]}"; do
    [[ $n == kube-apiserver || $n == etcd ]] || clients+=("$n")
  done
  [[ ${#clients[@]} -eq 0 ]] || stop_procs 5 "${clients[@]}"
  stop_procs 10 kube-apiserver
  stop_procs 5 etcd
}

cmd_down() {
  [[ -d $PID_DIR ]] && stop_all
  rm -rf "$STATE_DIR"
  log "down"
}

cmd_env() {
  echo "export KUBECONFIG=$KUBECONFIG_FILE"
  echo "export PATH=$BIN_DIR:\$PATH"
}

cmd_status() {
  local c pid state rc=0
  for c in "${COMPONENTS[@]}"; do
    if pid=$(pid_of "$c"); then state="running (pid $pid)"; else state="not running"; rc=3; fi
    printf '%-24s %s\n' "$c" "$state"
  done
  if [[ $rc -eq 0 ]] && apiserver_ok; then
    sed 's/^/setting /' "$STATE_DIR/settings" 2>/dev/null || true
    for c in $(kc get nodes -l type=kwok -o name 2>/dev/null); do
      c=${c#node/}
      if pid=$(pid_of "kwok-node-$c"); then
        state="kubelet running (pid $pid)"
      elif [[ -f $BMC_DIR/$c/partitioned ]]; then
        state="partitioned"
      else
        state="powered off"
      fi
      state+=", BMC $(bmc_power_state "$c" 2>/dev/null || echo "not answering")"
      printf 'node %-19s %s\n' "$c" "$state"
    done
    echo "up: KUBECONFIG=$KUBECONFIG_FILE"
  else
    echo "down"
    rc=3
  fi
  return $rc
}

# ---- BMCs -----------------------------------------------------------------------
# Every node has a Redfish BMC (tests/src/envtest/bmc.rs); its facts live in $BMC_DIR/NAME.

# The PowerState of node $1's BMC, for status.
bmc_power_state() {
  local dir="$BMC_DIR/$1"
  [[ -f $dir/port && -f $dir/uuid ]] || return 1
  redfish_power_state "https://127.0.0.1:$(<"$dir/port")" "$PKI_DIR/bmc-ca.crt" \
    "$(<"$dir/username"):$(<"$dir/password")" "/redfish/v1/Systems/$(<"$dir/uuid")"
}

# ---- nodes --------------------------------------------------------------------
# Node lifecycle (tests/src/envtest in the test support crate) runs in the envtest-node
# binary, which tests call in process; it reads what it needs from the state dir.

# What the node code needs from this script, recorded at `up`.
node_tools() {
  echo "K8S_VERSION=$K8S_VERSION"
  echo "KWOK=$BIN_DIR/kwok"
  echo "SUSHY_EMULATOR=$BMC_VENV/bin/sushy-emulator"
  echo "BMC_PORT_BASE=$BMC_PORT_BASE"
}

cmd_node_tools() {
  [[ -d $STATE_DIR ]] || die "the control plane is not up; run: $0 up"
  node_tools >"$STATE_DIR/node-tools"
}

cmd_node() {
  local bin
  bin=$(build_test_support_bin envtest-node)
  ENVTEST_STATE_DIR=$STATE_DIR exec "$bin" "$@"
}

usage() {
  cat <<USAGE
usage: $0 COMMAND
  build                      build the pinned binaries into $CACHE_DIR (cached)
  up                         start etcd, apiserver, controller-manager, scheduler, kwok and the
                             attach gate on 127.0.0.1 (installs the BMC tools when missing)
  env                        print KUBECONFIG and PATH exports
  status                     show whether the control plane is up (exit 3 if not)
  down                       stop every process started here and remove target/envtest
  node-add NAME [--gpu-count N | --no-gpu] [--cpu N] [--memory Q]
                             a node with its kubelet (kwok) and its Redfish BMC (sushy-emulator)
  node-power-off NAME        the machine dies: BMC ForceOff (Off 1-11 s later), kubelet killed
  node-power-on NAME         BMC On, then the kubelet comes back with a new bootID
  node-partition NAME        alive but unreachable: kubelet killed, the BMC still says On
  node-reconnect NAME        the partition heals: the kubelet comes back, same bootID
  node-bmc NAME              the node's BMC as key=value lines: address, system_path,
                             username, password, ca_file
  node-delete NAME           stop the node's kubelet and BMC and delete the Node
  node-tools                 record what the node verbs need in the state dir (done by up)
environment:
  ENVTEST_NODE_MONITOR_GRACE (40s)  ENVTEST_NODE_MONITOR_PERIOD (5s)
  ENVTEST_NODE_LEASE_DURATION (40, renewed every duration/4)
  ENVTEST_SCHEDULER_CONFIG (KubeSchedulerConfiguration file; @KUBECONFIG@ is substituted)
  ENVTEST_{ETCD,ETCD_PEER,APISERVER,KCM,SCHEDULER,KWOK}_PORT
  ENVTEST_BMC_PORT_BASE (16600; BMCs take the first free ports from there)
  ENVTEST_GO_JOBS (parallel compiles, default: number of cores)
  JFHA_CACHE (build cache)
USAGE
}

main() {
  local verb=${1:-}
  [[ $# -gt 0 ]] && shift
  case $verb in
    build) cmd_build ;;
    up) cmd_up ;;
    down) cmd_down ;;
    env) cmd_env ;;
    status) cmd_status ;;
    node-tools) cmd_node_tools ;;
    node-add | node-power-off | node-power-on | node-partition | node-reconnect | node-bmc | node-delete)
      cmd_node "$verb" "$@" ;;
    -h | --help | help) usage ;;
    *) usage >&2; exit 2 ;;
  esac
}

main "$@"
