// MpiCommunicator: the Communicator over an MPI communicator, for CPU tensors.
//
// Every call is issued non-blocking (MPI_Iallreduce, MPI_Ialltoallv, ...) and completed by
// polling MPI_Test against the call's deadline, yielding the core between polls after a
// short spin. That is how the timeout works, and it is also faster than the blocking calls
// when ranks share cores (measured in ops/bench/allreduce).
//
// All-reduce algorithm: tensors whose per-rank chunk is at least CommOptions::ring_min_chunk_bytes go through
// vlorch's own ring (reduce-scatter then all-gather over MPI_Isend/MPI_Irecv, reductions by
// ATen's vectorised kernels), or, for power-of-two groups of 4 or more and up to
// CommOptions::halving_doubling_max_bytes, Rabenseifner's recursive halving then doubling (the
// same bytes in 2 log2(n) steps instead of 2 (n - 1)); smaller ones through MPI_Iallreduce.
// Groups of at least CommOptions::shm_allreduce_min_ranks ranks that all share a node use a
// POSIX shared-memory segment instead for those sizes (see the .cc). The ring matches or beats
// Open MPI's blocking MPI_Allreduce where libnbc's MPI_Iallreduce reaches ~0.6 of it
// (ops/bench/allreduce), and every element is reduced by one rank and then copied, so all
// ranks end bitwise identical.
//
// bf16 and f16 have no MPI datatype: they travel as 2-byte opaque elements and are reduced
// by user-defined MPI ops that widen each pair to f32 and round the result back, so a sum
// is rounded once per reduction step (exact for values bf16/f16 represent exactly).
#pragma once

#include <mpi.h>

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "worker/comm/communicator.h"

namespace vlorch::comm {

class MpiCommunicator final : public Communicator {
 public:
  // Takes ownership of `comm` (freed on destruction). Requires an MpiSession. Collective over
  // `comm` (every rank creates its communicator from it, as after MPI_Comm_split or _dup):
  // groups on one node map their shared-memory segment here.
  static StatusOr<std::unique_ptr<MpiCommunicator>> Create(MPI_Comm comm, std::string name,
                                                           const CommOptions& options);
  // A new communicator over the same ranks (MPI_Comm_dup), e.g. to isolate a library's traffic.
  StatusOr<std::unique_ptr<MpiCommunicator>> Duplicate(std::string name,
                                                       const CommOptions& options) const;
  ~MpiCommunicator() override;

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  const std::string& name() const override { return name_; }
  CommBackend backend() const override { return CommBackend::kMpi; }
  uint64_t seq() const override { return seq_; }
  MPI_Comm mpi_comm() const { return comm_; }
  // Whether large all-reduces go through the group's shared-memory segment.
  bool shared_memory() const { return shm_ != nullptr; }

  Status AllReduce(at::Tensor& tensor, ReduceOp op) override;
  Status AllGather(const at::Tensor& input, at::Tensor& output) override;
  Status ReduceScatter(const at::Tensor& input, at::Tensor& output, ReduceOp op) override;
  Status AllToAll(const at::Tensor& input, const std::vector<int64_t>& send_rows,
                  at::Tensor& output, const std::vector<int64_t>& recv_rows) override;
  Status Broadcast(at::Tensor& tensor, int root) override;
  Status Send(const at::Tensor& tensor, int peer, int tag) override;
  Status Recv(at::Tensor& tensor, int peer, int tag) override;
  Status Barrier() override;

 private:
  MpiCommunicator(MPI_Comm comm, std::string name, const CommOptions& options);
  // Starts call number seq_+1: rejects calls on a poisoned communicator.
  Status Begin(const char* what);
  // Issues the request made by `start` and waits for it against the deadline. `keep_alive`
  // holds the buffers the request uses; on timeout they are kept until destruction.
  template <typename StartFn>
  Status Run(const char* what, std::vector<at::Tensor> keep_alive, StartFn start,
             MPI_Status* status_out = nullptr);
  // Polls reqs[first, first+count) until they complete or the call's deadline (counted from
  // `begin`) passes. On timeout every request still pending in `reqs` is abandoned with
  // `keep_alive` and the communicator is poisoned.
  Status WaitRange(const char* what, std::vector<MPI_Request>& reqs, size_t first, size_t count,
                   const std::vector<at::Tensor>& keep_alive, std::chrono::steady_clock::time_point begin,
                   MPI_Status* status_out = nullptr);
  // One idle step of a wait: spins, then yields; true (and the communicator poisoned by
  // `what`) once the call's deadline, counted from `begin`, has passed.
  bool IdleOrTimedOut(const char* what, int* spins, std::chrono::steady_clock::time_point begin);
  // Ring all-reduce over point-to-point messages for large tensors (see the .cc).
  Status RingAllReduce(at::Tensor& flat, ReduceOp op);
  Status HalvingDoublingAllReduce(at::Tensor& flat, ReduceOp op);
  // The shared-memory all-reduce (see the .cc); SetUpShm, run by Create, decides whether this
  // group can use it (all ranks on one node) and maps the segment.
  Status ShmAllReduce(at::Tensor& flat, ReduceOp op);
  Status SetUpShm();
  // Marks this rank's arrival at barrier number ++shm_gen_ and waits for every rank's.
  Status ShmSync(const char* what, std::chrono::steady_clock::time_point begin);
  // Scratch for received data of at least `elements` of flat's dtype.
  at::Tensor& Scratch(const at::Tensor& flat, int64_t elements);
  std::string CallName(const char* what) const;

  MPI_Comm comm_;
  std::string name_;
  CommOptions options_;
  int rank_ = 0;
  int size_ = 1;
  uint64_t seq_ = 0;
  std::string poisoned_by_;  // non-empty after a timeout: the call that timed out
  struct Abandoned;
  std::vector<std::unique_ptr<Abandoned>> abandoned_;
  std::unique_ptr<at::Tensor> scratch_;  // ring receive buffer, grown on demand
  struct Shm;
  std::unique_ptr<Shm> shm_;  // the shared segment, once set up (null: not on one node)
  uint64_t shm_gen_ = 0;      // barriers passed on the segment (two per chunk)
};

}  // namespace vlorch::comm
