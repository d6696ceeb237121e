#include "worker/comm/communicator.h"

#include <ATen/core/Tensor.h>
#include <fmt/format.h>

namespace vlorch::comm {

const char* ReduceOpName(ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum: return "sum";
    case ReduceOp::kAvg: return "avg";
    case ReduceOp::kMax: return "max";
  }
  return "?";
}

const char* CommBackendName(CommBackend backend) {
  return backend == CommBackend::kMpi ? "mpi" : "nccl";
}

Status CommOptions::Validate() const {
  if (timeout.count() < 0) return InvalidArgumentError("CommOptions.timeout must be >= 0 (0 disables it)");
  if (spin_before_yield < 0) return InvalidArgumentError("CommOptions.spin_before_yield must be >= 0");
  if (ring_min_chunk_bytes < 0) return InvalidArgumentError("CommOptions.ring_min_chunk_bytes must be >= 0");
  if (ring_segment_bytes < 1024) return InvalidArgumentError("CommOptions.ring_segment_bytes must be >= 1024");
  return Status::OK();
}

Status CheckCollectiveTensor(const Communicator& c, const char* what, const at::Tensor& t,
                             bool want_cuda) {
  auto prefix = [&] { return fmt::format("{} on group '{}'", what, c.name()); };
  if (!t.defined()) return InvalidArgumentError(prefix() + ": tensor is undefined");
  switch (t.scalar_type()) {
    case at::kFloat: case at::kBFloat16: case at::kHalf: case at::kLong: break;
    default:
      return InvalidArgumentError(fmt::format("{}: dtype {} is not supported (use f32, bf16, f16 or i64)",
                                              prefix(), c10::toString(t.scalar_type())));
  }
  if (!t.is_contiguous())
    return InvalidArgumentError(prefix() + ": tensor is not contiguous (call .contiguous() first)");
  if (want_cuda && !t.is_cuda())
    return InvalidArgumentError(prefix() + ": the nccl backend needs CUDA tensors; this one is on " +
                                t.device().str());
  if (!want_cuda && !t.device().is_cpu())
    return InvalidArgumentError(prefix() + ": the mpi backend needs CPU tensors; this one is on " +
                                t.device().str());
  return Status::OK();
}

Status CheckPeer(const Communicator& c, const char* what, int peer) {
  if (peer < 0 || peer >= c.size())
    return InvalidArgumentError(fmt::format("{} on group '{}': peer {} is not a rank of the group (size {})",
                                            what, c.name(), peer, c.size()));
  if (peer == c.rank())
    return InvalidArgumentError(fmt::format("{} on group '{}': rank {} cannot send to or receive from itself",
                                            what, c.name(), peer));
  return Status::OK();
}

}  // namespace vlorch::comm
