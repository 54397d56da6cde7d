# Helpers for the failover on this host: the example Jellyfin with its RBD volume, and the
# fencer with one Redfish agent per node (each kwok node's BMC is a sushy-tools emulator).
# Source after hack/lib.sh; needs KUBECONFIG and kubectl on PATH.

# Deploys manifests/example/jellyfin.yaml and the PersistentVolume its claim binds to (no
# provisioner runs here), then waits until the pod runs with its volume attached.
deploy_example_jellyfin() {
  local ns=media attached node
  kubectl apply -f "$REPO_ROOT/manifests/example/jellyfin.yaml" >/dev/null
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
  claimRef: {namespace: $ns, name: jellyfin-config}
  csi:
    driver: rbd.csi.ceph.com
    volumeHandle: 0001-0009-rook-ceph-0000000000000001-jellyfin-config
YAML
  kubectl -n "$ns" rollout status deployment/jellyfin --timeout=90s >/dev/null
  node=$(jellyfin_node)
  for _ in $(seq 100); do
    attached=$(kubectl get volumeattachments -o jsonpath="{range .items[?(@.spec.nodeName=='$node')]}{.status.attached}{end}")
    [[ $attached == true ]] && return 0
    sleep 0.2
  done
  die "the volume was not attached to $node"
}

# The node the running Jellyfin pod is bound to.
jellyfin_node() {
  kubectl -n media get pods -l app.kubernetes.io/name=jellyfin \
    -o jsonpath='{range .items[?(@.status.phase=="Running")]}{.spec.nodeName}{"\n"}{end}' | head -n1
}

# Starts `jellyfin-ha fencer` on loopback with a Redfish agent (powerOff allowed) for each
# NODE, its credentials in Secrets of namespace jellyfin-ha. PID in DIR/fencer.pid, log in
# DIR/fencer.log; waits until its caches have synced. Extra `fencer:` settings come from
# FENCER_EXTRA (YAML lines, indented two spaces).
start_fencer() {
  local bin=$1 dir=$2 admin=$3
  shift 3
  mkdir -p "$dir"
  kubectl create namespace jellyfin-ha --dry-run=client -o yaml | kubectl apply -f - >/dev/null
  {
    echo "fencer:"
    [[ -z ${FENCER_EXTRA:-} ]] || echo "$FENCER_EXTRA"
    echo "  agents:"
    local node key value
    for node in "$@"; do
      local -A bmc=()
      while IFS='=' read -r key value; do bmc[$key]=$value; done < <("$REPO_ROOT/hack/envtest.sh" node-bmc "$node")
      kubectl -n jellyfin-ha create secret generic "bmc-$node" --from-literal=username="${bmc[username]}" \
        --from-literal=password="${bmc[password]}" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
      cat <<YAML
  - name: bmc-$node
    nodes: [$node]
    credentialsSecret: bmc-$node
    powerOff: true
    redfish:
      address: ${bmc[address]}
      systemPath: ${bmc[system_path]}
      caFile: ${bmc[ca_file]}
YAML
      unset bmc
    done
  } >"$dir/config.yaml"
  "$bin" fencer --config "$dir/config.yaml" --admin-listen "$admin" --namespace jellyfin-ha \
    >"$dir/fencer.log" 2>&1 &
  echo $! >"$dir/fencer.pid"
  wait_http_ok "http://$admin/readyz" "the fencer" 300 || { tail -20 "$dir/fencer.log" >&2; exit 1; }
}

stop_fencer() {
  local dir=$1 pid
  [[ -f $dir/fencer.pid ]] || return 0
  pid=$(cat "$dir/fencer.pid")
  if kill -TERM "$pid" 2>/dev/null; then
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$dir/fencer.pid"
}

# The binary that times one failover (tests/src/bin/failover.rs); prints its path.
build_failover_timer() {
  (cd "$REPO_ROOT" && cargo build -j2 -q -p jellyfin-ha-e2e --bin failover) >&2 || die "cargo build failed"
  echo "$REPO_ROOT/target/debug/failover"
}
