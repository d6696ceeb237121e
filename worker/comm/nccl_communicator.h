// NcclCommunicator: the Communicator over NCCL, for CUDA tensors.
//
// Built only when CUDA and NCCL are found (VLORCH_HAVE_NCCL). Creation is collective over an
// MPI communicator: its rank 0 makes an ncclUniqueId and broadcasts it over MPI; every rank
// binds to GPU (local rank % visible GPUs) and joins with ncclCommInitRankConfig in
// non-blocking mode, so creation, every call and the wait for completion all poll against
// the same deadline; a call that misses it aborts the NCCL communicator (ncclCommAbort) and
// returns TimedOut, instead of NCCL's 30-minute watchdog.
//
// Streams: operations run on the communicator's own stream, created blocking with respect to
// the legacy default stream, which LibTorch uses unless the caller picks another stream; a
// call returns when its work has completed.
#pragma once

#include <mpi.h>

#include <memory>
#include <string>

#include "worker/comm/communicator.h"

namespace vlorch::comm {

// True when this build has the NCCL backend and a CUDA device and a CUDA-enabled LibTorch
// are present, i.e. when NcclCommunicator can actually be used.
bool NcclUsable();

// Collective over `mpi_group` (not owned; used only during creation). FailedPrecondition when
// NCCL is not compiled in or no GPU is visible.
StatusOr<std::unique_ptr<Communicator>> CreateNcclCommunicator(MPI_Comm mpi_group, std::string name,
                                                               const CommOptions& options);

}  // namespace vlorch::comm
