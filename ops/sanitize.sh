#!/usr/bin/env bash
# The torch-free unit tests (common, jobs, sharding, coordinator) built with AddressSanitizer
# and UndefinedBehaviorSanitizer into build-asan, then run. Any report fails the run. The
# LibTorch modules are left out: Debian's LibTorch is not built with ASan, and its own
# allocations then read as leaks. CI runs the fuzz targets (also ASan + UBSan, ops/fuzz.sh);
# run this by hand after changing a parser or the coordinator:  bash ops/sanitize.sh
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
build="${VLORCH_ASAN_BUILD_DIR:-$root/build-asan}"
flags="-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer"
start=$(date +%s)
mkdir -p "$build"
cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DVLORCH_BUILD_BENCH=OFF \
  -DCMAKE_CXX_FLAGS="$flags" -DCMAKE_C_FLAGS="$flags" -DCMAKE_EXE_LINKER_FLAGS="-fsanitize=address,undefined" \
  > "$build/vlorch-configure.log" 2>&1 || { cat "$build/vlorch-configure.log"; exit 1; }
tests=(common_test jobs_test sharding_test coordinator_test)
cmake --build "$build" -j "$(nproc)" --target "${tests[@]}" > "$build/vlorch-build.log" 2>&1 || { tail -50 "$build/vlorch-build.log"; exit 1; }
echo "sanitize: built in $(( $(date +%s) - start )) s"
export ASAN_OPTIONS="detect_leaks=1:abort_on_error=1"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
failed=0
for t in "${tests[@]}"; do
  bin=$(find "$build/tests" -name "$t" -type f -perm -u+x | head -1)
  if "$bin" > "$build/$t.log" 2>&1; then
    echo "sanitize: $t: $(grep -Eo '^\[  PASSED  \] [0-9]+' "$build/$t.log" | grep -Eo '[0-9]+$') tests passed, no sanitizer report"
  else
    failed=$((failed + 1))
    echo "sanitize: $t FAILED:"
    grep -E "ERROR: |SUMMARY|runtime error|FAILED" "$build/$t.log" | head -20
  fi
done
echo "sanitize: ${#tests[@]} binaries, $failed failed, in $(( $(date +%s) - start )) s"
[ "$failed" -eq 0 ]
