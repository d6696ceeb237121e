// ParallelLayout: how a job's ranks split into data-, tensor- and expert-parallel groups.
//
// Rank order (documented in docs/parallelism.md, the same as Megatron-Core's "tp-dp"):
//
//   world rank r = dp_rank * tp + tp_rank            tp varies fastest
//
//   dp=2, tp=2:   r0 r1 | r2 r3       tp groups {0,1} {2,3}; dp groups {0,2} {1,3}
//
// Expert parallelism folds over the same dp x tp plane (Megatron's MoE "parallel folding"
// with expert-tp = 1): ep groups are blocks of `ep` consecutive world ranks, and the
// expert-data-parallel (edp) groups join the ranks at the same position in every block.
// So ep must divide dp * tp, and edp = dp * tp / ep.
//
//   dp=4, tp=1, ep=2:  ep groups {0,1} {2,3}; edp groups {0,2} {1,3}
//
// The layout is a value: the coordinator validates it against a hostfile, the worker turns
// it into communicators (worker/comm/device_mesh.h). No LibTorch or MPI here.
#pragma once

#include <string>
#include <vector>

#include "common/status.h"

namespace vlorch {

enum class MeshDim { kWorld, kDp, kTp, kEp, kEdp };
const char* MeshDimName(MeshDim dim);  // "world", "dp", "tp", "ep", "edp"

struct ParallelLayout {
  // Data-parallel size. 0 (default) means "world size / tp", resolved by Resolve().
  int dp = 0;
  // Tensor-parallel size. Default 1.
  int tp = 1;
  // Expert-parallel size, folded over dp x tp. Default 1. Must divide dp * tp.
  int ep = 1;

  // OK when the layout fits `world_size` ranks exactly; otherwise InvalidArgument saying what
  // to change, e.g. "world size 6 is not divisible by tp=4 ...".
  Status Validate(int world_size) const;
  // The validated layout with dp filled in.
  StatusOr<ParallelLayout> Resolve(int world_size) const;

  int world() const { return dp * tp; }  // only meaningful once resolved
  std::string ToString() const;           // "dp=2 tp=2 ep=1"
};

// Where one rank sits in a resolved layout.
struct MeshCoords {
  int rank = 0;
  int dp_rank = 0;   // index along dp (its rank inside its dp group)
  int tp_rank = 0;   // index along tp
  int ep_rank = 0;   // rank inside its ep group
  int edp_rank = 0;  // rank inside its expert-data-parallel group
};

MeshCoords CoordsOf(const ParallelLayout& resolved, int rank);

// World ranks of the group along `dim` that contains `rank`, ordered by rank inside the group.
std::vector<int> GroupMembers(const ParallelLayout& resolved, MeshDim dim, int rank);

// A number that is equal for exactly the ranks in the same group along `dim` (the "color" of
// MPI_Comm_split); ranks inside a group are ordered by world rank.
int GroupColor(const ParallelLayout& resolved, MeshDim dim, int rank);

}  // namespace vlorch
