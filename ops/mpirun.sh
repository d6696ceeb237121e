#!/usr/bin/env bash
# mpirun with vlorch's environment (ops/env.sh): `ops/mpirun.sh -np 4 build/worker/vlorch-worker ...`
set -euo pipefail
. "$(dirname "$0")/env.sh"
exec mpirun "${VLORCH_MPIRUN_FLAGS[@]}" "$@"
