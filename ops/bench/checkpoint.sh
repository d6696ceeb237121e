# bench: checkpoint save MB/s vs raw sequential write+fsync of the same bytes, and the async snapshot stall
# Usage: ops/bench/run checkpoint [MB=256]
# Baseline: write(2) of the same byte count in 4 MiB blocks then fsync, in the same run, same
# directory. The save is vlorch's full commit (safetensors files, fsync, CRC32C manifest,
# rename, latest); the snapshot is what an async save costs the training step.
# Target: save >= 0.8x the raw write speed.
set -euo pipefail
ninja -C "$VLORCH_BUILD_DIR" bench_checkpoint >/dev/null
mb="${1:-256}"
dir="$(mktemp -d "${VLORCH_BENCH_DIR:-/var/tmp}/vlorch-bench-ckpt.XXXXXX")"
trap 'rm -rf "$dir"' EXIT
out=$("$VLORCH_BUILD_DIR/ops/bench/bench_checkpoint" "$dir" "$mb")
echo "$out" | grep -v '^summary'
raw=$(echo "$out" | awk -F'raw_mbps=' '/^summary/{split($2,a," "); print a[1]}')
save=$(echo "$out" | awk -F'save_mbps=' '/^summary/{split($2,a," "); print a[1]}')
echo "ratio checkpoint_save_over_raw_write = $(awk -v a="$save" -v b="$raw" 'BEGIN{printf "%.2f", a/b}') (target 0.8)"
