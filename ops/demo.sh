#!/usr/bin/env bash
# The demo: installs the dependencies, builds vlorch, and runs the default job under mpirun
# on this machine. Until the training pieces land, the job is the communication self-check:
# two ranks build a device mesh and verify every collective on every group, then time an
# all-reduce.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
bash "$root/ops/install-deps.sh"
bash "$root/ops/build.sh"
build="${VLORCH_BUILD_DIR:-$root/build}"
np="${VLORCH_DEMO_NP:-2}"
if [ "$np" -gt "$(nproc)" ]; then export VLORCH_OVERSUBSCRIBE=1; fi
echo "demo: mpirun -np $np vlorch-worker check-comm"
"$root/ops/mpirun.sh" -np "$np" "$build/worker/vlorch-worker" check-comm
