# bench: vlorch-worker step time vs PyTorch DDP (gloo) on the same VL model, np=2; grad-sync overlap; async checkpoint stall
# Usage: ops/bench/run train [STEPS=40] [ROUNDS=3]
# Both sides: same model (ops/bench/train/bench-vl.yaml, ~4.6 M parameters), 8 samples per
# rank per step, sequence 64, 1 intra-op thread per rank, np = 2 on this machine's 2 cores.
# vlorch's step includes its data pipeline (real JPEGs from a shard store); the Python step
# has its batches prebuilt in memory. Neither side checkpoints during the timed rounds (the
# Python script has no checkpointing; vlorch saves once, at the end).
# vlorch and Python alternate for ROUNDS rounds (this VM's speed drifts by tens of percent
# within minutes); each round's ratio is vlorch's mean step over Python's, and the summary is
# the median round. After the rounds, once each: the reduce-after-backward arm, and the
# checkpoint arm (async save every 5 steps): its stall per save, its mean step, and how much
# slower the step after a save runs than the others (the writer thread's CPU on these cores).
# Targets: vlorch step <= 0.8x Python's; async checkpoint stall <= 5% of a step.
set -euo pipefail
ninja -C "$VLORCH_BUILD_DIR" vlorch vlorch-worker >/dev/null
steps="${1:-40}"; rounds="${2:-3}"
work="$(mktemp -d "${VLORCH_BENCH_DIR:-/tmp}/vlorch-bench-train.XXXXXX")"
trap 'rm -rf "$work"' EXIT
V="$VLORCH_BUILD_DIR/coordinator/vlorch"
W="$VLORCH_BUILD_DIR/worker/vlorch-worker"
"$V" dev make-dataset --format img2dataset --out "$work/src" --shards 4 --per-shard 200 --no-bad --min-px 64 --max-px 160 >/dev/null
"$V" shards ingest --format img2dataset --store "$work/store" "$work"/src/*.tar >/dev/null
sed "s/steps: 40/steps: $steps/" "$VLORCH_ROOT/ops/bench/train/bench-vl.yaml" > "$work/ckpt.yaml"
sed "s/every_steps: 5/every_steps: 0/" "$work/ckpt.yaml" > "$work/job.yaml"
sed -i "s/log_every: 10/log_every: 1/" "$work/ckpt.yaml"
summary() { /usr/bin/python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(d[sys.argv[2]])" "$1" "$2"; }

/usr/bin/python3 - "$work/job.yaml" > "$work/cfg.json" <<'PY'
import json, sys, re
# The YAML's flow mappings are simple enough to read without PyYAML.
txt = open(sys.argv[1]).read()
def block(name):
    m = re.search(r"^\s+%s: \{([^}]*)\}" % name, txt, re.M)
    return {k.strip(): (int(v) if v.strip().isdigit() else v.strip()) for k, v in (kv.split(":") for kv in m.group(1).split(","))}
print(json.dumps({"vision": block("vision"), "qformer": block("qformer"), "llm": block("llm")}))
PY

ratios=()
for r in $(seq 1 "$rounds"); do
  rm -rf "$work/overlap"
  "$VLORCH_ROOT/ops/mpirun.sh" -np 2 "$W" --job "$work/job.yaml" --run-dir "$work/overlap" > "$work/log" 2>&1 || { tail -20 "$work/log"; exit 1; }
  s="$work/overlap/stages/train/summary.json"
  step=$(summary "$s" mean_step_seconds); exposed=$(summary "$s" mean_exposed_comm_seconds)
  comm=$(summary "$s" mean_comm_seconds)
  gbytes=$(summary "$s" grad_bytes_per_step); buckets=$(summary "$s" grad_buckets)
  p=$(OMP_NUM_THREADS=1 /usr/bin/python3 "$VLORCH_ROOT/ops/bench/train/python_ddp.py" "$work/cfg.json" 2 8 64 "$steps" 1)
  py=$(echo "$p" | awk -F'python_step_ms=' '/^summary/{print $2}')
  ratio=$(awk -v s="$step" -v py="$py" 'BEGIN{printf "%.3f", s*1e3/py}')
  ratios+=("$ratio")
  awk -v r="$r" -v s="$step" -v e="$exposed" -v c="$comm" -v b="$gbytes" -v n="$buckets" -v py="$py" -v q="$ratio" 'BEGIN{
    printf "round %d: vlorch %.2f ms/step (all-reduce %.2f ms in %d bucket(s) of %.1f MB, %.2f GB/s; exposed %.2f ms = %.1f%%) | python DDP %.2f ms/step | ratio %.3f\n",
      r, s*1e3, c*1e3, n, b/1e6, (c>0? b/c/1e9:0), e*1e3, 100*e/s, py, q }'
done

"$VLORCH_ROOT/ops/mpirun.sh" -np 2 "$W" --job "$work/job.yaml" --run-dir "$work/after" --grad-reduce-after-backward > "$work/log" 2>&1 || { tail -20 "$work/log"; exit 1; }
s2="$work/after/stages/train/summary.json"
step2=$(summary "$s2" mean_step_seconds); exposed2=$(summary "$s2" mean_exposed_comm_seconds)
"$VLORCH_ROOT/ops/mpirun.sh" -np 2 "$W" --job "$work/ckpt.yaml" --run-dir "$work/ckpt" > "$work/log" 2>&1 || { tail -20 "$work/log"; exit 1; }
s3="$work/ckpt/stages/train/summary.json"
step3=$(summary "$s3" mean_step_seconds); stall=$(summary "$s3" mean_checkpoint_stall_seconds)
# Steps right after a save (the writer runs during them) against the others, from the
# per-step log (step_seconds there excludes the save call itself).
after_save=$(/usr/bin/python3 - "$work/ckpt/stages/train/metrics.jsonl" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])][2:]
a = [r["step_seconds"] for r in rows if r["step"] % 5 == 1]
o = [r["step_seconds"] for r in rows if r["step"] % 5 != 1]
print("%.2f %.2f" % (1e3 * sum(a) / len(a), 1e3 * sum(o) / len(o)))
PY
)
median=$(printf "%s\n" "${ratios[@]}" | sort -g | awk '{a[NR]=$1} END{print (NR%2? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}')
awk -v s2="$step2" -v e2="$exposed2" -v st="$stall" -v s3="$step3" -v as="$after_save" -v m="$median" -v all="${ratios[*]}" 'BEGIN{
  split(as, x, " ");
  printf "vlorch np=2, reduce after backward (once, after the rounds): %.2f ms/step; exposed %.2f ms = %.1f%% of the step\n", s2*1e3, e2*1e3, 100*e2/s2;
  printf "vlorch np=2, async checkpoint every 5 steps (once): %.2f ms/step; the step stalls %.2f ms per save = %.1f%% of a step (target <= 5%%); steps right after a save %.2f ms vs %.2f ms for the others\n", s3*1e3, st*1e3, 100*st/s3, x[1], x[2];
  printf "rounds: %s\n", all;
  printf "ratio vlorch_step_over_python_ddp(median of rounds) = %.2f (target 0.8)\n", m }'
