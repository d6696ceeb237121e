#!/usr/bin/env bash
# Kill campaign: N trials of the tiny VPGTrans recipe (jobs/recipes/vpgtrans-tiny.yaml: six
# stages, one of them the transfer_vpg transform) supervised by a real coordinator daemon,
# each with one or more random kill -9 at a random time, then the final weights compared
# bitwise with an uninterrupted run.
#
#   bash ops/chaos.sh [--trials 100] [--kills 2] [--seed S]
#
# Kinds of kill, drawn at random per kill:
#   rank         kill -9 of a random rank's pid (from `vlorch status --json`), any stage
#   coordinator  kill -9 of the coordinator daemon, restarted on the same state; it adopts
#                the running mpirun
#   checkpoint   rank 0 (the writer) killed halfway through writing a checkpoint (VLORCH_FAULT ...
#                during=checkpoint-write, first launch only)
#   transform    rank 0 killed inside the transform's commit (VLORCH_FAULT ... during=commit)
# Prints one line per trial and a table; exits 1 on any mismatch or unfinished trial.
# Trial 0 (not counted in N) runs without kills and times the job for the others.
# CI runs `--trials 2` (ops/test.sh); the closing note of the security issue reports 100.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
build="${VLORCH_BUILD_DIR:-$root/build}"
trials=100
kills=2
seed=$RANDOM
while [ $# -gt 0 ]; do
  case "$1" in
    --trials) trials="$2"; shift 2 ;;
    --kills) kills="$2"; shift 2 ;;
    --seed) seed="$2"; shift 2 ;;
    *) echo "chaos: unknown argument $1" >&2; exit 2 ;;
  esac
done
RANDOM=$seed
vlorch="$build/coordinator/vlorch"
worker="$build/worker/vlorch-worker"
work="${VLORCH_CHAOS_DIR:-$(mktemp -d /tmp/vlorch-chaos.XXXXXX)}"
mkdir -p "$work"
export VLORCH_HOME="$work/home"  # the coordinator's token and keys go here, not to ~/.vlorch
. "$root/ops/env.sh"
coord_pid=""
cleanup() {
  [ -n "$coord_pid" ] && kill -9 "$coord_pid" 2>/dev/null || true
  pkill -9 -f "vlorch-worker --job $work/" 2>/dev/null || true
}
trap cleanup EXIT

# Data and the recipe, once.
if [ ! -d "$work/data/captions" ]; then
  "$vlorch" dev make-dataset --format img2dataset --out "$work/data/src" --shards 2 --per-shard 32 --no-bad \
    --grounded --min-px 32 --max-px 48 > /dev/null
  "$vlorch" dev make-dataset --format jsonl --out "$work/data/text.jsonl" --lines 256 --no-bad --grounded > /dev/null
  "$vlorch" shards ingest --format img2dataset --store "$work/data/captions" --shard-size 64 \
    "$work/data/src/00000.tar" "$work/data/src/00001.tar" > /dev/null
  "$vlorch" shards ingest --format jsonl --store "$work/data/text" --shard-size 64 "$work/data/text.jsonl" > /dev/null
fi
cp "$root/jobs/recipes/vpgtrans-tiny.yaml" "$work/job.yaml"
last_stage=$(grep -E '^  - name: ' "$work/job.yaml" | tail -1 | awk '{print $3}')

