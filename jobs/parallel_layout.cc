#include "jobs/parallel_layout.h"

#include <fmt/format.h>

namespace vlorch {
namespace {

std::string Divisors(int n) {
  std::string out;
  for (int d = 1; d <= n; ++d) {
    if (n % d == 0) out += (out.empty() ? "" : ", ") + std::to_string(d);
  }
  return out;
}

}  // namespace

const char* MeshDimName(MeshDim dim) {
  switch (dim) {
    case MeshDim::kWorld: return "world";
    case MeshDim::kDp: return "dp";
    case MeshDim::kTp: return "tp";
    case MeshDim::kEp: return "ep";
    case MeshDim::kEdp: return "edp";
  }
  return "?";
}

std::string ParallelLayout::ToString() const {
  return fmt::format("dp={} tp={} ep={}", dp == 0 ? std::string("auto") : std::to_string(dp), tp, ep);
}

Status ParallelLayout::Validate(int world_size) const {
  if (world_size < 1) return InvalidArgumentError(fmt::format("world size must be >= 1 (got {})", world_size));
  if (tp < 1) return InvalidArgumentError(fmt::format("tp must be >= 1 (got {})", tp));
  if (ep < 1) return InvalidArgumentError(fmt::format("ep must be >= 1 (got {})", ep));
  if (dp < 0) return InvalidArgumentError(fmt::format("dp must be >= 1, or 0 to infer it (got {})", dp));
  if (world_size % tp != 0)
    return InvalidArgumentError(fmt::format(
        "world size {} is not divisible by tp={}: use a tp that divides {} ({}) or launch a "
        "multiple of {} ranks",
        world_size, tp, world_size, Divisors(world_size), tp));
  int resolved_dp = dp == 0 ? world_size / tp : dp;
  if (resolved_dp * tp != world_size)
    return InvalidArgumentError(fmt::format(
        "dp={} x tp={} needs {} ranks but the world has {}: set dp={} or leave dp unset to infer it",
        dp, tp, dp * tp, world_size, world_size / tp));
  int plane = resolved_dp * tp;
  if (plane % ep != 0)
    return InvalidArgumentError(fmt::format(
        "ep={} does not divide dp x tp = {}: expert parallelism folds over the dp x tp ranks, so "
        "use one of {}",
        ep, plane, Divisors(plane)));
  return Status::OK();
}

StatusOr<ParallelLayout> ParallelLayout::Resolve(int world_size) const {
  RETURN_IF_ERROR(Validate(world_size));
  ParallelLayout out = *this;
  if (out.dp == 0) out.dp = world_size / tp;
  return out;
}

MeshCoords CoordsOf(const ParallelLayout& l, int rank) {
  MeshCoords c;
  c.rank = rank;
  c.tp_rank = rank % l.tp;
  c.dp_rank = rank / l.tp;
  c.ep_rank = rank % l.ep;
  c.edp_rank = rank / l.ep;
  return c;
}

int GroupColor(const ParallelLayout& l, MeshDim dim, int rank) {
  switch (dim) {
    case MeshDim::kWorld: return 0;
    case MeshDim::kTp: return rank / l.tp;   // one tp group per dp index
    case MeshDim::kDp: return rank % l.tp;   // one dp group per tp index
    case MeshDim::kEp: return rank / l.ep;   // blocks of ep consecutive ranks
    case MeshDim::kEdp: return rank % l.ep;  // same position in every ep block
  }
  return 0;
}

std::vector<int> GroupMembers(const ParallelLayout& l, MeshDim dim, int rank) {
  std::vector<int> out;
  int color = GroupColor(l, dim, rank);
  for (int r = 0; r < l.world(); ++r) {
    if (GroupColor(l, dim, r) == color) out.push_back(r);
  }
  return out;
}

}  // namespace vlorch
