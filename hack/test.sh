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

log "cargo fmt --check"
cargo fmt --all -- --check

log "cargo clippy -D warnings"
cargo clippy -j2 --workspace --all-targets -- -D warnings

log "unit and integration tests"
tested cargo test -j2 --workspace --exclude jellyfin-ha-e2e

log "local control plane (built once, then cached)"
hack/envtest.sh build

log "end-to-end tests"
tested hack/e2e.sh

log "end-to-end tests of the scheduler extender"
tested hack/e2e-extender.sh

log "end-to-end tests of the node agent, through the extender"
tested hack/e2e-extender.sh --test agent

log "container image (under podman, hardened as the manifests run it) and the kubectl plugin"
tested hack/image.sh test

awk '/^test result:/ { passed += $4; failed += $6 } END { printf "all tests: %d passed, %d failed\n", passed, failed }' "$RESULTS"
