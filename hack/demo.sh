#!/usr/bin/env bash
# The local demo: a control plane with QuickSync kwok nodes (each with a Redfish BMC), the
# jellyfin-ha webhook and scheduler extender on this host, and the example Jellyfin deployed
# through them. One node is busy with other managed pods and, as its node agent measures, an
# unmanaged transcode; one has lost power but still says Ready. Prints what the webhook did, where the pod landed and the extender's explanation. Then
# the fencer starts, Jellyfin's node loses power, and the demo prints the failover's timeline.
# Cleans up (JFHA_KEEP_CLUSTER=1 leaves the cluster, webhook, extender and fencer running).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
source "$REPO_ROOT/hack/lib-extender.sh"
source "$REPO_ROOT/hack/lib-failover.sh"
cd "$REPO_ROOT"

DEMO_DIR="$REPO_ROOT/target/demo"
NS=media

# Runs the node agent for NODE on a synthetic host (no Intel GPU here) whose render engine a
# transcode jellyfin-ha does not manage keeps BUSY (0 to 1) busy; its admin port is ADMIN.
start_gpu_agent() {
  local node=$1 busy=$2 admin=$3 dir="$DEMO_DIR/agent-$1"
  mkdir -p "$dir"
  "$gpu_host" "$dir/host" "$busy" >"$dir/flags" 2>"$dir/gpu-host.log" &
  echo $! >"$dir/gpu-host.pid"
  for _ in $(seq 50); do [[ -s $dir/flags ]] && break; sleep 0.1; done
  [[ -s $dir/flags ]] || die "the synthetic host for $node did not start (see $dir/gpu-host.log)"
  # shellcheck disable=SC2046 # the flags are one line of words
  "$bin" agent --node "$node" --publish cluster --interval 1s --admin-listen "127.0.0.1:$admin" \
    $(cat "$dir/flags") >"$dir/agent.log" 2>&1 &
  echo $! >"$dir/agent.pid"
}

stop_gpu_agents() {
  local pid_file
  for pid_file in "$DEMO_DIR"/agent-*/*.pid; do
    [[ -f $pid_file ]] || continue
    kill "$(cat "$pid_file")" 2>/dev/null || true
    rm -f "$pid_file"
  done
}

cleanup() {
  local rc=$?
  if [[ -z ${JFHA_KEEP_CLUSTER:-} ]]; then
    stop_gpu_agents
    stop_fencer "$DEMO_DIR/fencer"
    stop_extender "$DEMO_DIR/extender"
    stop_webhook "$DEMO_DIR"
    hack/envtest.sh down >/dev/null 2>&1 || true
  fi
  ((rc == 0)) || printf '\ndemo FAILED (exit %d); logs: target/envtest/logs, %s/webhook.log, %s/extender/extender.log\n' "$rc" "$DEMO_DIR" "$DEMO_DIR" >&2
}

hack/envtest.sh status >/dev/null 2>&1 &&
  die "a local control plane is already up; stop it with hack/envtest.sh down so the demo can configure its scheduler"
trap cleanup EXIT

bin=$(build_binary)
extender_port=${JFHA_EXTENDER_PORT:-18444}
EXTENDER_DIR="$DEMO_DIR/extender"
mkdir -p "$EXTENDER_DIR"
"$bin" certs --out-dir "$EXTENDER_DIR/certs" --name localhost --name 127.0.0.1 2>/dev/null
# The shipped scheduler configuration, pointed at the extender on this host.
render_scheduler_config "https://127.0.0.1:$extender_port" "$EXTENDER_DIR/certs/ca.crt" "$EXTENDER_DIR/kube-scheduler-config.yaml"

log "starting the local control plane (scheduler with the jellyfin-ha extender)"
# A long grace period: the powered-off node keeps saying Ready for two minutes, as a node does
# for 40-50 s in a real cluster; only its stale Lease gives it away.
ENVTEST_NODE_MONITOR_GRACE=120s ENVTEST_SCHEDULER_CONFIG="$EXTENDER_DIR/kube-scheduler-config.yaml" hack/envtest.sh up
eval "$(hack/envtest.sh env)"
# The scheduler runs with the shipped extender configuration: turn the marking on.
use_extender_scheduling

log "starting the webhook and the extender on this host"
start_webhook "$bin" "$DEMO_DIR" "${JFHA_WEBHOOK_PORT:-18443}" "${JFHA_ADMIN_PORT:-18080}"
register_webhook "$WEBHOOK_URL" "$WEBHOOK_CA"
start_extender "$bin" "$EXTENDER_DIR" "$extender_port" "${JFHA_EXTENDER_ADMIN_PORT:-18081}"

log "adding nodes: three QuickSync hosts and one without an iGPU"
for node in nuc-1 nuc-2 nuc-3; do hack/envtest.sh node-add "$node" --gpu-count 2 >/dev/null; done
hack/envtest.sh node-add storage-1 --no-gpu >/dev/null

log "nuc-2 loses power (its Lease stops; it keeps saying Ready for now)"
hack/envtest.sh node-power-off nuc-2 2>/dev/null

log "nuc-1 gets busy: two other managed transcoders run there"
kubectl create namespace transcode >/dev/null
for i in 1 2; do
  kubectl -n transcode apply -f - >/dev/null <<YAML
apiVersion: v1
kind: Pod
metadata:
  name: transcoder-$i
  labels: {jellyfin-ha.io/managed: "true"}
spec:
  nodeName: nuc-1
  containers: [{name: transcode, image: docker.io/jellyfin/jellyfin:10.10.7}]
YAML
done

log "node agents measure nuc-1's and nuc-3's iGPUs (synthetic hosts): a transcode jellyfin-ha does not manage keeps nuc-1's render engine 85% busy, nuc-3's 10%"
gpu_host=$(cargo build -j2 -q -p jellyfin-ha-e2e --bin gpu-host >&2 && echo "$REPO_ROOT/target/debug/gpu-host")
start_gpu_agent nuc-1 0.85 "${JFHA_AGENT_ADMIN_PORT_BASE:-18090}"
start_gpu_agent nuc-3 0.10 "$((${JFHA_AGENT_ADMIN_PORT_BASE:-18090} + 1))"
for _ in $(seq 100); do
  kubectl -n jellyfin-ha get configmap jellyfin-ha-agent-nuc-1 jellyfin-ha-agent-nuc-3 >/dev/null 2>&1 && break
  sleep 0.1
done
kubectl -n jellyfin-ha get configmap jellyfin-ha-agent-nuc-1 jellyfin-ha-agent-nuc-3 >/dev/null ||
  die "the node agents wrote no reports (see $DEMO_DIR/agent-*/agent.log)"