# The final weights of a run directory: the last stage's newest checkpoint, hashed.
final_hash() {
  local ckpt
  ckpt=$(ls -d "$1/stages/$last_stage/checkpoints"/step-* 2>/dev/null | sort | tail -1)
  [ -n "$ckpt" ] && sha256sum "$ckpt"/*.safetensors | awk '{print $1}' | sha256sum | awk '{print $1}'
}

# The uninterrupted reference, straight under mpirun.
if [ ! -f "$work/reference.hash" ]; then
  start=$(date +%s)
  VLORCH_OVERSUBSCRIBE=1 "$root/ops/mpirun.sh" -np 2 "$worker" --job "$work/job.yaml" --run-dir "$work/reference" \
    > "$work/reference.log" 2>&1 || { tail -30 "$work/reference.log"; exit 1; }
  final_hash "$work/reference" > "$work/reference.hash"
  echo "chaos: reference run in $(( $(date +%s) - start )) s, final weights $(cut -c1-16 "$work/reference.hash")"
fi
reference=$(cat "$work/reference.hash")

http=$((20000 + RANDOM % 20000)); zmq=$((http + 1))
api() { "$vlorch" "$@" --coordinator "127.0.0.1:$http"; }
start_coordinator() {
  "$vlorch" coordinator start --foreground --state-dir "$1" --coordinator "127.0.0.1:$http" --zmq "tcp://127.0.0.1:$zmq" \
    --worker "$worker" --backoff 0.2 --heartbeat-timeout 20 --default-restart-budget 50 >> "$1.log" 2>&1 &
  coord_pid=$!
  for _ in $(seq 100); do api coordinator status > /dev/null 2>&1 && return 0; sleep 0.1; done
  echo "chaos: the coordinator did not come up:"; tail -20 "$1.log"; return 1
}
job_field() {  # job_field ID python-expression-on-j
  api status "$1" --json 2>/dev/null | /usr/bin/python3 -c "import json,sys; j=json.load(sys.stdin); print($2)" 2>/dev/null
}

# The pid of rank $2 of the job's current launch, once both its ranks registered (between
# two stages' launches there are none for up to a second or so: waits up to 3 s), and only
# while it is still a vlorch-worker process; empty otherwise.
rank_pid() {
  local pid
  for _ in $(seq 30); do
    pid=$(job_field "$1" "(lambda rs: rs[$2]['pid'] if len(rs) == 2 else '')(sorted([r for r in j.get('ranks', []) \
if r.get('incarnation') == j.get('incarnation')], key=lambda r: r['rank']))")
    if [ -n "$pid" ] && grep -q vlorch-worker "/proc/$pid/cmdline" 2>/dev/null; then echo "$pid"; return; fi
    sleep 0.1
  done
}

declare -A by_kind=([rank]=0 [coordinator]=0 [checkpoint]=0 [transform]=0)
mismatches=0; unfinished=0; total_restarts=0
kinds=(rank coordinator checkpoint transform)
campaign_start=$(date +%s)
now_ms() { date +%s%3N; }
# Trial 0 is a calibration run under the coordinator without kills: its final weights must
# match too, and its length bounds the kill times of the others, so kills land while the
# job runs (any stage, any moment) rather than after it ended.
job_ms=0
for trial in $(seq 0 "$trials"); do
  t_start=$(date +%s)
  dir="$work/trial-$trial"
  rm -rf "$dir"; mkdir -p "$dir"
  sed "s|^run_dir: run|run_dir: $dir/run|" "$work/job.yaml" > "$dir/job.yaml"
  sed -i "s|data/|$work/data/|g" "$dir/job.yaml"
  # Fault points go in the submission's env, so they fire in the first launch only.
  plan=(); env_fault=""
  if [ "$trial" -gt 0 ]; then
    for _ in $(seq "$kills"); do plan+=("${kinds[RANDOM % 4]}"); done
  fi
  for k in "${plan[@]}"; do
    case "$k" in
      checkpoint) [ -z "$env_fault" ] && env_fault="kill:rank=0:step=4:during=checkpoint-write:incarnation=1" ;;
      # The transform is the 4th stage: the 4th launch when nothing restarted before it.
      transform) [ -z "$env_fault" ] && env_fault="kill:rank=0:stage=transfer:during=commit:incarnation=4" ;;
    esac
  done
  # Kill times: uniform over the calibration run's length, in milliseconds, in order.
  times=()
  for k in "${plan[@]}"; do times+=($(( (RANDOM * 32768 + RANDOM) % (job_ms > 200 ? job_ms : 200) ))); done
  mapfile -t times < <(printf '%s\n' "${times[@]}" | sort -n)
  start_coordinator "$dir/state"
  id=$(VLORCH_FAULT="$env_fault" VLORCH_OVERSUBSCRIBE=1 api submit "$dir/job.yaml" --np 2 | awk '{print $2}')
  submitted_ms=$(now_ms)
  done_kinds=()
  for i in "${!plan[@]}"; do
    k=${plan[$i]}
    wait_ms=$(( submitted_ms + ${times[$i]:-0} - $(now_ms) ))
    [ "$wait_ms" -gt 0 ] && sleep "$(printf '%d.%03d' $((wait_ms / 1000)) $((wait_ms % 1000)))"
    case "$k" in
      rank)
        pid=$(rank_pid "$id" $((RANDOM % 2)))
        if [ -n "$pid" ] && kill -9 "$pid" 2>/dev/null; then done_kinds+=(rank); fi ;;
      coordinator)
        kill -9 "$coord_pid" 2>/dev/null || true; wait "$coord_pid" 2>/dev/null || true
        start_coordinator "$dir/state"; done_kinds+=(coordinator) ;;
      checkpoint|transform) ;;  # fire by themselves; counted below when they did
    esac
  done
  state=""
  for _ in $(seq 600); do
    state=$(job_field "$id" "j['state']" || true)
    case "$state" in succeeded|failed|cancelled) break ;; esac
    sleep 0.5
  done
  ended_ms=$(now_ms)
  restarts=$(job_field "$id" "j['restarts']" || echo "?")
  # A fault point counts when the ranks died where it sits: a restart caused in that stage.
  events=$(api events "$id" 2>/dev/null || true)
  case "$env_fault" in
    *during=checkpoint-write*) grep -q "restarting.*stage 'source_lm'" <<< "$events" && done_kinds+=(checkpoint) ;;
    *during=commit*) grep -q "restarting.*stage 'transfer'" <<< "$events" && done_kinds+=(transform) ;;
  esac
  kill "$coord_pid" 2>/dev/null || true; wait "$coord_pid" 2>/dev/null || true; coord_pid=""
  got=$(final_hash "$dir/run" || true)
  verdict="identical"
  if [ "$state" != "succeeded" ]; then verdict="UNFINISHED ($state)"; unfinished=$((unfinished + 1));
  elif [ "$got" != "$reference" ]; then verdict="MISMATCH"; mismatches=$((mismatches + 1)); fi
  for k in "${done_kinds[@]}"; do by_kind[$k]=$(( ${by_kind[$k]} + 1 )); done
  [ "$restarts" != "?" ] && total_restarts=$((total_restarts + restarts))
  printf 'chaos: trial %3d: planned [%s] at [%s] ms, done [%s], %s restarts, %s s: %s\n' "$trial" "${plan[*]}" \
    "${times[*]}" "${done_kinds[*]}" "$restarts" "$(( $(date +%s) - t_start ))" "$verdict"
  [ "$verdict" = "identical" ] && rm -rf "$dir"
  if [ "$trial" -eq 0 ]; then
    job_ms=$(( ended_ms - submitted_ms ))
    echo "chaos: calibration run (no kills) took $job_ms ms; kills fall within that after each submission"
  fi
done
echo
echo "chaos: seed $seed, $(( $(date +%s) - campaign_start )) s"
printf '%-8s %-6s %-12s %-10s %-10s %-9s %-10s %s\n' trials rank coordinator checkpoint transform restarts unfinished mismatches
printf '%-8s %-6s %-12s %-10s %-10s %-9s %-10s %s\n' "$trials" "${by_kind[rank]}" "${by_kind[coordinator]}" \
  "${by_kind[checkpoint]}" "${by_kind[transform]}" "$total_restarts" "$unfinished" "$mismatches"
[ "$mismatches" -eq 0 ] && [ "$unfinished" -eq 0 ] || exit 1
# A folder made here is removed when every trial passed (a failed trial's stays for a look).
[ -z "${VLORCH_CHAOS_DIR:-}" ] && rm -rf "$work"
exit 0
