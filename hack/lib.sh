# Shared helpers for hack/ scripts. Source it; it defines functions only.

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# Builds the binary once and prints its path.
build_binary() {
  local profile=${1:-debug}
  local flag=()
  [[ $profile == release ]] && flag=(--release)
  (cd "$REPO_ROOT" && cargo build -j2 -q "${flag[@]}" -p jellyfin-ha) >&2 || die "cargo build failed"
  echo "$REPO_ROOT/target/$profile/jellyfin-ha"
}

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Waits until GET http://ADDR/PATH answers 200.
wait_http_ok() {
  local url=$1 what=$2 tries=${3:-100}
  for _ in $(seq "$tries"); do
    curl -fsS --max-time 1 "$url" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  die "$what did not become ready ($url)"
}

# Starts `jellyfin-ha webhook` on loopback with fresh certificates in DIR, writes its PID to
# DIR/webhook.pid and its log to DIR/webhook.log. Sets WEBHOOK_URL, WEBHOOK_ADMIN, WEBHOOK_CA.
start_webhook() {
  local bin=$1 dir=$2 port=$3 admin_port=$4
  shift 4
  port_in_use "$port" && die "port $port is in use (set JFHA_WEBHOOK_PORT)"
  port_in_use "$admin_port" && die "port $admin_port is in use (set JFHA_ADMIN_PORT)"
  mkdir -p "$dir"
  "$bin" certs --out-dir "$dir/certs" --name localhost --name 127.0.0.1 2>/dev/null
  # No Service in front of it here, so nothing to wait for on SIGTERM.
  "$bin" webhook --listen "127.0.0.1:$port" --admin-listen "127.0.0.1:$admin_port" --shutdown-delay-seconds=0 \
    --tls-cert "$dir/certs/tls.crt" --tls-key "$dir/certs/tls.key" "$@" >"$dir/webhook.log" 2>&1 &
  echo $! >"$dir/webhook.pid"
  WEBHOOK_URL="https://127.0.0.1:$port"
  WEBHOOK_ADMIN="127.0.0.1:$admin_port"
  WEBHOOK_CA="$dir/certs/ca.crt"
  wait_http_ok "http://$WEBHOOK_ADMIN/readyz" "the webhook" || { tail -20 "$dir/webhook.log" >&2; exit 1; }
}

# Stops what start_webhook started: SIGTERM, which drains and exits 0.
stop_webhook() {
  local dir=$1 pid
  [[ -f $dir/webhook.pid ]] || return 0
  pid=$(cat "$dir/webhook.pid")
  if kill -TERM "$pid" 2>/dev/null; then
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$dir/webhook.pid"
}

# Turns scheduling through the extender on, as a user does once kube-scheduler runs with the
# shipped configuration: the ConfigMap of manifests/scheduling/extender, in jellyfin-ha's
# namespace, which the webhook watches before it marks pods for the extender.
use_extender_scheduling() {
  kubectl create namespace jellyfin-ha --dry-run=client -o yaml | kubectl apply -f - >/dev/null
  kubectl apply -k "$REPO_ROOT/manifests/scheduling/extender" >/dev/null
}

# Registers the shipped MutatingWebhookConfiguration with its clientConfig pointed at a webhook
# on this host. Needs KUBECONFIG and kubectl on PATH.
register_webhook() {
  local url=$1 ca_file=$2 ca patch
  ca=$(base64 -w0 "$ca_file")
  patch="[{\"op\":\"replace\",\"path\":\"/webhooks/0/clientConfig\",\"value\":{\"url\":\"$url/mutate\",\"caBundle\":\"$ca\"}},"
  patch+="{\"op\":\"replace\",\"path\":\"/webhooks/1/clientConfig\",\"value\":{\"url\":\"$url/mutate\",\"caBundle\":\"$ca\"}}]"
  kubectl patch --local -o json --type=json -p "$patch" \
    -f "$REPO_ROOT/manifests/base/mutatingwebhookconfiguration.yaml" | kubectl apply -f - >/dev/null
}

# Brings up the local control plane unless one is up, runs the webhook on loopback in DIR and
# exports what tests/ reads (JFHA_E2E_*). Call stop_cluster_and_webhook DIR on exit: it stops
# the webhook, and the control plane too if this call started it (JFHA_KEEP_CLUSTER=1 keeps it).
start_cluster_and_webhook() {
  local dir=$1 profile=${2:-debug} bin
  STARTED_CLUSTER=false
  if ! "$REPO_ROOT/hack/envtest.sh" status >/dev/null 2>&1; then
    STARTED_CLUSTER=true
    "$REPO_ROOT/hack/envtest.sh" up || die "the local control plane could not be started (see target/envtest/logs)"
  fi
  eval "$("$REPO_ROOT/hack/envtest.sh" env)"
  # The tests expect pods marked for the extender, which e2e-extender.sh's scheduler profile
  # calls; tests of the other ways run webhooks of their own.
  use_extender_scheduling
  bin=$(build_binary "$profile")
  start_webhook "$bin" "$dir" "${JFHA_WEBHOOK_PORT:-18443}" "${JFHA_ADMIN_PORT:-18080}"
  log "webhook on $WEBHOOK_URL (admin $WEBHOOK_ADMIN)"
  export JFHA_E2E_WEBHOOK_URL=$WEBHOOK_URL JFHA_E2E_WEBHOOK_ADMIN=$WEBHOOK_ADMIN JFHA_E2E_WEBHOOK_CA=$WEBHOOK_CA
}

stop_cluster_and_webhook() {
  stop_webhook "$1"
  if ${STARTED_CLUSTER:-false} && [[ -z ${JFHA_KEEP_CLUSTER:-} ]]; then
    "$REPO_ROOT/hack/envtest.sh" down >/dev/null 2>&1 || true
  fi
}