log "waiting until nuc-2's Lease is older than the extender's 20 s threshold"
for _ in $(seq 400); do
  renewed=$(kubectl -n kube-node-lease get lease nuc-2 -o jsonpath='{.spec.renewTime}')
  (($(date +%s) - $(date -d "$renewed" +%s) > 21)) && break
  sleep 0.1
done
(($(date +%s) - $(date -d "$renewed" +%s) > 21)) || die "nuc-2's Lease is still being renewed"

log "deploying the example Jellyfin (Deployment, ReadWriteOnce Ceph RBD claim, opt-in annotation)"
deploy_example_jellyfin
pod=$(kubectl -n "$NS" get pods -l app.kubernetes.io/name=jellyfin -o jsonpath='{.items[0].metadata.name}')
node=$(jellyfin_node)

echo
echo "Jellyfin pod $NS/$pod runs on $node; its volume is attached there."
echo
echo "What the webhook recorded (jellyfin-ha.io/mutations):"
kubectl -n "$NS" get pod "$pod" -o jsonpath='{.metadata.annotations.jellyfin-ha\.io/mutations}' | tr ';' '\n' | sed 's/^ */  /'
echo
echo "Failover tolerations (DefaultTolerationSeconds' 300 s replaced):"
kubectl -n "$NS" get pod "$pod" -o jsonpath='{range .spec.tolerations[*]}  {.key} {.effect} {.tolerationSeconds}s{"\n"}{end}'
echo "Termination grace: $(kubectl -n "$NS" get pod "$pod" -o jsonpath='{.spec.terminationGracePeriodSeconds}')s"
echo "iGPU limit: gpu.intel.com/i915=$(kubectl -n "$NS" get pod "$pod" -o jsonpath='{.spec.containers[0].resources.limits.gpu\.intel\.com/i915}')"
echo
echo "Nodes (nuc-2 still says Ready):"
kubectl get nodes -L intel.feature.node.kubernetes.io/gpu
echo
echo "Why the scheduler extender put it there (jellyfin-ha explain $pod -n $NS; now that the"
echo "volume is attached to $node, every other node also fails the volume check; MEASURED is"
echo "what the node agents measured):"
"$bin" explain "$pod" -n "$NS" | tee "$DEMO_DIR/explain.txt"
grep -Eq '^nuc-1 .* 8[0-9]% [0-9]+s ago' "$DEMO_DIR/explain.txt" || die "explain shows no measured load for nuc-1"
[[ $node == nuc-3 ]] || die "expected Jellyfin on nuc-3 (idle and alive), not $node"
[[ $(kubectl get node nuc-2 -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}') == True ]] ||
  die "nuc-2 turned NotReady before the end of the demo: the extender's verdict was not the only thing keeping Jellyfin off it"

echo
log "nuc-2 boots again; every QuickSync node heartbeats"
hack/envtest.sh node-power-on nuc-2 >/dev/null

log "starting the fencer on this host: a Redfish agent per node (each node's BMC is sushy-tools)"
FENCER_DIR="$DEMO_DIR/fencer"
start_fencer "$bin" "$FENCER_DIR" "127.0.0.1:${JFHA_FENCER_ADMIN_PORT:-18082}" nuc-1 nuc-2 nuc-3
failover=$(build_failover_timer)

echo
echo "Failover: $node, where Jellyfin runs, loses power."
"$failover" --namespace "$NS" --selector app.kubernetes.io/name=jellyfin --pv jellyfin-config --timeout 180 \
  -- hack/envtest.sh node-power-off "$node" | tee "$FENCER_DIR/timeline.txt"
grep -q '^dual-attach samples: 0$' "$FENCER_DIR/timeline.txt" || die "the volume was attached to two nodes at once"
echo
echo "What the fencer recorded on $node (jellyfin-ha.io/fenced):"
kubectl get node "$node" -o jsonpath='{.metadata.annotations.jellyfin-ha\.io/fenced}' | tr ',' '\n' | sed 's/^[{ ]*/  /; s/}$//'
echo
echo "jellyfin-ha doctor -n $NS, after the failover (checks, verdicts and fixes for the QuickSync nodes):"
"$bin" doctor -n "$NS" --config "$FENCER_DIR/config.yaml" --node-selector intel.feature.node.kubernetes.io/gpu=true |
  tee "$DEMO_DIR/doctor.txt" || true
grep -Eq '^[0-9]+ ok, [0-9]+ warn, [0-9]+ fail$' "$DEMO_DIR/doctor.txt" || die "jellyfin-ha doctor printed no report"
echo
echo "demo OK"
