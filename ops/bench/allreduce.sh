# bench: all-reduce bus bandwidth, vlorch Communicator vs raw MPI_Allreduce, np=2 and 4
# Usage: ops/bench/run allreduce [MAX_MIB=256] [ROUNDS=7]
set -euo pipefail
ninja -C "$VLORCH_BUILD_DIR" bench_allreduce >/dev/null
. "$VLORCH_ROOT/ops/env.sh"
max_mib="${1:-256}"; rounds="${2:-7}"
out="$(mktemp)"
for np in 2 4; do
  flags=()
  # This benchmark may run on machines with fewer cores than ranks (np=4 on 2 cores).
  if [ "$np" -gt "$(nproc)" ]; then flags=(--oversubscribe --bind-to none); fi
  mpirun "${VLORCH_MPIRUN_FLAGS[@]}" "${flags[@]}" -np "$np" "$VLORCH_BUILD_DIR/ops/bench/bench_allreduce" \
    "$max_mib" "$rounds" | tee -a "$out"
done
min="$(awk -F'min_ratio_ge_1MB=' '/^summary/{split($2,a," "); print a[1]}' "$out" | sort -g | head -1)"
geo="$(awk -F'geomean_ratio_ge_1MB=' '/^summary/{print $2}' "$out" | awk '{s+=log($1); n++} END{printf "%.3f", exp(s/n)}')"
aa_min="$(awk -F'aa_min_ge_1MB=' '/^summary/{split($2,a," "); print a[1]}' "$out" | sort -g | head -1)"
aa_geo="$(awk -F'aa_geomean_ge_1MB=' '/^summary/{print $2}' "$out" | awk '{s+=log($1); n++} END{printf "%.3f", exp(s/n)}')"
rm -f "$out"
echo "worst single size >= 1 MB over np=2,4: $min (A/A control, MPI against itself: worst $aa_min, geomean $aa_geo)"
echo "ratio allreduce_busbw_vlorch_over_mpi(>=1MB, np=2,4, geomean) = $geo (target 0.95)"
