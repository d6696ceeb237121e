#include "worker/comm/nccl_communicator.h"

#include <mpi.h>

#include <ATen/Context.h>
#include <ATen/core/Tensor.h>
#include <fmt/format.h>

#include "common/logging.h"
#include "worker/comm/mpi_runtime.h"

#ifdef VLORCH_HAVE_NCCL
#include <cuda_runtime.h>
#include <nccl.h>
#include <sched.h>

#include <chrono>
#endif

namespace vlorch::comm {

#ifndef VLORCH_HAVE_NCCL

bool NcclUsable() { return false; }

StatusOr<std::unique_ptr<Communicator>> CreateNcclCommunicator(MPI_Comm, std::string name,
                                                               const CommOptions&) {
  return FailedPreconditionError(fmt::format(
      "group '{}': this vlorch was built without NCCL; rebuild with the CUDA toolkit and NCCL "
      "(-DVLORCH_WITH_CUDA=ON) or use the mpi backend",
      name));
}

#else

namespace {

int VisibleGpus() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no device / no driver" error
    return 0;
  }
  return n;
}

ncclDataType_t NcclType(at::ScalarType s) {
  switch (s) {
    case at::kFloat: return ncclFloat32;
    case at::kBFloat16: return ncclBfloat16;
    case at::kHalf: return ncclFloat16;
    default: return ncclInt64;
  }
}

ncclRedOp_t NcclOp(ReduceOp op) {
  // kAvg is a sum followed by a division (ncclAvg is not defined for integers).
  return op == ReduceOp::kMax ? ncclMax : ncclSum;
}

class NcclCommunicator final : public Communicator {
 public:
  NcclCommunicator(std::string name, const CommOptions& options, int rank, int size, int device)
      : name_(std::move(name)), options_(options), rank_(rank), size_(size), device_(device) {}

  ~NcclCommunicator() override {
    if (comm_ != nullptr) {
      if (poisoned_by_.empty()) ncclCommDestroy(comm_);
      else ncclCommAbort(comm_);
    }
    if (event_ != nullptr) cudaEventDestroy(event_);
    if (stream_ != nullptr) cudaStreamDestroy(stream_);
  }

  Status Init(const ncclUniqueId& id) {
    cudaSetDevice(device_);
    if (cudaStreamCreate(&stream_) != cudaSuccess || cudaEventCreateWithFlags(&event_, cudaEventDisableTiming) != cudaSuccess)
      return InternalError(fmt::format("group '{}': cannot create a CUDA stream on device {}", name_, device_));
    ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
    config.blocking = 0;
    ++seq_;
    ncclResult_t r = ncclCommInitRankConfig(&comm_, size_, id, rank_, &config);
    return Complete("init", r, /*wait_stream=*/false);
  }

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  const std::string& name() const override { return name_; }
  CommBackend backend() const override { return CommBackend::kNccl; }
  uint64_t seq() const override { return seq_; }

  Status AllReduce(at::Tensor& t, ReduceOp op) override {
    RETURN_IF_ERROR(CheckCollectiveTensor(*this, "allreduce", t, true));
    RETURN_IF_ERROR(Begin("allreduce"));
    ncclResult_t r = ncclAllReduce(t.data_ptr(), t.data_ptr(), t.numel(), NcclType(t.scalar_type()),
                                   NcclOp(op), comm_, stream_);
    RETURN_IF_ERROR(Complete("allreduce", r));
    if (op == ReduceOp::kAvg) DivideForAvg(t, size_);
    return Status::OK();
  }

  Status AllGather(const at::Tensor& in, at::Tensor& out) override {
    RETURN_IF_ERROR(CheckAllGather(*this, in, out, /*want_cuda=*/true));
    RETURN_IF_ERROR(Begin("allgather"));
    return Complete("allgather", ncclAllGather(in.data_ptr(), out.data_ptr(), in.numel(),
                                               NcclType(in.scalar_type()), comm_, stream_));
  }

