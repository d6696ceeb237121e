#!/usr/bin/env bash
# Installs the dependencies, builds, and runs the whole test suite (unit tests and the
# multi-rank tests under real mpirun). This is the command README.md gives and .ci/run runs.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
bash "$root/ops/install-deps.sh"
bash "$root/ops/build.sh"
build="${VLORCH_BUILD_DIR:-$root/build}"
# The fuzz targets, a bounded time each (ops/fuzz.sh; longer runs by hand).
bash "$root/ops/fuzz.sh" --seconds "${VLORCH_FUZZ_SECONDS:-20}"
start=$(date +%s)
# Unit tests run in parallel; the mpirun tests are RUN_SERIAL (ranks share the cores).
(cd "$build" && ctest --output-on-failure -j "$(nproc)" "$@")
echo "test: suite done in $(( $(date +%s) - start )) s"
# The kill campaign's short version (ops/chaos.sh; 100 trials by hand): two trials of random
# kill -9 of ranks, the coordinator, a checkpoint write and the transform, final weights
# compared bitwise with an uninterrupted run.
VLORCH_BUILD_DIR="$build" bash "$root/ops/chaos.sh" --trials "${VLORCH_CHAOS_TRIALS:-2}"
