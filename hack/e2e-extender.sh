#!/usr/bin/env bash
# End-to-end tests of the scheduler extender through a real kube-scheduler: the extender binary
# runs on loopback, and a second kube-scheduler (profile jellyfin-ha-e2e, the shipped
# configuration with its extenders stanza) runs beside the control plane's own, so a running
# control plane can be reused as it is. Starts one (with a long node-monitor grace period, so
# that the extender alone keeps pods off a node whose Lease went stale) when none is up.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
source "$REPO_ROOT/hack/lib-extender.sh"
cd "$REPO_ROOT"

# Overridable, like the ports, for runs side by side.
DIR=${JFHA_E2E_DIR:-$REPO_ROOT/target/e2e-extender}
DIR=$(realpath -m "$DIR")  # the tests run from tests/
SCHEDULER_NAME=${JFHA_E2E_SCHEDULER_PROFILE:-jellyfin-ha-e2e}
SCHEDULER_PORT=${JFHA_E2E_SCHEDULER_PORT:-10359}
STARTED_CLUSTER=false

cleanup() {
  if [[ -f $DIR/scheduler.pid ]]; then
    kill -TERM "$(cat "$DIR/scheduler.pid")" 2>/dev/null || true
    rm -f "$DIR/scheduler.pid"
  fi
  stop_extender "$DIR"
  if $STARTED_CLUSTER && [[ -z ${JFHA_KEEP_CLUSTER:-} ]]; then
    hack/envtest.sh down >/dev/null 2>&1 || true
  fi
}
trap cleanup EXIT

if ! hack/envtest.sh status >/dev/null 2>&1; then
  STARTED_CLUSTER=true
  ENVTEST_NODE_MONITOR_GRACE=${ENVTEST_NODE_MONITOR_GRACE:-120s} hack/envtest.sh up ||
    die "the local control plane could not be started (see ${ENVTEST_STATE_DIR:-target/envtest}/logs)"
fi
eval "$(hack/envtest.sh env)"
bin=$(build_binary)
mkdir -p "$DIR"

# Stale after 15 s: more than one missed 10 s renewal, and well inside the 30-55 s a 40 s
# node-monitor grace period takes to turn the node NotReady. No flapping part: every node here
# is seconds old, and kwok reports its creation time as the Ready transition. The shortest
# watch silence allowed, so that quiet kinds (PersistentVolumes, CSINodes) must relist every
# 15 s for the extender to keep answering through the run.
cat >"$DIR/config.yaml" <<YAML
extender:
  leaseStaleSeconds: 15
  flapWindowSeconds: 0
  watchSilenceSeconds: 30
YAML
start_extender "$bin" "$DIR" "${JFHA_EXTENDER_PORT:-18444}" "${JFHA_EXTENDER_ADMIN_PORT:-18081}" \
  --config "$DIR/config.yaml"
log "extender on $EXTENDER_URL (admin $EXTENDER_ADMIN)"

render_scheduler_config "$EXTENDER_URL" "$EXTENDER_CA" "$DIR/scheduler-config.yaml" "$SCHEDULER_NAME"
# The control plane's own scheduler identity, beside its admin kubeconfig.
kubeconfig="$(dirname "$KUBECONFIG")/scheduler.kubeconfig"
printf 'clientConnection:\n  kubeconfig: %s\nleaderElection:\n  leaderElect: false\n' "$kubeconfig" >>"$DIR/scheduler-config.yaml"
port_in_use "$SCHEDULER_PORT" && die "port $SCHEDULER_PORT is in use (set JFHA_E2E_SCHEDULER_PORT)"
"$(dirname "$(command -v kubectl)")/kube-scheduler" \
  --config="$DIR/scheduler-config.yaml" \
  --authentication-kubeconfig="$kubeconfig" --authorization-kubeconfig="$kubeconfig" \
  --bind-address=127.0.0.1 --secure-port="$SCHEDULER_PORT" --cert-dir="$DIR/scheduler-certs" \
  --profiling=false >"$DIR/scheduler.log" 2>&1 &
echo $! >"$DIR/scheduler.pid"
for _ in $(seq 100); do
  curl -fsSk --max-time 1 "https://127.0.0.1:$SCHEDULER_PORT/healthz" >/dev/null 2>&1 && break
  kill -0 "$(cat "$DIR/scheduler.pid")" 2>/dev/null || { tail -20 "$DIR/scheduler.log" >&2; die "kube-scheduler exited"; }
  sleep 0.1
done
log "kube-scheduler profile $SCHEDULER_NAME on 127.0.0.1:$SCHEDULER_PORT"

export JFHA_E2E_EXTENDER_ADMIN=$EXTENDER_ADMIN JFHA_E2E_SCHEDULER_NAME=$SCHEDULER_NAME
export JFHA_E2E_EXTENDER_URL=$EXTENDER_URL JFHA_E2E_EXTENDER_CA=$EXTENDER_CA
export JFHA_E2E_SCHEDULER_LOG=$DIR/scheduler.log
export JFHA_E2E_BIN=$bin JFHA_E2E_EXTENDER_CONFIG=$DIR/config.yaml
# One at a time: the tests count the extender's calls. Test targets may be named first
# (--test NAME ...); the rest goes to the test binaries.
targets=()
while [[ ${1:-} == --test ]]; do targets+=("$1" "$2"); shift 2; done
((${#targets[@]})) || targets=(--test extender --test scheduling --test agent)
cargo test -j2 -p jellyfin-ha-e2e "${targets[@]}" -- --ignored --test-threads=1 "$@"
