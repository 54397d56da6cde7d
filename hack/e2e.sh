#!/usr/bin/env bash
# End-to-end tests: the real webhook binary behind a real kube-apiserver.
# Starts the local control plane unless one is already up (and then leaves it up), runs the
# webhook on loopback, runs the tests in tests/, and stops what it started.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$REPO_ROOT"

E2E_DIR="$REPO_ROOT/target/e2e"
started_cluster=false

cleanup() {
  stop_webhook "$E2E_DIR"
  if $started_cluster && [[ -z ${JFHA_KEEP_CLUSTER:-} ]]; then hack/envtest.sh down >/dev/null 2>&1 || true; fi
}
trap cleanup EXIT

if ! hack/envtest.sh status >/dev/null 2>&1; then
  started_cluster=true
  hack/envtest.sh up || die "the local control plane could not be started (see target/envtest/logs)"
fi
eval "$(hack/envtest.sh env)"

bin=$(build_binary)
start_webhook "$bin" "$E2E_DIR" "${JFHA_WEBHOOK_PORT:-18443}" "${JFHA_ADMIN_PORT:-18080}"
log "webhook on $WEBHOOK_URL (admin $WEBHOOK_ADMIN)"

export JFHA_E2E_WEBHOOK_URL=$WEBHOOK_URL JFHA_E2E_WEBHOOK_ADMIN=$WEBHOOK_ADMIN JFHA_E2E_WEBHOOK_CA=$WEBHOOK_CA
cargo test -j2 -p jellyfin-ha-e2e "$@"
