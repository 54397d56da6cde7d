# Helpers for running the scheduler extender on this host. Source after hack/lib.sh.

# The extender URL in the shipped scheduler configuration, replaced for local runs.
SHIPPED_EXTENDER_URL=https://jellyfin-ha-extender.jellyfin-ha.svc:8444

# Starts `jellyfin-ha extender` on loopback with the certificates in DIR/certs (generated when
# missing), writes its PID to DIR/extender.pid and its log to DIR/extender.log, and waits until
# its caches have synced. Sets EXTENDER_URL, EXTENDER_ADMIN, EXTENDER_CA. Needs KUBECONFIG.
start_extender() {
  local bin=$1 dir=$2 port=$3 admin_port=$4
  shift 4
  port_in_use "$port" && die "port $port is in use (set JFHA_EXTENDER_PORT)"
  port_in_use "$admin_port" && die "port $admin_port is in use (set JFHA_EXTENDER_ADMIN_PORT)"
  mkdir -p "$dir"
  [[ -f $dir/certs/tls.crt ]] || "$bin" certs --out-dir "$dir/certs" --name localhost --name 127.0.0.1 2>/dev/null
  # No Service in front of it here, so nothing to wait for on SIGTERM.
  "$bin" extender --listen "127.0.0.1:$port" --admin-listen "127.0.0.1:$admin_port" --shutdown-delay-seconds=0 \
    --tls-cert "$dir/certs/tls.crt" --tls-key "$dir/certs/tls.key" "$@" >"$dir/extender.log" 2>&1 &
  echo $! >"$dir/extender.pid"
  EXTENDER_URL="https://127.0.0.1:$port"
  EXTENDER_ADMIN="127.0.0.1:$admin_port"
  EXTENDER_CA="$dir/certs/ca.crt"
  wait_http_ok "http://$EXTENDER_ADMIN/readyz" "the extender" 300 || { tail -20 "$dir/extender.log" >&2; exit 1; }
}

# Stops what start_extender started: SIGTERM, which drains and exits 0.
stop_extender() {
  local dir=$1 pid
  [[ -f $dir/extender.pid ]] || return 0
  pid=$(cat "$dir/extender.pid")
  if kill -TERM "$pid" 2>/dev/null; then
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$dir/extender.pid"
}

# Writes the shipped scheduler configuration to OUT, pointed at an extender at URL whose
# certificate CA_FILE signed; SCHEDULER_NAME renames the profile (default-scheduler).
render_scheduler_config() {
  local url=$1 ca_file=$2 out=$3 name=${4:-default-scheduler}
  local shipped="$REPO_ROOT/manifests/scheduling/extender/kube-scheduler-config.yaml"
  grep -q "urlPrefix: $SHIPPED_EXTENDER_URL\$" "$shipped" || die "$shipped has no urlPrefix $SHIPPED_EXTENDER_URL"
  grep -q '@CA_DATA@' "$shipped" || die "$shipped has no @CA_DATA@ placeholder"
  mkdir -p "$(dirname "$out")"
  sed -e "s|urlPrefix: $SHIPPED_EXTENDER_URL\$|urlPrefix: $url|" \
    -e "s|@CA_DATA@|$(base64 -w0 "$ca_file")|" \
    -e "s|schedulerName: default-scheduler|schedulerName: $name|" \
    "$shipped" >"$out"
}
