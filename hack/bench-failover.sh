#!/usr/bin/env bash
# Failover figures on the local cluster, printed as `BENCH <name> <value> <unit>`. The demo's
# scenario (webhook, extender through kube-scheduler, fencer with a Redfish BMC per node, the
# example Jellyfin on three QuickSync nodes), Jellyfin's node powered off again and again;
# failover time runs from the power-off to the new pod Running with its volume attached.
#   failover_p50_s_default, failover_p99_s_default   kubelet-default 10 s Lease renewals
#   failover_p50_s_tuned                              2.5 s renewals (leaseDuration 10 s)
#   dual_attach_samples                               samples (every 100 ms) with the volume
#                                                     attached to two nodes, over every run
#   failover_s_stock   one run with jellyfin-ha's roles off: stock Kubernetes
#   failover_s_seed    one run of the old script's mechanism: the webhook's 15 s tolerations,
#                      no fencer, and a loop that taints a node out-of-service 20 s after it
#                      turns unreachable, without proof
# JFHA_BENCH_RUNS (10) runs per heartbeat setting; JFHA_BENCH_STOCK_TIMEOUT (900) seconds
# before the stock run is called not recovered. Arguments pick parts (default, tuned, seed,
# stock; all when none). Needs a control plane of its own.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
source "$REPO_ROOT/hack/lib-extender.sh"
source "$REPO_ROOT/hack/lib-failover.sh"
cd "$REPO_ROOT"

RUNS=${JFHA_BENCH_RUNS:-10}
STOCK_TIMEOUT=${JFHA_BENCH_STOCK_TIMEOUT:-900}
DIR="$REPO_ROOT/target/bench-failover"
NODES=(nuc-1 nuc-2 nuc-3)

hack/envtest.sh status >/dev/null 2>&1 &&
  die "a local control plane is already up; stop it with hack/envtest.sh down (the benchmark configures its own)"

cleanup() {
  stop_fencer "$DIR/fencer"
  stop_extender "$DIR/extender"
  stop_webhook "$DIR"
  [[ -f $DIR/seed.pid ]] && kill "$(cat "$DIR/seed.pid")" 2>/dev/null
  rm -f "$DIR/seed.pid"
  [[ -n ${JFHA_KEEP_CLUSTER:-} ]] || hack/envtest.sh down >/dev/null 2>&1 || true
}
trap cleanup EXIT
rm -rf "$DIR" && mkdir -p "$DIR"
bin=$(build_binary)
failover=$(build_failover_timer)
"$bin" certs --out-dir "$DIR/extender/certs" --name localhost --name 127.0.0.1 2>/dev/null
render_scheduler_config "https://127.0.0.1:${JFHA_EXTENDER_PORT:-18444}" "$DIR/extender/certs/ca.crt" "$DIR/scheduler-config.yaml"

# A cluster with LEASE seconds heartbeat Leases, the roles named in ROLES (webhook, extender,
# fencer), three QuickSync nodes and the example Jellyfin running.
scene_up() {
  local lease=$1 roles=$2
  cleanup
  local scheduler_config=""
  [[ $roles == *extender* ]] && scheduler_config=$DIR/scheduler-config.yaml
  ENVTEST_NODE_LEASE_DURATION=$lease ENVTEST_SCHEDULER_CONFIG=$scheduler_config hack/envtest.sh up >/dev/null
  eval "$(hack/envtest.sh env)"
  [[ $roles == *extender* ]] && use_extender_scheduling
  if [[ $roles == *webhook* ]]; then
    start_webhook "$bin" "$DIR" "${JFHA_WEBHOOK_PORT:-18443}" "${JFHA_ADMIN_PORT:-18080}"
    register_webhook "$WEBHOOK_URL" "$WEBHOOK_CA"
  fi
  [[ $roles == *extender* ]] &&
    start_extender "$bin" "$DIR/extender" "${JFHA_EXTENDER_PORT:-18444}" "${JFHA_EXTENDER_ADMIN_PORT:-18081}"
  local node
  for node in "${NODES[@]}"; do hack/envtest.sh node-add "$node" --gpu-count 2 >/dev/null; done
  [[ $roles == *fencer* ]] &&
    start_fencer "$bin" "$DIR/fencer" "127.0.0.1:${JFHA_FENCER_ADMIN_PORT:-18082}" "${NODES[@]}"
  deploy_example_jellyfin
}

