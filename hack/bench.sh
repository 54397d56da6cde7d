#!/usr/bin/env bash
# Benchmarks; each prints its figures as `BENCH <name> <value> <unit>`.
#   hack/bench.sh webhook     the webhook's throughput against a no-op floor, latency and memory
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$REPO_ROOT"

bench_webhook() {
  cargo bench -j2 -q -p jellyfin-ha --bench webhook
}

case ${1:-} in
  webhook) bench_webhook ;;
  *) die "usage: $0 webhook" ;;
esac