  Status ReduceScatter(const at::Tensor& in, at::Tensor& out, ReduceOp op) override {
    RETURN_IF_ERROR(CheckReduceScatter(*this, in, out, /*want_cuda=*/true));
    RETURN_IF_ERROR(Begin("reducescatter"));
    RETURN_IF_ERROR(Complete("reducescatter",
                             ncclReduceScatter(in.data_ptr(), out.data_ptr(), out.numel(),
                                               NcclType(in.scalar_type()), NcclOp(op), comm_, stream_)));
    if (op == ReduceOp::kAvg) DivideForAvg(out, size_);
    return Status::OK();
  }

  Status AllToAll(const at::Tensor& in, const std::vector<int64_t>& send_rows, at::Tensor& out,
                  const std::vector<int64_t>& recv_rows) override {
    ASSIGN_OR_RETURN(const int64_t row, CheckAllToAll(*this, in, send_rows, out, recv_rows, /*want_cuda=*/true));
    RETURN_IF_ERROR(Begin("alltoall"));
    const size_t item = in.element_size();
    const char* src = static_cast<const char*>(in.data_ptr());
    char* dst = static_cast<char*>(out.data_ptr());
    ncclDataType_t type = NcclType(in.scalar_type());
    ncclResult_t r = ncclGroupStart();
    int64_t so = 0, ro = 0;
    for (int p = 0; p < size_ && (r == ncclSuccess || r == ncclInProgress); ++p) {
      if (send_rows[p] > 0) r = ncclSend(src + so * row * item, send_rows[p] * row, type, p, comm_, stream_);
      if (recv_rows[p] > 0 && (r == ncclSuccess || r == ncclInProgress))
        r = ncclRecv(dst + ro * row * item, recv_rows[p] * row, type, p, comm_, stream_);
      so += send_rows[p];
      ro += recv_rows[p];
    }
    ncclResult_t end = ncclGroupEnd();
    return Complete("alltoall", r == ncclSuccess || r == ncclInProgress ? end : r);
  }

  Status Broadcast(at::Tensor& t, int root) override {
    RETURN_IF_ERROR(CheckCollectiveTensor(*this, "broadcast", t, true));
    RETURN_IF_ERROR(CheckBroadcastRoot(*this, root));
    RETURN_IF_ERROR(Begin("broadcast"));
    return Complete("broadcast", ncclBroadcast(t.data_ptr(), t.data_ptr(), t.numel(),
                                               NcclType(t.scalar_type()), root, comm_, stream_));
  }

  Status Send(const at::Tensor& t, int peer, int) override {
    RETURN_IF_ERROR(CheckCollectiveTensor(*this, "send", t, true));
    RETURN_IF_ERROR(CheckPeer(*this, "send", peer));
    RETURN_IF_ERROR(Begin("send"));
    return Complete("send", ncclSend(t.data_ptr(), t.numel(), NcclType(t.scalar_type()), peer, comm_, stream_));
  }

  Status Recv(at::Tensor& t, int peer, int) override {
    RETURN_IF_ERROR(CheckCollectiveTensor(*this, "recv", t, true));
    RETURN_IF_ERROR(CheckPeer(*this, "recv", peer));
    RETURN_IF_ERROR(Begin("recv"));
    return Complete("recv", ncclRecv(t.data_ptr(), t.numel(), NcclType(t.scalar_type()), peer, comm_, stream_));
  }

  Status Barrier() override {
    RETURN_IF_ERROR(Begin("barrier"));
    if (barrier_buf_ == nullptr && cudaMalloc(&barrier_buf_, sizeof(float)) != cudaSuccess)
      return InternalError(fmt::format("barrier on group '{}': cudaMalloc failed", name_));
    return Complete("barrier", ncclAllReduce(barrier_buf_, barrier_buf_, 1, ncclFloat32, ncclSum, comm_, stream_));
  }

 private:
  Status Begin(const char* what) {
    if (!poisoned_by_.empty())
      return FailedPreconditionError(fmt::format(
          "{} on group '{}': the communicator is unusable since {} failed; restart from the last checkpoint",
          what, name_, poisoned_by_));
    ++seq_;
    return Status::OK();
  }

  std::string CallName(const char* what) const {
    return fmt::format("{} #{} on group '{}' (rank {} of {}, {}, GPU {})", what, seq_, name_, rank_,
                       size_, RankTag(), device_);
  }

