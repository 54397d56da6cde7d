#!/usr/bin/env bash
# Local Kubernetes control plane on loopback for end-to-end tests and the demo:
# etcd + kube-apiserver + kube-controller-manager + kube-scheduler built from
# source at pinned versions, and kwok playing the kubelets of fake nodes.
#
#   hack/envtest.sh build | up | env | status | down
#   hack/envtest.sh node-add NAME [--gpu-count N | --no-gpu]
#   hack/envtest.sh node-power-off NAME | node-power-on NAME
set -euo pipefail

# ---- pinned versions (the build cache is keyed by these) --------------------
K8S_VERSION=v1.37.2   # k8s.io/kubernetes; staging modules are v0.<minor>.<patch>
ETCD_VERSION=v3.7.3   # go.etcd.io/etcd/server/v3 (k8s v1.37 vendors etcd client v3.7)
KWOK_VERSION=v0.8.0   # sigs.k8s.io/kwok

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
FIXTURES="$REPO_ROOT/hack/envtest"
CACHE_DIR=${JFHA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/jellyfin-ha}
K8S_DIR="$CACHE_DIR/kubernetes-$K8S_VERSION"
ETCD_DIR="$CACHE_DIR/etcd-$ETCD_VERSION"
KWOK_DIR="$CACHE_DIR/kwok-$KWOK_VERSION"
# One directory on PATH with all binaries of this version combination.
BIN_DIR="$CACHE_DIR/envtest-k8s-$K8S_VERSION-etcd-$ETCD_VERSION-kwok-$KWOK_VERSION/bin"

STATE_DIR="$REPO_ROOT/target/envtest"
PKI_DIR="$STATE_DIR/pki"
LOG_DIR="$STATE_DIR/logs"
PID_DIR="$STATE_DIR/pids"
KUBECONFIG_FILE="$STATE_DIR/kubeconfig"

# Loopback ports; overridable so two checkouts can run side by side.
ETCD_CLIENT_PORT=${ENVTEST_ETCD_PORT:-12379}
ETCD_PEER_PORT=${ENVTEST_ETCD_PEER_PORT:-12380}
APISERVER_PORT=${ENVTEST_APISERVER_PORT:-16443}
KCM_PORT=${ENVTEST_KCM_PORT:-10257}
SCHEDULER_PORT=${ENVTEST_SCHEDULER_PORT:-10259}
KWOK_PORT=${ENVTEST_KWOK_PORT:-10247}

NODE_MONITOR_GRACE=${ENVTEST_NODE_MONITOR_GRACE:-40s}
NODE_LEASE_DURATION=${ENVTEST_NODE_LEASE_DURATION:-40}    # seconds, kubelet default
NODE_LEASE_RENEW=${ENVTEST_NODE_LEASE_RENEW:-10}          # seconds, kubelet renews at 1/4
SCHEDULER_CONFIG=${ENVTEST_SCHEDULER_CONFIG:-}

# kwok only manages nodes carrying this annotation; removing it is "power off".
KWOK_NODE_ANNOTATION=kwok.x-k8s.io/node
KWOK_NODE_ANNOTATION_VALUE=fake

COMPONENTS=(etcd kube-apiserver kube-controller-manager kube-scheduler kwok)

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
  # Never fetch a toolchain; build with the local Go.
  export GOTOOLCHAIN=local GOFLAGS="-p=2 -buildvcs=false -mod=mod"
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

