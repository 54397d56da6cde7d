#!/usr/bin/env bash
# End-to-end check of the local control plane from hack/envtest.sh: scheduling
# onto a kwok node, lease renewal, power-off -> NotReady, power-on with a new
# bootID, and CSI attach/detach through the real attach/detach controller.
# Run after `hack/envtest.sh up` (ENVTEST_NODE_MONITOR_GRACE=20s keeps it short).
set -euo pipefail

ENVTEST="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/envtest.sh"
eval "$("$ENVTEST" env)"
NODE=smoke-qs
NS=default

step() { printf '\n--- %s\n' "$*"; }
fail() { printf 'FAIL: %s\n' "$*" >&2; exit 1; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
# wait_until TIMEOUT CMD...: poll every 0.5 s.
wait_until() {
  local deadline=$((SECONDS + $1)); shift
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || return 1
    sleep 0.5
  done
}
ready_status() { kubectl get node "$NODE" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}'; }
not_ready() { [[ $(ready_status) != True ]]; }
renew_time() { kubectl -n kube-node-lease get lease "$NODE" -o jsonpath='{.spec.renewTime}'; }
renewed_since() { [[ $(renew_time) != "$1" ]]; }
boot_id() { kubectl get node "$NODE" -o jsonpath='{.status.nodeInfo.bootID}'; }
va_attached() {
  [[ $(kubectl get volumeattachment -o jsonpath="{range .items[?(@.spec.nodeName==\"$NODE\")]}{.status.attached}{end}") == true ]]
}
pod_gone() { ! kubectl -n "$NS" get pod "$1"; }
no_va() { [[ -z $(kubectl get volumeattachment -o jsonpath="{.items[?(@.spec.nodeName==\"$NODE\")].metadata.name}") ]]; }

cleanup() {
  kubectl -n "$NS" delete pod smoke-plain smoke-vol --ignore-not-found --grace-period=0 --force >/dev/null 2>&1 || true
  kubectl -n "$NS" delete pvc smoke-vol --ignore-not-found --wait=false >/dev/null 2>&1 || true
  kubectl delete pv smoke-vol --ignore-not-found --wait=false >/dev/null 2>&1 || true
  "$ENVTEST" node-delete "$NODE" >/dev/null 2>&1 || true
}
trap cleanup EXIT

"$ENVTEST" status >/dev/null || fail "control plane is not up; run: $ENVTEST up"
grace=$(sed -n 's/^ENVTEST_NODE_MONITOR_GRACE=//p' "$(dirname "$KUBECONFIG")/settings")

step "node-add $NODE"
"$ENVTEST" node-add "$NODE" --gpu-count 1
[[ $(kubectl get node "$NODE" -o jsonpath='{.status.allocatable.gpu\.intel\.com/i915}') == 1 ]] || fail "no gpu.intel.com/i915"

step "a pod is scheduled by kube-scheduler and run by kwok"
kubectl -n "$NS" apply -f - >/dev/null <<YAML
apiVersion: v1
kind: Pod
metadata: {name: smoke-plain}
spec:
  nodeSelector: {kubernetes.io/hostname: $NODE}
  containers:
  - name: c
    image: busybox
    resources: {limits: {gpu.intel.com/i915: "1"}}
YAML
kubectl -n "$NS" wait --for=condition=Ready --timeout=30s pod/smoke-plain >/dev/null || fail "pod not Running"
kubectl -n "$NS" get pod smoke-plain -o wide

step "the node's Lease is renewed (every 10 s with the default 40 s duration)"
r0=$(renew_time)
wait_until 15 renewed_since "$r0" || fail "lease not renewed in 15 s"
echo "renewTime $r0 -> $(renew_time)"

step "a statically provisioned ceph-rbd volume is attached by the attach/detach controller"
kubectl apply -f - >/dev/null <<YAML
apiVersion: v1
kind: PersistentVolume
metadata: {name: smoke-vol}
spec:
  capacity: {storage: 1Gi}
  accessModes: [ReadWriteOnce]
  persistentVolumeReclaimPolicy: Retain
  storageClassName: ceph-rbd
  claimRef: {namespace: $NS, name: smoke-vol}
  csi: {driver: rbd.csi.ceph.com, volumeHandle: smoke-vol-handle, fsType: ext4}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: smoke-vol, namespace: $NS}
spec:
  accessModes: [ReadWriteOnce]
  storageClassName: ceph-rbd
  volumeName: smoke-vol
  resources: {requests: {storage: 1Gi}}
---
apiVersion: v1
kind: Pod
metadata: {name: smoke-vol, namespace: $NS}
spec:
  nodeSelector: {kubernetes.io/hostname: $NODE}
  containers:
  - {name: c, image: busybox, volumeMounts: [{name: v, mountPath: /v}]}
  volumes:
  - {name: v, persistentVolumeClaim: {claimName: smoke-vol}}
YAML
t=$(now)
wait_until 30 va_attached || fail "VolumeAttachment not attached"
echo "VolumeAttachment attached after $(since "$t") s"
kubectl get volumeattachment

step "node-power-off: lease stops, node goes NotReady after the grace period ($grace)"
"$ENVTEST" node-power-off "$NODE"
t=$(now); r0=$(renew_time)
wait_until 120 not_ready || fail "node still Ready after 120 s"
echo "Ready=$(ready_status) $(since "$t") s after power-off (lease last renewed $r0)"
[[ $(renew_time) == "$r0" ]] || fail "lease was renewed while powered off"
kubectl get node "$NODE" -o jsonpath='{.spec.taints}{"\n"}'
[[ $(kubectl get node "$NODE" -o jsonpath='{.status.volumesInUse}') == *smoke-vol-handle* ]] ||
  fail "volumesInUse does not list the attached volume"

step "a dead node keeps its volume: deleting the pod does not detach"
kubectl -n "$NS" delete pod smoke-vol --wait=false >/dev/null
sleep 5
va_attached || fail "volume detached from a dead node without out-of-service"
kubectl -n "$NS" get pod smoke-vol

step "node-power-on: new bootID, Ready again, the stuck pod finishes, the volume detaches"
b0=$(boot_id)
"$ENVTEST" node-power-on "$NODE"
[[ $(boot_id) != "$b0" ]] || fail "bootID unchanged"
echo "bootID $b0 -> $(boot_id)"
wait_until 30 pod_gone smoke-vol || fail "pod not deleted after power-on"
wait_until 30 no_va || fail "volume not detached"
echo "volume detached"

printf '\nOK\n'
