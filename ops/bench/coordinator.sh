#!/usr/bin/env bash
# bench: control plane: 4,096 simulated ranks heartbeating + progress vs one coordinator; status p99
set -euo pipefail
ninja -C "$VLORCH_BUILD_DIR" bench_coordinator vlorch >/dev/null
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
exec "$VLORCH_BUILD_DIR/ops/bench/bench_coordinator" --vlorch "$VLORCH_BUILD_DIR/coordinator/vlorch" "$@"
