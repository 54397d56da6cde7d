# Redfish BMCs for the local control plane's nodes: the tools (Debian's fence-agents for
# fence_redfish, sushy-tools' emulator in a cached virtualenv) and small Redfish helpers.
# Source it; it defines variables and functions only. Callers define log and die.

SUSHY_TOOLS_VERSION=2.2.0
BMC_TOOLS_CACHE=${JFHA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/jellyfin-ha}
BMC_VENV="$BMC_TOOLS_CACHE/venv"
FENCE_REDFISH=/usr/sbin/fence_redfish

bmc_apt_install() {
  local sudo=()
  [[ $(id -u) -eq 0 ]] || sudo=(sudo)
  log "installing Debian packages: $*"
  "${sudo[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq "$@" >/dev/null
}

bmc_venv_ok() {
  [[ -x $BMC_VENV/bin/sushy-emulator ]] &&
    "$BMC_VENV/bin/python3" - "$SUSHY_TOOLS_VERSION" 2>/dev/null <<'PY'
import importlib.metadata, sys
import bcrypt  # the emulator's htpasswd check needs it
sys.exit(importlib.metadata.version("sushy-tools") != sys.argv[1])
PY
}

# fence_redfish, curl, openssl and sushy-emulator $SUSHY_TOOLS_VERSION in $BMC_VENV; installs
# only what is missing. Parallel callers share the cache: one installs, the others wait.
ensure_bmc_tools() {
  local pkgs=()
  [[ -x $FENCE_REDFISH ]] || pkgs+=(fence-agents)
  command -v curl >/dev/null || pkgs+=(curl)
  command -v openssl >/dev/null || pkgs+=(openssl)
  command -v python3 >/dev/null || pkgs+=(python3)
  # Debian's python3 has no ensurepip (so no `python3 -m venv`) without python3-venv.
  if ! bmc_venv_ok && ! python3 -c 'import ensurepip' 2>/dev/null; then
    pkgs+=(python3-venv)
  fi
  ((${#pkgs[@]} == 0)) || bmc_apt_install "${pkgs[@]}"
  bmc_venv_ok && return 0
  mkdir -p "$BMC_TOOLS_CACHE"
  (
    flock 8
    bmc_venv_ok && exit 0
    log "installing sushy-tools $SUSHY_TOOLS_VERSION into $BMC_VENV"
    rm -rf "$BMC_VENV"
    python3 -m venv "$BMC_VENV"
    "$BMC_VENV/bin/pip" install -q --disable-pip-version-check "sushy-tools==$SUSHY_TOOLS_VERSION"
    bmc_venv_ok
  ) 8>"$BMC_TOOLS_CACHE/.venv.lock" || die "could not install sushy-tools $SUSHY_TOOLS_VERSION into $BMC_VENV"
}

# redfish ADDRESS CA USER:PASS METHOD PATH [curl args...]
redfish() {
  local address=$1 ca=$2 credentials=$3 method=$4 path=$5
  shift 5
  curl -fsS --max-time 5 --cacert "$ca" --user "$credentials" -X "$method" \
    -H 'Accept: application/json' "$address$path" "$@"
}

# Prints the system's PowerState (On, Off, PoweringOn, ...).
redfish_power_state() {
  local address=$1 ca=$2 credentials=$3 system_path=$4
  redfish "$address" "$ca" "$credentials" GET "$system_path" |
    sed -n 's/.*"PowerState": *"\([A-Za-z]*\)".*/\1/p'
}
