#!/usr/bin/env bash
# Extender figures at 5000 nodes, printed as `BENCH <name> <value> <unit>`:
#   extender_filter_p99_ms_5000, extender_prioritize_p99_ms_5000   server time (in process)
#   extender_{filter,prioritize}_p99_ms_5000_half_failing            the same, half the Leases stale
#   extender_*_p99_ms_5000*_without_cpu_wait    each p99 less the time the thread waited for a CPU
#                                    that other processes held (a busy machine, not the call's cost)
#   extender_rss_mib_5000            the real binary's resident memory with 5000 Nodes, Leases
#                                    and CSINodes cached
#   scheduler_throughput_ratio_managed_vs_plain_5000
#                                    pods/s of managed pods through the real kube-scheduler with
#                                    the extender, divided by pods/s of plain pods, same run
# Needs a control plane of its own (5000 nodes are not added to one that is in use): refuses to
# run when one is up. The nodes are objects only (no kwok): Ready at creation, with a 1 h
# node-monitor grace period and Leases the extender treats as fresh for an hour.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
source "$REPO_ROOT/hack/lib-extender.sh"
cd "$REPO_ROOT"

NODES=${JFHA_BENCH_NODES:-5000}
PODS=${JFHA_BENCH_PODS:-1000}
DIR="$REPO_ROOT/target/bench-extender"
SCHEDULER_NAME=jellyfin-ha-bench
SCHEDULER_PORT=${JFHA_BENCH_SCHEDULER_PORT:-10369}

cargo bench -j2 -q -p jellyfin-ha --bench extender | grep '^BENCH'

hack/envtest.sh status >/dev/null 2>&1 &&
  die "a local control plane is already up; stop it with hack/envtest.sh down (the benchmark adds $NODES nodes)"
stop_scheduler() {
  [[ -f $DIR/scheduler.pid ]] || return 0
  kill -TERM "$(cat "$DIR/scheduler.pid")" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 "$(cat "$DIR/scheduler.pid")" 2>/dev/null || break; sleep 0.1; done
  rm -f "$DIR/scheduler.pid"
}
cleanup() {
  stop_scheduler
  stop_extender "$DIR"
  [[ -n ${JFHA_KEEP_CLUSTER:-} ]] || hack/envtest.sh down >/dev/null 2>&1 || true
}
trap cleanup EXIT
rm -rf "$DIR" && mkdir -p "$DIR"

ENVTEST_NODE_MONITOR_GRACE=1h hack/envtest.sh up >/dev/null
eval "$(hack/envtest.sh env)"
bin=$(build_binary release)

log "creating $NODES nodes with their Leases and CSINodes"
renew=$(date -u +%Y-%m-%dT%H:%M:%S.000000Z)
gen() {
  local from=$1 to=$2 i name
  for ((i = from; i < to; i++)); do
    name=$(printf 'bench-%05d' "$i")
    cat <<YAML
---
apiVersion: v1
kind: Node
metadata:
  name: $name
  labels: {kubernetes.io/hostname: $name, intel.feature.node.kubernetes.io/gpu: "true", type: bench}
status:
  capacity: {cpu: "8", memory: 32Gi, pods: "110", gpu.intel.com/i915: "2"}
  allocatable: {cpu: "8", memory: 32Gi, pods: "110", gpu.intel.com/i915: "2"}
  conditions: [{type: Ready, status: "True", reason: KubeletReady, message: bench}]
  nodeInfo: {architecture: amd64, bootID: boot-$i, machineID: m$i, systemUUID: s$i, operatingSystem: linux, osImage: bench, kernelVersion: bench, containerRuntimeVersion: bench, kubeletVersion: v1.37.2}
---
apiVersion: coordination.k8s.io/v1
kind: Lease
metadata: {name: $name, namespace: kube-node-lease}
spec: {holderIdentity: $name, leaseDurationSeconds: 40, renewTime: "$renew"}
---
apiVersion: storage.k8s.io/v1
kind: CSINode
metadata: {name: $name}
spec:
  drivers: [{name: rbd.csi.ceph.com, nodeID: $name, allocatable: {count: 32}}]
YAML
  done
}
workers=4 per=$(((NODES + 3) / 4))
for ((w = 0; w < workers; w++)); do
  from=$((w * per)) to=$(((w + 1) * per))
  ((to > NODES)) && to=$NODES
  gen "$from" "$to" >"$DIR/nodes-$w.yaml"
  kubectl create -f "$DIR/nodes-$w.yaml" >/dev/null &
