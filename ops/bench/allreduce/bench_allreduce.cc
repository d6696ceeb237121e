// All-reduce bandwidth of vlorch's Communicator against raw MPI_Allreduce, nccl-tests style.
//
// For each size (4 KB .. 256 MB, f32, sum) both run on the same buffer, alternating in
// rounds so that drift in the machine affects both alike. A round times `iters` calls; the
// time of a round is the slowest rank's; the reported time is the median round.
//   algbw = bytes / time          busbw = algbw * 2 (n - 1) / n   (nccl-tests' definitions)
// Arguments: [max MiB=256] [rounds=7] [ring segment KiB] [min MiB] [polls before yielding]
// [smallest per-rank chunk in KiB that takes the ring] [largest all-reduce in KiB that takes
// halving-doubling in power-of-two groups of 4+; 0: the ring] [smallest group that takes the
// shared-memory segment when on one node; 0: never] [its slot KiB].
// Output: a table on rank 0, then "summary <np> <min ratio >= 1MB> <geomean ratio >= 1MB>".
#include <mpi.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include <ATen/ATen.h>

#include "worker/comm/mpi_communicator.h"
#include "worker/comm/mpi_runtime.h"

using vlorch::comm::MpiCommunicator;

namespace {

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

template <typename Fn>
double TimeRound(int iters, Fn fn) {
  MPI_Barrier(MPI_COMM_WORLD);
  double t0 = MPI_Wtime();
  for (int i = 0; i < iters; ++i) fn();
  double mine = (MPI_Wtime() - t0) / iters, slowest = 0;
  MPI_Allreduce(&mine, &slowest, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
  return slowest;
}

}  // namespace

int main(int argc, char** argv) {
  auto session = vlorch::comm::MpiSession::Init(&argc, &argv, vlorch::comm::MpiThreadLevel::kSerialized);
  if (!session.ok()) return 1;
  const int rank = (*session)->world_rank(), n = (*session)->world_size();
  int rounds = 7;
  int64_t max_bytes = int64_t{256} << 20;
  if (argc > 1) max_bytes = std::atoll(argv[1]) << 20;
  if (argc > 2) rounds = std::atoi(argv[2]);
  vlorch::comm::CommOptions opts;
  if (argc > 3) opts.ring_segment_bytes = std::atoll(argv[3]) << 10;
  int64_t min_bytes = 4096;
  if (argc > 4) min_bytes = std::atoll(argv[4]) << 20;
  if (argc > 5) opts.spin_before_yield = std::atoi(argv[5]);
  if (argc > 6) opts.ring_min_chunk_bytes = std::atoll(argv[6]) << 10;
  if (argc > 7) opts.halving_doubling_max_bytes = std::atoll(argv[7]) << 10;
  if (argc > 8) opts.shm_allreduce_min_ranks = std::atoi(argv[8]);
  if (argc > 9) opts.shm_slot_bytes = std::atoll(argv[9]) << 10;

  MPI_Comm dup;
  MPI_Comm_dup(MPI_COMM_WORLD, &dup);
  auto comm = std::move(MpiCommunicator::Create(dup, "world", opts)).value();

  if (rank == 0) {
    std::printf("# all-reduce f32 sum, np=%d, %d rounds per size (median), %s, time in us\n", n, rounds,
                comm->shared_memory()
                    ? ("shared-memory segment, " + std::to_string(opts.shm_slot_bytes >> 10) + " KiB slots").c_str()
                    : ("ring segment " + std::to_string(opts.ring_segment_bytes >> 10) + " KiB").c_str());
    std::printf("# %10s %12s | %10s %8s %8s | %10s %8s %8s | %6s %6s\n", "bytes", "count", "vlorch_us", "algbw",
                "busbw", "mpi_us", "algbw", "busbw", "ratio", "a/a");
  }
  std::vector<double> big_ratios, big_aa;
  for (int64_t bytes = min_bytes; bytes <= max_bytes; bytes *= 4) {
    const int64_t count = bytes / 4;
    // Zeros stay zeros under repeated in-place sums: no overflow, no denormals.
    at::Tensor buf = at::zeros({count}, at::kFloat);
    float* p = buf.data_ptr<float>();
    // Aim for ~0.2 s per round, at least 2 calls.
    double probe = TimeRound(1, [&] { MPI_Allreduce(MPI_IN_PLACE, p, count, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD); });
    int iters = static_cast<int>(std::clamp(0.2 / std::max(probe, 1e-6), 2.0, 2000.0));
    MPI_Bcast(&iters, 1, MPI_INT, 0, MPI_COMM_WORLD);
    // Three arms per round in rotating order: vlorch, MPI, and MPI again (the A/A control,
    // which shows how far two identical arms drift apart on this machine).
    std::vector<double> tv, tm, ta, pair_vm, pair_aa;
    bool ok = true;
    auto vl = [&] { ok = ok && comm->AllReduce(buf, vlorch::comm::ReduceOp::kSum).ok(); };
    auto mp = [&] { MPI_Allreduce(MPI_IN_PLACE, p, count, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD); };
    for (int r = 0; r < rounds; ++r) {
      double t[3];
      for (int k = 0; k < 3; ++k) {
        const int arm = (r + k) % 3;
        t[arm] = arm == 0 ? TimeRound(iters, vl) : TimeRound(iters, mp);
      }
      tv.push_back(t[0]);
      tm.push_back(t[1]);
      ta.push_back(t[2]);
      pair_vm.push_back(t[1] / t[0]);
      pair_aa.push_back(t[1] / t[2]);
    }
    if (!ok) {
      std::fprintf(stderr, "vlorch all-reduce failed\n");
      MPI_Abort(MPI_COMM_WORLD, 1);
    }
    double v = Median(tv), m = Median(tm);
    double factor = n > 1 ? 2.0 * (n - 1) / n : 1.0;
    double alg_v = bytes / v / 1e9, alg_m = bytes / m / 1e9;
    // Ratios of arms timed next to each other, median over rounds: > 1 means vlorch faster.
    double ratio = Median(pair_vm), aa = Median(pair_aa);
    if (bytes >= (1 << 20)) {
      big_ratios.push_back(ratio);
      big_aa.push_back(aa);
    }
    if (rank == 0)
      std::printf("  %10lld %12lld | %10.1f %8.2f %8.2f | %10.1f %8.2f %8.2f | %6.3f %6.3f\n", (long long)bytes,
                  (long long)count, v * 1e6, alg_v, alg_v * factor, m * 1e6, alg_m, alg_m * factor, ratio, aa);
  }
  if (rank == 0) {
    auto geomean = [](const std::vector<double>& v) {
      double lg = 0;
      for (double r : v) lg += std::log(r);
      return std::exp(lg / std::max<size_t>(1, v.size()));
    };
    auto lowest = [](const std::vector<double>& v) { return *std::min_element(v.begin(), v.end()); };
    std::printf("summary np=%d min_ratio_ge_1MB=%.3f geomean_ratio_ge_1MB=%.3f aa_min_ge_1MB=%.3f aa_geomean_ge_1MB=%.3f\n",
                n, lowest(big_ratios), geomean(big_ratios), lowest(big_aa), geomean(big_aa));
  }
  comm.reset();
  return 0;
}
