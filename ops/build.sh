#!/usr/bin/env bash
# Configures and builds vlorch into $VLORCH_BUILD_DIR (default build/). Extra arguments go to
# cmake's configure step, e.g. -DCMAKE_PREFIX_PATH=/opt/libtorch-cuda -DVLORCH_WITH_CUDA=ON.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
build="${VLORCH_BUILD_DIR:-$root/build}"
jobs="${VLORCH_BUILD_JOBS:-$(nproc)}"
start=$(date +%s)
cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE="${CMAKE_BUILD_TYPE:-RelWithDebInfo}" "$@"
cmake --build "$build" -j "$jobs"
echo "build: done in $(( $(date +%s) - start )) s ($build)"
