#include "worker/comm_check.h"

#include <chrono>

#include <ATen/ATen.h>
#include <fmt/format.h>

namespace vlorch {
namespace {

at::TensorOptions Opts(const comm::Communicator& c, at::ScalarType t) {
  return at::TensorOptions().dtype(t).device(c.backend() == comm::CommBackend::kNccl ? at::kCUDA : at::kCPU);
}

Status Compare(const comm::Communicator& c, const std::string& what, const at::Tensor& got,
               const at::Tensor& want) {
  at::Tensor g = got.to(at::kCPU).to(at::kDouble), w = want.to(at::kDouble);
  if (g.sizes() != w.sizes())
    return InternalError(fmt::format("{} on group '{}': result has {} elements, expected {}", what,
                                     c.name(), g.numel(), w.numel()));
  at::Tensor bad = (g != w).nonzero();
  if (bad.size(0) == 0) return Status::OK();
  int64_t i = bad[0][0].item<int64_t>();
  return InternalError(fmt::format("{} on group '{}' (rank {}): element {} is {} but should be {}", what,
                                   c.name(), c.rank(), i, g[i].item<double>(), w[i].item<double>()));
}

// Values chosen so every result is exact in bf16 (small integers).
Status CheckGroup(comm::Communicator& c, int world_rank, const std::vector<int>& members,
                  std::vector<std::string>* checked) {
  const int n = c.size();
  for (at::ScalarType t : {at::kFloat, at::kBFloat16}) {
    const char* tn = t == at::kFloat ? "f32" : "bf16";
    // allreduce(sum): every rank contributes (world rank + 1) + i % 3.
    at::Tensor x = (at::arange(1000, at::kDouble).fmod(3) + (world_rank + 1)).to(t);
    at::Tensor x_dev = x.to(Opts(c, t).device());
    RETURN_IF_ERROR(c.AllReduce(x_dev, comm::ReduceOp::kSum));
    double members_sum = 0;
    for (int m : members) members_sum += m + 1;
    at::Tensor want = at::arange(1000, at::kDouble).fmod(3) * n + members_sum;
    RETURN_IF_ERROR(Compare(c, fmt::format("allreduce(sum,{})", tn), x_dev, want));
    checked->push_back(fmt::format("allreduce(sum,{}) on {}", tn, c.name()));
  }
  // allgather: rank's block carries its world rank, so the result lists the members in order.
  at::Tensor mine = at::full({3}, world_rank, Opts(c, at::kLong));
  at::Tensor all = at::empty({3 * n}, Opts(c, at::kLong));
  RETURN_IF_ERROR(c.AllGather(mine, all));
  at::Tensor want = at::tensor(std::vector<int64_t>(members.begin(), members.end()), at::kLong)
                        .repeat_interleave(3);
  RETURN_IF_ERROR(Compare(c, "allgather(i64)", all, want));
  checked->push_back(fmt::format("allgather(i64) on {}", c.name()));
  // alltoall: rank q sends (q + p) % 3 rows to p, each row = [q, p].
  std::vector<int64_t> send(n), recv(n);
  for (int p = 0; p < n; ++p) {
    send[p] = (c.rank() + p) % 3;
    recv[p] = (p + c.rank()) % 3;
  }
  std::vector<int64_t> in_rows, want_rows;
  for (int p = 0; p < n; ++p)
    for (int64_t k = 0; k < send[p]; ++k) in_rows.insert(in_rows.end(), {c.rank(), p});
  for (int p = 0; p < n; ++p)
    for (int64_t k = 0; k < recv[p]; ++k) want_rows.insert(want_rows.end(), {p, c.rank()});
  at::Tensor in = at::tensor(in_rows, at::kFloat).reshape({-1, 2}).to(Opts(c, at::kFloat).device());
  at::Tensor out = at::empty({static_cast<int64_t>(want_rows.size() / 2), 2}, Opts(c, at::kFloat));
  RETURN_IF_ERROR(c.AllToAll(in, send, out, recv));
  RETURN_IF_ERROR(Compare(c, "alltoall(f32, uneven)", out.reshape({-1}), at::tensor(want_rows, at::kDouble)));
  checked->push_back(fmt::format("alltoall(f32) on {}", c.name()));
  return c.Barrier();
}

}  // namespace

StatusOr<CommCheckResult> RunCommCheck(const comm::DeviceMesh& mesh, const CommCheckOptions& options) {
  CommCheckResult result;
  const MeshDim dims[] = {MeshDim::kWorld, MeshDim::kDp, MeshDim::kTp, MeshDim::kEp, MeshDim::kEdp};
  for (MeshDim dim : dims) {
    RETURN_IF_ERROR(CheckGroup(mesh.group(dim), mesh.rank(), GroupMembers(mesh.layout(), dim, mesh.rank()),
                               &result.checked));
  }
  comm::Communicator& world = mesh.world();
  at::Tensor buf = at::ones({options.allreduce_elements}, Opts(world, at::kFloat));
  RETURN_IF_ERROR(world.AllReduce(buf, comm::ReduceOp::kAvg));  // warm-up, and ones stay ones
  RETURN_IF_ERROR(world.Barrier());
  auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < options.iterations; ++i) RETURN_IF_ERROR(world.AllReduce(buf, comm::ReduceOp::kAvg));
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  RETURN_IF_ERROR(Compare(world, "allreduce(avg,f32) timing run", buf.reshape({-1}).narrow(0, 0, 16),
                          at::ones({16}, at::kDouble)));
  result.allreduce_seconds = secs / std::max(1, options.iterations);
  const int n = world.size();
  double bytes = static_cast<double>(options.allreduce_elements) * 4;
  result.allreduce_busbw_gbps = n > 1 ? bytes / result.allreduce_seconds * 2.0 * (n - 1) / n / 1e9 : 0;
  return result;
}

}  // namespace vlorch
