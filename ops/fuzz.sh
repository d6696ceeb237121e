#!/usr/bin/env bash
# Builds the libFuzzer targets (tests/fuzz; clang, ASan + UBSan) and runs each for a bounded
# time on a copy of its seed corpus. CI runs the short version from ops/test.sh; run it longer
# by hand, e.g. `bash ops/fuzz.sh --seconds 600` or `bash ops/fuzz.sh --seconds 3600 job_spec`.
#
# A crash, leak, sanitizer report, timeout (> 10 s on one input) or out-of-memory (> 2 GiB)
# fails the run; the input is kept in $VLORCH_FUZZ_DIR/artifacts/<target>/ to be added to
# tests/fuzz/corpus/<target>/ as a regression seed once fixed. Prints one line per target and
# a summary line.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
seconds=20
targets=()
while [ $# -gt 0 ]; do
  case "$1" in
    --seconds) seconds="$2"; shift 2 ;;
    *) targets+=("$1"); shift ;;
  esac
done
build="${VLORCH_FUZZ_BUILD_DIR:-$root/build-fuzz}"
work="${VLORCH_FUZZ_DIR:-$build/runs}"
if ! command -v clang++-14 >/dev/null; then
  echo "fuzz: clang++-14 is missing: run ops/install-deps.sh (clang-14, libclang-rt-14-dev)" >&2
  exit 1
fi
start=$(date +%s)
mkdir -p "$build"
CC=clang-14 CXX=clang++-14 cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DVLORCH_FUZZ=ON \
  -DVLORCH_WITH_CUDA=OFF > "$build/vlorch-configure.log" 2>&1 || { cat "$build/vlorch-configure.log"; exit 1; }
cmake --build "$build" -j "$(nproc)" > "$build/vlorch-build.log" 2>&1 || { tail -50 "$build/vlorch-build.log"; exit 1; }
echo "fuzz: built in $(( $(date +%s) - start )) s"
if [ ${#targets[@]} -eq 0 ]; then
  for d in "$root"/tests/fuzz/corpus/*/; do targets+=("$(basename "$d")"); done
fi
export ASAN_OPTIONS="detect_leaks=1:abort_on_error=1:symbolize=1"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
failed=0
for t in "${targets[@]}"; do
  corpus="$work/corpus/$t"
  artifacts="$work/artifacts/$t"
  mkdir -p "$corpus" "$artifacts"
  cp -n "$root/tests/fuzz/corpus/$t/"* "$corpus/" 2>/dev/null || true
  log="$work/$t.log"
  if (cd "$work" && "$build/tests/fuzz/fuzz_$t" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
        -max_len=65536 -print_final_stats=1 -artifact_prefix="$artifacts/" "$corpus" > "$log" 2>&1); then
    runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo "?")
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | grep -o '[0-9]*' || echo "?")
    echo "fuzz: $t: ${runs} inputs in ${seconds} s, coverage ${cov}, no crash"
  else
    failed=$((failed + 1))
    echo "fuzz: $t: FAILED (input kept in $artifacts/):"
    grep -E "ERROR|SUMMARY|runtime error|==[0-9]+==" "$log" | head -20 || tail -30 "$log"
  fi
done
echo "fuzz: ${#targets[@]} targets, $failed with crashes, in $(( $(date +%s) - start )) s"
[ "$failed" -eq 0 ]