  // Waits until NCCL has enqueued the call (non-blocking mode) and, if `wait_stream`, until the
  // stream has run it, all against the deadline.
  Status Complete(const char* what, ncclResult_t issued, bool wait_stream = true) {
    const auto begin = std::chrono::steady_clock::now();
    const bool has_deadline = options_.timeout.count() > 0;
    auto fail = [&](Status s) {
      poisoned_by_ = fmt::format("{} #{}", what, seq_);
      return s;
    };
    auto expired = [&] {
      return has_deadline && std::chrono::steady_clock::now() - begin > options_.timeout;
    };
    ncclResult_t state = issued;
    while (state == ncclInProgress) {
      if (ncclCommGetAsyncError(comm_, &state) != ncclSuccess) break;
      if (state == ncclInProgress && expired()) {
        return fail(TimedOutError(fmt::format("{} was not accepted by NCCL within {:.1f} s", CallName(what),
                                              options_.timeout.count() / 1000.0)));
      }
      sched_yield();
    }
    if (state != ncclSuccess)
      return fail(InternalError(fmt::format("{} failed: {} ({})", CallName(what), ncclGetErrorString(state),
                                            ncclGetLastError(comm_))));
    if (!wait_stream) return Status::OK();
    cudaEventRecord(event_, stream_);
    int spins = 0;
    for (;;) {
      cudaError_t e = cudaEventQuery(event_);
      if (e == cudaSuccess) return Status::OK();
      if (e != cudaErrorNotReady)
        return fail(InternalError(fmt::format("{} failed on the device: {}", CallName(what), cudaGetErrorString(e))));
      ncclResult_t async = ncclSuccess;
      ncclCommGetAsyncError(comm_, &async);
      if (async != ncclSuccess && async != ncclInProgress)
        return fail(InternalError(fmt::format("{} failed: {}", CallName(what), ncclGetErrorString(async))));
      if (++spins >= options_.spin_before_yield) {
        sched_yield();
        if (expired())
          return fail(CallTimedOut(CallName(what), options_.timeout));
      }
    }
  }

  std::string name_;
  CommOptions options_;
  int rank_, size_, device_;
  uint64_t seq_ = 0;
  std::string poisoned_by_;
  ncclComm_t comm_ = nullptr;
  cudaStream_t stream_ = nullptr;
  cudaEvent_t event_ = nullptr;
  void* barrier_buf_ = nullptr;
};

}  // namespace

bool NcclUsable() { return at::hasCUDA() && VisibleGpus() > 0; }

StatusOr<std::unique_ptr<Communicator>> CreateNcclCommunicator(MPI_Comm mpi_group, std::string name,
                                                               const CommOptions& options) {
  RETURN_IF_ERROR(options.Validate());
  MpiSession* session = MpiSession::Get();
  if (session == nullptr) return FailedPreconditionError("the nccl backend needs MPI initialised (MpiSession)");
  int gpus = VisibleGpus();
  if (gpus == 0)
    return FailedPreconditionError(fmt::format("group '{}': the nccl backend needs a CUDA GPU and none is visible", name));
  int rank = 0, size = 1;
  MPI_Comm_rank(mpi_group, &rank);
  MPI_Comm_size(mpi_group, &size);
  ncclUniqueId id;
  if (rank == 0 && ncclGetUniqueId(&id) != ncclSuccess)
    return InternalError(fmt::format("group '{}': ncclGetUniqueId failed", name));
  {
    ASSIGN_OR_RETURN(auto guard, MpiCallGuard::Acquire("nccl id broadcast"));
    int rc = MPI_Bcast(&id, sizeof(id), MPI_BYTE, 0, mpi_group);
    if (rc != MPI_SUCCESS) return InternalError("broadcasting the NCCL id failed: " + MpiErrorString(rc));
  }
  int device = session->local_rank() % gpus;
  auto comm = std::make_unique<NcclCommunicator>(std::move(name), options, rank, size, device);
  RETURN_IF_ERROR(comm->Init(id));
  return std::unique_ptr<Communicator>(std::move(comm));
}

#endif  // VLORCH_HAVE_NCCL

}  // namespace vlorch::comm
