#!/usr/bin/env bash
# The demo: installs the dependencies, builds vlorch, makes a small captioned-JPEG dataset
# (img2dataset layout), ingests it into a shard store, and trains the tiny vision-language job
# of ops/demo/tiny-vl.yaml with `vlorch launch` (two stages: full training, then a projector
# stage initialised from the first). `vlorch launch` runs a coordinator in-process when none
# answers, which starts `mpirun -np 2 vlorch-worker` per stage, tracks heartbeats, progress and
# checkpoints, and prints status while it trains; `vlorch status tiny-vl-1` works from another
# terminal meanwhile. Everything lands in ${VLORCH_DEMO_DIR:-demo-run}; running the demo again
# resumes (finished stages are not re-run) — delete the directory to start over.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
bash "$root/ops/install-deps.sh"
bash "$root/ops/build.sh"
build="${VLORCH_BUILD_DIR:-$root/build}"
np="${VLORCH_DEMO_NP:-2}"
dir="${VLORCH_DEMO_DIR:-$root/demo-run}"
if [ "$np" -gt "$(nproc)" ]; then export VLORCH_OVERSUBSCRIBE=1; fi
mkdir -p "$dir"
cp "$root/ops/demo/tiny-vl.yaml" "$dir/job.yaml"
if [ ! -f "$dir/data/store/CURRENT" ]; then
  echo "demo: generating 400 captioned JPEGs (img2dataset layout) and ingesting them"
  "$build/coordinator/vlorch" dev make-dataset --format img2dataset --out "$dir/data/src" --shards 4 \
      --per-shard 100 --no-bad --min-px 32 --max-px 128
  "$build/coordinator/vlorch" shards ingest --format img2dataset --store "$dir/data/store" "$dir"/data/src/*.tar
fi
. "$root/ops/env.sh"  # root and malloc settings for the mpirun the coordinator starts
echo "demo: vlorch launch $dir/job.yaml --np $np"
"$build/coordinator/vlorch" launch "$dir/job.yaml" --np "$np"
echo "demo: checkpoints and metrics under $dir/run/stages/, coordinator state and logs under $dir/run/"
