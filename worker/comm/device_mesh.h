// DeviceMesh: a ParallelLayout (jobs/parallel_layout.h) turned into communicators.
//
// Built collectively over MPI_COMM_WORLD: every rank calls Create with the same layout. The
// layout is validated first (same result on every rank, so an invalid layout fails
// everywhere before any communication); then one MPI_Comm_split per dimension (world, dp,
// tp, ep, edp), and for the nccl backend one NCCL communicator per group built from an id
// broadcast over that group's MPI communicator.
//
// The mesh owns its communicators and hands out references; layers receive the group they
// need as an argument (no globals). Rank order is the layout's (tp fastest).
#pragma once

#include <memory>

#include "jobs/parallel_layout.h"
#include "worker/comm/communicator.h"

namespace vlorch::comm {

struct DeviceMeshOptions {
  // Backend of every group. Default kMpi.
  CommBackend backend = CommBackend::kMpi;
  // Options of every communicator (timeout etc.).
  CommOptions comm;
};

class DeviceMesh {
 public:
  // Collective over MPI_COMM_WORLD. InvalidArgument when the layout does not fit the world.
  static StatusOr<std::unique_ptr<DeviceMesh>> Create(const ParallelLayout& layout,
                                                      const DeviceMeshOptions& options = {});
  ~DeviceMesh();

  const ParallelLayout& layout() const { return layout_; }  // resolved (dp filled in)
  const MeshCoords& coords() const { return coords_; }
  int rank() const { return coords_.rank; }
  int world_size() const { return layout_.world(); }

  Communicator& group(MeshDim dim) const;
  Communicator& world() const { return group(MeshDim::kWorld); }
  Communicator& dp() const { return group(MeshDim::kDp); }
  Communicator& tp() const { return group(MeshDim::kTp); }
  Communicator& ep() const { return group(MeshDim::kEp); }
  Communicator& edp() const { return group(MeshDim::kEdp); }

 private:
  DeviceMesh() = default;
  ParallelLayout layout_;
  MeshCoords coords_;
  std::unique_ptr<Communicator> groups_[5];
};

}  // namespace vlorch::comm
