// Communicator: the collectives training needs, over one group of ranks.
//
// One interface, two backends (see docs/communication.md):
//   MpiCommunicator  (worker/comm/mpi_communicator.h)  CPU tensors, any MPI.
//   NcclCommunicator (worker/comm/nccl_communicator.h) CUDA tensors; compiled when CUDA and
//                    NCCL are found, its communicators created from an id broadcast over MPI.
// Both pass the same test suite (tests/worker/comm/collectives_test.cc).
//
// Contract shared by every call:
//  * Tensors are contiguous, of dtype f32, bf16, f16 or i64, on the backend's device. Anything
//    else is InvalidArgument, checked before any communication, so a bad call fails on the
//    rank that made it without leaving peers inside a collective.
//  * Every rank of the group calls the same collectives in the same order (as with MPI/NCCL).
//  * Each call has a deadline (CommOptions::timeout). A call that does not complete in time
//    returns TimedOut naming the call ("allreduce #17"), the group and the rank. A timed-out
//    communicator is poisoned: later calls return FailedPrecondition, because its peers'
//    state is unknown; the job must restart from its last checkpoint.
//  * Calls are synchronous: when a call returns OK its output is ready (on the device stream
//    for NCCL).
//  * kAvg divides the sum by the group size; for i64 the quotient is truncated toward zero.
//  * Thread safety: one thread at a time per communicator. The MPI backend additionally
//    respects the thread level MPI granted (see mpi_runtime.h).
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

#include "common/status.h"

namespace at {
class Tensor;
}  // namespace at

namespace vlorch::comm {

enum class ReduceOp { kSum, kAvg, kMax };
const char* ReduceOpName(ReduceOp op);

enum class CommBackend { kMpi, kNccl };
const char* CommBackendName(CommBackend backend);

struct CommOptions {
  // Deadline for one call. Zero disables it. Default 300 s: longer than any single
  // collective of a healthy job (a multi-GB all-reduce over a slow network), far shorter
  // than NCCL's 30-minute watchdog. Tests use a few seconds.
  std::chrono::milliseconds timeout{std::chrono::seconds(300)};
  // Progress polls spent spinning before yielding the core between polls. Default 64.
  // Yielding matters when ranks outnumber cores: a spinning rank would starve its peer.
  int spin_before_yield = 64;
  // MPI backend: an all-reduce whose per-rank chunk (bytes / group size) is at least this
  // large uses vlorch's ring algorithm, a smaller one MPI_Iallreduce. Default 128 KiB, where
  // the ring overtakes (ops/bench/allreduce).
  int64_t ring_min_chunk_bytes = int64_t{128} << 10;
  // MPI backend: the ring moves each chunk as segments of this size, reducing each segment
  // while it is still in cache. Default 1 MiB.
  int64_t ring_segment_bytes = int64_t{1} << 20;
  // MPI backend: in power-of-two groups of 4 or more, an all-reduce past the ring threshold
  // and up to this many bytes uses recursive halving and doubling instead of the ring (the
  // same bytes in 2 log2(n) steps instead of 2 (n - 1)). Default 2 MiB: at np = 4 on 2 cores
  // it took 1 MiB from 0.82 to 0.90 of MPI_Allreduce and 4 MiB from 1.12 to 0.97 (three
  // alternating pairs each, ops/bench/allreduce). 0: always the ring.
  int64_t halving_doubling_max_bytes = int64_t{2} << 20;
  // MPI backend, groups whose ranks all share one node: all-reduces past the ring threshold
  // in groups of at least this many ranks go through a shared-memory segment instead of the
  // ring (each rank copies a chunk of its tensor in, reduces one slice of everyone's copies,
  // and copies the reduced chunk out; two synchronisations per chunk, and a chunk stays in
  // cache from copy-in to copy-out). Default 2: on 2 cores it ran 1.0-1.9x MPI_Allreduce at
  // np = 2 and 1.5-2.4x at np = 4 for 1-256 MB (ops/bench/allreduce). 0: never.
  int shm_allreduce_min_ranks = 2;
  // The shared segment's slot per rank: tensors go through in chunks of this size (the
  // segment holds two sets of n slots plus a result slot). Default 256 KiB, the best of
  // 128/256/512 KiB at np = 2 and 4 here: small enough for a chunk's slots to stay in cache.
  int64_t shm_slot_bytes = int64_t{256} << 10;

  Status Validate() const;
};

class Communicator {
 public:
  virtual ~Communicator() = default;

  // Rank inside this group and the group's size.
  virtual int rank() const = 0;
  virtual int size() const = 0;
  // The group's name as given at creation ("world", "dp", "tp", ...), used in errors.
  virtual const std::string& name() const = 0;
  virtual CommBackend backend() const = 0;
  // Number of calls made so far; the next call is number seq()+1 in error messages.
  virtual uint64_t seq() const = 0;

  // In place: every rank ends with op over all ranks' `tensor`.
  virtual Status AllReduce(at::Tensor& tensor, ReduceOp op) = 0;
  // output.numel() == size() * input.numel(); rank i's input lands at [i*n, (i+1)*n).
  virtual Status AllGather(const at::Tensor& input, at::Tensor& output) = 0;
  // input.numel() == size() * output.numel(); rank i gets op over block i of all inputs.
  // input and output must not overlap.
  virtual Status ReduceScatter(const at::Tensor& input, at::Tensor& output, ReduceOp op) = 0;
  // Exchanges rows (slices along dim 0). send_rows[p] rows of `input` go to rank p, in rank
  // order; recv_rows[p] rows from rank p land in `output` in rank order. Zero is allowed.
  // input and output must have the same trailing shape; sums must match their dim 0.
  virtual Status AllToAll(const at::Tensor& input, const std::vector<int64_t>& send_rows,
                          at::Tensor& output, const std::vector<int64_t>& recv_rows) = 0;
  // In place: every rank ends with `root`'s tensor.
  virtual Status Broadcast(at::Tensor& tensor, int root) = 0;
  // Point to point. `tag` distinguishes concurrent messages between the same pair (MPI only;
  // NCCL orders messages per pair and ignores it). Recv's tensor must have the sent size.
  virtual Status Send(const at::Tensor& tensor, int peer, int tag) = 0;
  virtual Status Recv(at::Tensor& tensor, int peer, int tag) = 0;
  virtual Status Barrier() = 0;
};

// Shared by the backends: argument checks made before touching the network, so both give
// the same errors. `what` is the call name used in messages ("allreduce"); want_cuda
// selects the device the backend needs.
Status CheckCollectiveTensor(const Communicator& c, const char* what, const at::Tensor& t,
                             bool want_cuda);
Status CheckPeer(const Communicator& c, const char* what, int peer);
Status CheckAllGather(const Communicator& c, const at::Tensor& in, const at::Tensor& out, bool want_cuda);
Status CheckReduceScatter(const Communicator& c, const at::Tensor& in, const at::Tensor& out,
                          bool want_cuda);
// Elements per row (product of the trailing dims) when the call is valid.
StatusOr<int64_t> CheckAllToAll(const Communicator& c, const at::Tensor& in,
                                const std::vector<int64_t>& send_rows, const at::Tensor& out,
                                const std::vector<int64_t>& recv_rows, bool want_cuda);
Status CheckBroadcastRoot(const Communicator& c, int root);
// kAvg after a sum: divides by the group size (truncating toward zero for i64).
void DivideForAvg(at::Tensor& t, int group_size);
// The TimedOut error of a call that a peer never completed.
Status CallTimedOut(const std::string& call_name, std::chrono::milliseconds timeout);

}  // namespace vlorch::comm