# Powers off Jellyfin's node and times the failover; prints the seconds (or "none") and adds
# the run's dual-attach samples to $DIR/dual-attach.
time_failover() {
  local timeout=$1 node out
  node=$(jellyfin_node)
  out=$("$failover" --namespace media --selector app.kubernetes.io/name=jellyfin --pv jellyfin-config \
    --timeout "$timeout" -- hack/envtest.sh node-power-off "$node" 2>&1) || true
  printf '%s\n' "$out" >>"$DIR/timelines.txt"
  awk '/^dual-attach samples:/ { print $3 }' <<<"$out" >>"$DIR/dual-attach"
  awk '/^failover: [0-9.]+ s$/ { print $2; found = 1 } END { if (!found) print "none" }' <<<"$out"
}

# The dead node boots again; the fencer gives it back once it is Ready with a new bootID.
recover_node() {
  local node=$1
  hack/envtest.sh node-power-on "$node" >/dev/null
  for _ in $(seq 300); do
    kubectl get node "$node" -o jsonpath='{.spec.taints[*].key}' | grep -q out-of-service || return 0
    sleep 0.2
  done
  die "$node kept its out-of-service taint after a power cycle"
}

# The p-th percentile (nearest rank) of the numbers on stdin.
percentile() {
  sort -n | awk -v p="$1" '{ v[NR] = $1 } END { i = int((p / 100) * NR + 0.999999); if (i < 1) i = 1; print v[i] }'
}

runs_with_lease() {
  local lease=$1 name=$2 seconds node
  scene_up "$lease" webhook,extender,fencer
  : >"$DIR/$name.times"
  for run in $(seq "$RUNS"); do
    node=$(jellyfin_node)
    seconds=$(time_failover 180)
    [[ $seconds != none ]] || die "run $run ($name): Jellyfin did not recover within 180 s (see $DIR/timelines.txt)"
    log "$name run $run: failover $seconds s"
    echo "$seconds" >>"$DIR/$name.times"
    recover_node "$node"
  done
}

bench_default() {
  runs_with_lease 40 default
  echo "BENCH failover_p50_s_default $(percentile 50 <"$DIR/default.times") s"
  echo "BENCH failover_p99_s_default $(percentile 99 <"$DIR/default.times") s"
}

bench_tuned() {
  runs_with_lease 10 tuned
  echo "BENCH failover_p50_s_tuned $(percentile 50 <"$DIR/tuned.times") s"
}

bench_seed() {
  log "the old script's mechanism: webhook on, no fencer, out-of-service 20 s after unreachable"
  # The extender stays, as in the other runs: the webhook marks pods with a resource only a
  # scheduler configured for jellyfin-ha ignores.
  scene_up 40 webhook,extender
  (
    declare -A since=()
    while sleep 1; do
      for node in "${NODES[@]}"; do
        if kubectl get node "$node" -o jsonpath='{.spec.taints[*].key}' 2>/dev/null | grep -q 'node.kubernetes.io/unreachable'; then
          since[$node]=${since[$node]:-$(date +%s)}
          if (($(date +%s) - since[$node] >= 20)); then
            kubectl taint node "$node" node.kubernetes.io/out-of-service=nodeshutdown:NoExecute --overwrite >/dev/null 2>&1 || true
          fi
        else
          unset "since[$node]"
        fi
      done
    done
  ) &
  echo $! >"$DIR/seed.pid"
  local seconds
  seconds=$(time_failover 900)
  echo "BENCH failover_s_seed $seconds s"
  kill "$(cat "$DIR/seed.pid")" 2>/dev/null || true
  rm -f "$DIR/seed.pid"
}

bench_stock() {
  log "stock Kubernetes: no webhook, extender or fencer (stopped at $STOCK_TIMEOUT s)"
  scene_up 40 none
  local seconds
  seconds=$(time_failover "$STOCK_TIMEOUT")
  if [[ $seconds == none ]]; then
    log "stock Kubernetes did not recover within $STOCK_TIMEOUT s: the figure is the time it was given, not a recovery"
    echo "BENCH failover_s_stock $STOCK_TIMEOUT s"
  else
    echo "BENCH failover_s_stock $seconds s"
  fi
}

: >"$DIR/dual-attach"
parts=("$@")
((${#parts[@]})) || parts=(default tuned seed stock)
for part in "${parts[@]}"; do
  case $part in
    default | tuned | seed | stock) "bench_$part" ;;
    *) die "unknown part $part (default, tuned, seed, stock)" ;;
  esac
done
if [[ " ${parts[*]} " == *" default "* || " ${parts[*]} " == *" tuned "* ]]; then
  echo "BENCH dual_attach_samples $(awk '{ s += $1 } END { print s + 0 }' "$DIR/dual-attach") samples"
fi
