# Environment for running vlorch under Open MPI, here and on clusters. Source it:
#   . ops/env.sh
# then launch with `vlorch_mpirun -np 4 ...` (or use ops/mpirun.sh). Why each setting exists
# is in docs/running-mpi.md.

# glibc returns large buffers to the OS with munmap and maps them again on the next call;
# for MPI's multi-MB reduction buffers that is a page-fault storm on every collective
# (measured here: all-reduce ~8x slower). Keep them mapped. Users may override.
export MALLOC_MMAP_THRESHOLD_="${MALLOC_MMAP_THRESHOLD_:-1073741824}"
export MALLOC_TRIM_THRESHOLD_="${MALLOC_TRIM_THRESHOLD_:-4294967296}"

# Open MPI refuses to run as root unless told twice; containers and CI run as root.
if [ "$(id -u)" = "0" ]; then
  export OMPI_ALLOW_RUN_AS_ROOT=1
  export OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
fi

# Forward the settings to ranks on other nodes (local ranks inherit them anyway).
VLORCH_MPIRUN_FLAGS=(-x MALLOC_MMAP_THRESHOLD_ -x MALLOC_TRIM_THRESHOLD_)
for v in VLORCH_LOG_LEVEL VLORCH_FAULT OMP_NUM_THREADS; do
  if [ -n "${!v:-}" ]; then VLORCH_MPIRUN_FLAGS+=(-x "$v"); fi
done

# More ranks than cores only when asked (tests on small machines): a real job that
# oversubscribes by accident runs many times slower, and Open MPI's refusal is the better
# outcome. Oversubscribed ranks must not be pinned to the same cores.
if [ "${VLORCH_OVERSUBSCRIBE:-0}" = "1" ]; then
  VLORCH_MPIRUN_FLAGS+=(--oversubscribe --bind-to none)
fi

vlorch_mpirun() { mpirun "${VLORCH_MPIRUN_FLAGS[@]}" "$@"; }
