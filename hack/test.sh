#!/usr/bin/env bash
# The whole test suite, exactly as CI runs it (.ci/run): formatting, lints, unit and
# integration tests, then the end-to-end tests against a local Kubernetes control plane built
# from source (cached in ~/.cache/jellyfin-ha). Works on a fresh machine; cleans up after itself.
set -euo pipefail
shopt -s inherit_errexit
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
source "$REPO_ROOT/hack/lib-bmc.sh"
cd "$REPO_ROOT"

ensure_toolchain() {
  command -v cargo >/dev/null || die "cargo is required (https://rustup.rs)"
  if command -v rustup >/dev/null; then
    rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt
    rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy
  fi
  local missing=()
  for cmd in curl openssl; do command -v "$cmd" >/dev/null || missing+=("$cmd"); done
  if ((${#missing[@]})); then
    log "installing ${missing[*]}"
    local sudo=()
    [[ $(id -u) -eq 0 ]] || sudo=(sudo)
    "${sudo[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}

# Every cargo test run is logged here so that the closing line can total them.
RESULTS=$(mktemp)
trap 'rm -f "$RESULTS"' EXIT
tested() { "$@" 2>&1 | tee -a "$RESULTS"; }

ensure_toolchain
# fence_redfish and the Redfish BMC emulator the local control plane gives every node.
ensure_bmc_tools

# A clean build gains nothing from incremental caches, which would only add to the disk it needs.
export CARGO_INCREMENTAL=0
log "disk free where the build goes: $(df -h --output=avail "$REPO_ROOT" | tail -1 | tr -d ' ')"

log "cargo fmt --check"
cargo fmt --all -- --check

log "cargo clippy -D warnings"
cargo clippy -j2 --workspace --all-targets -- -D warnings

log "unit and integration tests"
tested cargo test -j2 --workspace --exclude jellyfin-ha-e2e

log "local control plane (built once, then cached)"
hack/envtest.sh build

log "building what the end-to-end tests run, so the two runs below do not wait for each other's cargo"
cargo build -j2 -q -p jellyfin-ha
cargo test -j2 -q -p jellyfin-ha-e2e --no-run

# The two end-to-end runs mostly wait (for Leases to age, BMCs to power off, pods to move), so
# they run at once, each on a control plane of its own: the webhook, fencer, RBAC, restart,
# certificate and doctor tests on one; the extender, scheduling and node agent tests, whose
# kube-scheduler profile counts the extender's calls one test at a time, on the other.
log "end-to-end tests, on two control planes side by side"
E2E_LOGS=$(mktemp -d)
trap 'rm -rf "$RESULTS" "$E2E_LOGS"' EXIT
hack/e2e.sh >"$E2E_LOGS/e2e" 2>&1 &
e2e=$!
ENVTEST_STATE_DIR="$REPO_ROOT/target/envtest-extender" ENVTEST_ETCD_PORT=22379 ENVTEST_ETCD_PEER_PORT=22380 \
  ENVTEST_APISERVER_PORT=26443 ENVTEST_KCM_PORT=20257 ENVTEST_SCHEDULER_PORT=20259 ENVTEST_KWOK_PORT=20247 \
  ENVTEST_BMC_PORT_BASE=27600 hack/e2e-extender.sh >"$E2E_LOGS/e2e-extender" 2>&1 &
extender=$!
failed=()
wait "$e2e" || failed+=(hack/e2e.sh)
wait "$extender" || failed+=(hack/e2e-extender.sh)
for run in e2e e2e-extender; do
  log "output of hack/$run.sh"
  tested cat "$E2E_LOGS/$run"
done
((${#failed[@]} == 0)) || die "failed: ${failed[*]}"

log "container image (under podman, hardened as the manifests run it) and the kubectl plugin"
tested hack/image.sh test

awk '/^test result:/ { passed += $4; failed += $6 } END { printf "all tests: %d passed, %d failed\n", passed, failed }' "$RESULTS"
