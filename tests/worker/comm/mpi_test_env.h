// Shared state of the multi-rank tests: one world communicator per backend, created on
// first use (a collective step every rank reaches in the same test) and kept for the run.
#pragma once

#include <ATen/ATen.h>

#include "worker/comm/communicator.h"

namespace vlorch::testing {

// Tests use short deadlines so that a divergence between ranks fails in seconds.
inline constexpr std::chrono::milliseconds kTestTimeout{30000};

// nullptr when the backend cannot run here (nccl without a GPU / CUDA LibTorch).
comm::Communicator* WorldComm(comm::CommBackend backend);
at::Device DeviceFor(comm::CommBackend backend);
void ReleaseTestCommunicators();

}  // namespace vlorch::testing
