// A multi-rank self-check of the communication layer: every group of the mesh runs each
// collective on data whose correct result every rank can compute, and the results are
// compared element by element. `vlorch-worker check-comm` runs it; it is how a user checks a
// new cluster (MPI, NCCL, interconnect) before training on it.
#pragma once

#include <string>
#include <vector>

#include "common/status.h"
#include "worker/comm/device_mesh.h"

namespace vlorch {

struct CommCheckOptions {
  // Elements per rank in the all-reduce timing run. Default 4 Mi f32 (16 MiB).
  int64_t allreduce_elements = int64_t{4} << 20;
  // Timed all-reduce iterations on the world group. Default 5.
  int iterations = 5;
};

struct CommCheckResult {
  std::vector<std::string> checked;  // "allreduce(sum,f32) on dp", ...
  double allreduce_seconds = 0;      // mean over iterations, world group
  double allreduce_busbw_gbps = 0;   // bus bandwidth (nccl-tests' definition)
};

// Collective over the mesh. Returns the first mismatch as Internal naming the group, the
// call, the element and both values; communication failures pass through.
StatusOr<CommCheckResult> RunCommCheck(const comm::DeviceMesh& mesh, const CommCheckOptions& options);

}  // namespace vlorch
