# bench: data pipeline samples/s vs Python DataLoader + PIL/torchvision, and vs raw JPEG decode
# Usage: ops/bench/run dataflow [RECORDS=2000] [WORKERS=2] [BATCH=32]
# Data: CC595K-like (chat.json + images/ of real JPEGs, 256-512 px), ingested into a store.
# Targets: >= 3x the Python peer per core (same workers), >= 0.7 of the raw decode limit.
set -euo pipefail
ninja -C "$VLORCH_BUILD_DIR" vlorch bench_dataflow >/dev/null
records="${1:-2000}"; workers="${2:-2}"; batch="${3:-32}"
work="$(mktemp -d "${VLORCH_BENCH_DIR:-/tmp}/vlorch-bench-dataflow.XXXXXX")"
trap 'rm -rf "$work"' EXIT
V="$VLORCH_BUILD_DIR/coordinator/vlorch"
"$V" dev make-dataset --format llava --out "$work/cc" --lines "$records" --min-px 256 --max-px 512 --no-bad >/dev/null
"$V" shards ingest --format llava --store "$work/store" "$work/cc" >/dev/null
samples=$(( records * 3 / 4 ))
echo "dataset: $records CC595K-like records, JPEGs 256-512 px; timing $samples samples, $workers workers, batch $batch"
v=$("$VLORCH_BUILD_DIR/ops/bench/bench_dataflow" "$work/store" "$workers" "$batch" "$samples")
echo "$v" | grep -v '^summary'
p=$(OMP_NUM_THREADS=1 /usr/bin/python3 "$VLORCH_ROOT/ops/bench/dataflow/python_peer.py" "$work/cc/images" "$work/cc/chat.json" "$workers" "$batch" "$samples")
echo "$p" | grep -v '^summary'
vs=$(echo "$v" | awk -F'vlorch_sps=' '/^summary/{split($2,a," "); print a[1]}')
raw=$(echo "$v" | awk -F'raw_sps=' '/^summary/{split($2,a," "); print a[1]}')
ratio_raw=$(echo "$v" | awk -F'ratio_raw=' '/^summary/{print $2}')
py=$(echo "$p" | awk -F'python_sps=' '/^summary/{print $2}')
echo "ratio vlorch_over_raw_decode = $(awk -v r="$ratio_raw" 'BEGIN{printf "%.2f", r}') (target 0.7)"
echo "ratio vlorch_over_python_dataloader(same workers) = $(awk -v a="$vs" -v b="$py" 'BEGIN{printf "%.2f", a/b}') (target 3)"
