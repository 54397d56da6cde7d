#!/usr/bin/env bash
# Benchmarks; each prints its figures as `BENCH <name> <value> <unit>`.
#   hack/bench.sh webhook     the webhook's throughput against a no-op floor, CPU per review,
#                             latency and memory
#                             (JFHA_BENCH_WEBHOOK_BIN=path measures another build, e.g. the image's)
#   hack/bench.sh apiserver   pod creation latency through kube-apiserver with and without the webhook
#   hack/bench.sh extender    extender server time, memory and scheduler throughput at 5000 nodes
#   hack/bench.sh failover    failover time from power-off to Jellyfin running elsewhere
#   hack/bench.sh agent       the node agent's CPU per sample and memory on a host with 500 processes and 5000 fds
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$REPO_ROOT"

bench_webhook() {
  cargo bench -j2 -q -p jellyfin-ha --bench webhook
}

bench_apiserver() {
  local dir="$REPO_ROOT/target/bench-apiserver"
  trap 'stop_cluster_and_webhook "'"$dir"'"' EXIT
  start_cluster_and_webhook "$dir" release
  cargo bench -j2 -q -p jellyfin-ha-e2e --bench apiserver
}

case ${1:-} in
  webhook) bench_webhook ;;
  apiserver) bench_apiserver ;;
  extender) exec hack/bench-extender.sh ;;
  failover) shift; exec hack/bench-failover.sh "$@" ;;
  agent) cargo bench -j2 -q -p jellyfin-ha --bench agent ;;
  *) die "usage: $0 webhook|apiserver|extender|failover|agent" ;;
esac
