#include "worker/comm/device_mesh.h"

#include <mpi.h>

#include <fmt/format.h>

#include "worker/comm/mpi_communicator.h"
#include "worker/comm/mpi_runtime.h"
#include "worker/comm/nccl_communicator.h"

namespace vlorch::comm {

StatusOr<std::unique_ptr<DeviceMesh>> DeviceMesh::Create(const ParallelLayout& layout,
                                                         const DeviceMeshOptions& options) {
  RETURN_IF_ERROR(options.comm.Validate());
  MpiSession* session = MpiSession::Get();
  if (session == nullptr) return FailedPreconditionError("DeviceMesh needs MPI initialised (MpiSession)");
  ASSIGN_OR_RETURN(ParallelLayout resolved, layout.Resolve(session->world_size()));
  if (options.backend == CommBackend::kNccl && !NcclUsable())
    return FailedPreconditionError(
        "the nccl backend needs vlorch built with NCCL, a CUDA-enabled LibTorch and a visible GPU; "
        "use backend mpi on CPU machines");
  std::unique_ptr<DeviceMesh> mesh(new DeviceMesh());
  mesh->layout_ = resolved;
  mesh->coords_ = CoordsOf(resolved, session->world_rank());
  const MeshDim dims[] = {MeshDim::kWorld, MeshDim::kDp, MeshDim::kTp, MeshDim::kEp, MeshDim::kEdp};
  for (MeshDim dim : dims) {
    MPI_Comm sub;
    {
      ASSIGN_OR_RETURN(auto guard, MpiCallGuard::Acquire("mesh split"));
      int rc = MPI_Comm_split(MPI_COMM_WORLD, GroupColor(resolved, dim, session->world_rank()),
                              session->world_rank(), &sub);
      if (rc != MPI_SUCCESS)
        return InternalError(fmt::format("MPI_Comm_split for group '{}' failed: {}", MeshDimName(dim),
                                         MpiErrorString(rc)));
    }
    std::unique_ptr<Communicator> comm;
    if (options.backend == CommBackend::kMpi) {
      ASSIGN_OR_RETURN(comm, MpiCommunicator::Create(sub, MeshDimName(dim), options.comm));
    } else {
      auto nccl = CreateNcclCommunicator(sub, MeshDimName(dim), options.comm);
      MPI_Comm_free(&sub);
      RETURN_IF_ERROR(nccl.status());
      comm = std::move(nccl).value();
    }
    mesh->groups_[static_cast<int>(dim)] = std::move(comm);
  }
  return mesh;
}

DeviceMesh::~DeviceMesh() = default;

Communicator& DeviceMesh::group(MeshDim dim) const { return *groups_[static_cast<int>(dim)]; }

}  // namespace vlorch::comm
