#include "worker/comm/communicator.h"

#include <ATen/ATen.h>
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
  if (halving_doubling_max_bytes < 0)
    return InvalidArgumentError("CommOptions.halving_doubling_max_bytes must be >= 0 (0: always the ring)");
  if (shm_allreduce_min_ranks < 0)
    return InvalidArgumentError("CommOptions.shm_allreduce_min_ranks must be >= 0 (0: never)");
  if (shm_slot_bytes < 4096) return InvalidArgumentError("CommOptions.shm_slot_bytes must be >= 4096");
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

Status CheckAllGather(const Communicator& c, const at::Tensor& in, const at::Tensor& out, bool want_cuda) {
  RETURN_IF_ERROR(CheckCollectiveTensor(c, "allgather", in, want_cuda));
  RETURN_IF_ERROR(CheckCollectiveTensor(c, "allgather", out, want_cuda));
  if (in.scalar_type() != out.scalar_type() || out.numel() != in.numel() * c.size())
    return InvalidArgumentError(fmt::format(
        "allgather on group '{}': output must have the input's dtype and {} x {} = {} elements "
        "(got {} {} elements)",
        c.name(), c.size(), in.numel(), c.size() * in.numel(), c10::toString(out.scalar_type()), out.numel()));
  return Status::OK();
}

Status CheckReduceScatter(const Communicator& c, const at::Tensor& in, const at::Tensor& out,
                          bool want_cuda) {
  RETURN_IF_ERROR(CheckCollectiveTensor(c, "reducescatter", in, want_cuda));
  RETURN_IF_ERROR(CheckCollectiveTensor(c, "reducescatter", out, want_cuda));
  if (in.scalar_type() != out.scalar_type() || in.numel() != out.numel() * c.size())
    return InvalidArgumentError(fmt::format(
        "reducescatter on group '{}': input must have the output's dtype and {} x {} = {} "
        "elements (got {})",
        c.name(), c.size(), out.numel(), c.size() * out.numel(), in.numel()));
  if (out.numel() > 0 && in.is_same(out))
    return InvalidArgumentError(fmt::format("reducescatter on group '{}': input and output must not alias", c.name()));
  return Status::OK();
}

StatusOr<int64_t> CheckAllToAll(const Communicator& c, const at::Tensor& in,
                                const std::vector<int64_t>& send_rows, const at::Tensor& out,
                                const std::vector<int64_t>& recv_rows, bool want_cuda) {
  RETURN_IF_ERROR(CheckCollectiveTensor(c, "alltoall", in, want_cuda));
  RETURN_IF_ERROR(CheckCollectiveTensor(c, "alltoall", out, want_cuda));
  auto bad = [&](const std::string& m) {
    return InvalidArgumentError(fmt::format("alltoall on group '{}': {}", c.name(), m));
  };
  if (in.scalar_type() != out.scalar_type()) return bad("input and output dtypes differ");
  if (in.dim() == 0 || out.dim() == 0) return bad("tensors need at least one dimension (rows)");
  if (in.sizes().slice(1) != out.sizes().slice(1)) return bad("input and output trailing shapes differ");
  const size_t n = static_cast<size_t>(c.size());
  if (send_rows.size() != n || recv_rows.size() != n)
    return bad(fmt::format("send_rows and recv_rows need {} entries (one per rank)", n));
  int64_t s_total = 0, r_total = 0;
  for (size_t p = 0; p < n; ++p) {
    if (send_rows[p] < 0 || recv_rows[p] < 0) return bad("row counts must be >= 0");
    s_total += send_rows[p];
    r_total += recv_rows[p];
  }
  if (s_total != in.size(0))
    return bad(fmt::format("send_rows sum to {} but the input has {} rows", s_total, in.size(0)));
  if (r_total != out.size(0))
    return bad(fmt::format("recv_rows sum to {} but the output has {} rows", r_total, out.size(0)));
  int64_t row = 1;
  for (int64_t d : in.sizes().slice(1)) row *= d;
  return row;
}

Status CheckBroadcastRoot(const Communicator& c, int root) {
  if (root < 0 || root >= c.size())
    return InvalidArgumentError(fmt::format("broadcast on group '{}': root {} is not a rank (size {})",
                                            c.name(), root, c.size()));
  return Status::OK();
}

void DivideForAvg(at::Tensor& t, int group_size) {
  if (group_size == 1 || t.numel() == 0) return;
  if (t.scalar_type() == at::kLong) {
    t.div_(group_size, "trunc");
  } else {
    t.div_(group_size);
  }
}

Status CallTimedOut(const std::string& call_name, std::chrono::milliseconds timeout) {
  return TimedOutError(fmt::format(
      "{} did not complete within {:.1f} s: a peer rank has not entered it (dead, hung, or running a "
      "different collective). This communicator is now unusable; restart the job from its last "
      "checkpoint",
      call_name, timeout.count() / 1000.0));
}

}  // namespace vlorch::comm
