#!/usr/bin/env bash
# End-to-end tests: the real webhook binary behind a real kube-apiserver.
# Starts the local control plane unless one is already up (and then leaves it up), runs the
# webhook on loopback, runs the tests in tests/, and stops what it started.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$REPO_ROOT"

E2E_DIR=${JFHA_E2E_DIR:-$REPO_ROOT/target/e2e}  # overridable, like the ports, for runs side by side
E2E_DIR=$(realpath -m "$E2E_DIR")  # the tests run from tests/
trap 'stop_cluster_and_webhook "$E2E_DIR"' EXIT
start_cluster_and_webhook "$E2E_DIR"
cargo test -j2 -p jellyfin-ha-e2e "$@"
