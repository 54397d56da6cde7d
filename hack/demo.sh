#!/usr/bin/env bash
# The local demo: a control plane with QuickSync kwok nodes, the jellyfin-ha webhook on this
# host, and the example Jellyfin deployed through it. Prints what the webhook did and where the
# pod landed, then cleans up (JFHA_KEEP_CLUSTER=1 leaves the cluster and webhook running).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$REPO_ROOT"

DEMO_DIR="$REPO_ROOT/target/demo"
NS=media

cleanup() {
  local rc=$?
  if [[ -z ${JFHA_KEEP_CLUSTER:-} ]]; then
    stop_webhook "$DEMO_DIR"
    hack/envtest.sh down >/dev/null 2>&1 || true
  fi
  ((rc == 0)) || printf '\ndemo FAILED (exit %d); logs: target/envtest/logs, %s/webhook.log\n' "$rc" "$DEMO_DIR" >&2
}

hack/envtest.sh status >/dev/null 2>&1 &&
  die "a local control plane is already up; stop it with hack/envtest.sh down so the demo can configure its scheduler"
trap cleanup EXIT

log "starting the local control plane"
ENVTEST_SCHEDULER_CONFIG="$REPO_ROOT/manifests/scheduler/kube-scheduler-config.yaml" hack/envtest.sh up
eval "$(hack/envtest.sh env)"

log "starting the webhook on this host"
bin=$(build_binary)
start_webhook "$bin" "$DEMO_DIR" "${JFHA_WEBHOOK_PORT:-18443}" "${JFHA_ADMIN_PORT:-18080}"
register_webhook "$WEBHOOK_URL" "$WEBHOOK_CA"

log "adding nodes: three QuickSync hosts and one without an iGPU"
for node in nuc-1 nuc-2 nuc-3; do hack/envtest.sh node-add "$node" --gpu-count 1 >/dev/null; done
hack/envtest.sh node-add storage-1 --no-gpu >/dev/null

log "deploying the example Jellyfin (Deployment, ReadWriteOnce Ceph RBD claim, opt-in annotation)"
kubectl apply -f manifests/example/jellyfin.yaml >/dev/null
# No provisioner runs here, so the RBD volume is created by hand, as a PV bound to the claim.
kubectl apply -f - >/dev/null <<YAML
apiVersion: v1
kind: PersistentVolume
metadata:
  name: jellyfin-config
spec:
  capacity: {storage: 20Gi}
  accessModes: [ReadWriteOnce]
  persistentVolumeReclaimPolicy: Retain
  storageClassName: ceph-rbd
  claimRef: {namespace: $NS, name: jellyfin-config}
  csi:
    driver: rbd.csi.ceph.com
    volumeHandle: 0001-0009-rook-ceph-0000000000000001-jellyfin-config
YAML

log "waiting for Jellyfin to run"
kubectl -n "$NS" rollout status deployment/jellyfin --timeout=90s >/dev/null
pod=$(kubectl -n "$NS" get pods -l app.kubernetes.io/name=jellyfin -o jsonpath='{.items[0].metadata.name}')
node=$(kubectl -n "$NS" get pod "$pod" -o jsonpath='{.spec.nodeName}')
attached=""
for _ in $(seq 100); do
  attached=$(kubectl get volumeattachments -o jsonpath="{range .items[?(@.spec.nodeName=='$node')]}{.status.attached}{end}")
  [[ $attached == true ]] && break
  sleep 0.2
done
[[ $attached == true ]] || die "the volume was not attached to $node"

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
echo "Nodes:"
kubectl get nodes -L intel.feature.node.kubernetes.io/gpu
echo
echo "demo OK"