done
wait

cat >"$DIR/config.yaml" <<YAML
extender:
  leaseStaleSeconds: 3600
YAML
start_extender "$bin" "$DIR" "${JFHA_EXTENDER_PORT:-18454}" "${JFHA_EXTENDER_ADMIN_PORT:-18091}" --config "$DIR/config.yaml"
# Ready means listed; wait until the watch has every node, then let the allocator settle.
sleep 3
pid=$(cat "$DIR/extender.pid")
rss=$(awk '/^VmRSS:/ { printf "%.1f", $2 / 1024 }' "/proc/$pid/status")
hwm=$(awk '/^VmHWM:/ { printf "%.1f", $2 / 1024 }' "/proc/$pid/status")
echo "BENCH extender_rss_mib_$NODES $rss MiB"
echo "BENCH extender_peak_rss_mib_$NODES $hwm MiB"

render_scheduler_config "$EXTENDER_URL" "$EXTENDER_CA" "$DIR/scheduler-config.yaml" "$SCHEDULER_NAME"
kubeconfig="$REPO_ROOT/target/envtest/scheduler.kubeconfig"
printf 'clientConnection:\n  kubeconfig: %s\n  qps: 5000\n  burst: 5000\nleaderElection:\n  leaderElect: false\n' "$kubeconfig" >>"$DIR/scheduler-config.yaml"

# Pods are created while the bench scheduler is stopped, then it is started and drains its
# queue as fast as it can: the rate is first bind to last bind.
pods_yaml() {
  local kind=$1 i
  for ((i = 0; i < PODS; i++)); do
    cat <<YAML
---
apiVersion: v1
kind: Pod
metadata:
  name: $kind-$i
  namespace: bench-$kind
  labels: {bench: "$kind"$([[ $kind == managed ]] && echo ', jellyfin-ha.io/managed: "true"')}
spec:
  schedulerName: $SCHEDULER_NAME
  containers:
  - name: c
    image: bench
    resources:
      requests: {cpu: 10m$([[ $kind == managed ]] && echo ', jellyfin-ha.io/managed: "1"')}
      limits: {cpu: 10m$([[ $kind == managed ]] && echo ', jellyfin-ha.io/managed: "1"')}
YAML
  done
}

rate() {
  local kind=$1 unbound first="" last="" start
  kubectl create namespace "bench-$kind" >/dev/null
  pods_yaml "$kind" >"$DIR/pods-$kind.yaml"
  kubectl create -f "$DIR/pods-$kind.yaml" >/dev/null
  "$(dirname "$(command -v kubectl)")/kube-scheduler" --config="$DIR/scheduler-config.yaml" \
    --authentication-kubeconfig="$kubeconfig" --authorization-kubeconfig="$kubeconfig" \
    --bind-address=127.0.0.1 --secure-port="$SCHEDULER_PORT" --cert-dir="$DIR/scheduler-certs" \
    --profiling=false >"$DIR/scheduler-$kind.log" 2>&1 &
  echo $! >"$DIR/scheduler.pid"
  start=$(date +%s.%N)
  while :; do
    unbound=$(kubectl -n "bench-$kind" get pods --field-selector spec.nodeName= --no-headers 2>/dev/null | wc -l)
    now=$(date +%s.%N)
    [[ -z $first && $unbound -lt $PODS ]] && first=$now
    ((unbound == 0)) && { last=$now; break; }
    awk -v s="$start" -v n="$now" 'BEGIN { exit !(n - s > 300) }' && die "$kind pods not all bound within 300 s ($unbound left)"
    sleep 0.1
  done
  stop_scheduler
  awk -v a="$first" -v b="$last" -v n="$PODS" 'BEGIN { printf "%.1f", (n - 1) / (b - a) }'
}

plain=$(rate plain)
managed=$(rate managed)
echo "BENCH scheduler_pods_per_second_plain_$NODES $plain pods/s"
echo "BENCH scheduler_pods_per_second_managed_$NODES $managed pods/s"
awk -v m="$managed" -v p="$plain" -v n="$NODES" 'BEGIN { printf "BENCH scheduler_throughput_ratio_managed_vs_plain_%d %.2f ratio\n", n, m / p }'
calls=$(curl -fsS "http://$EXTENDER_ADMIN/metrics" | awk '/^jellyfin_ha_extender_calls_total\{verb="filter",outcome="ok"\}/ { print $2 }')
log "extender filter calls: ${calls:-0} (expected $PODS: the plain pods never reach it)"
