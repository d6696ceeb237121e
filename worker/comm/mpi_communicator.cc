#include "worker/comm/mpi_communicator.h"

#include <fcntl.h>
#include <sched.h>
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <climits>
#include <cstdio>
#include <cstring>
#include <mutex>

#include <ATen/ATen.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <fmt/format.h>

#include "common/collective_trace.h"
#include "common/logging.h"
#include "worker/comm/mpi_runtime.h"

namespace vlorch::comm {

// A request that timed out, with the buffers it still points into.
struct MpiCommunicator::Abandoned {
  MPI_Request request;
  std::vector<at::Tensor> buffers;
};

// The shared-memory segment of a group on one node (POSIX shared memory, mapped by every
// rank and unlinked once all have it, so unmapping is each rank's own business: a rank that
// timed out never leaves the others waiting in a collective free): one arrival counter per
// rank (each on its own cache line), then two sets of n slots plus a result slot, slot_bytes
// each.
struct MpiCommunicator::Shm {
  void* map = MAP_FAILED;
  size_t map_bytes = 0;
  uint64_t* counters = nullptr;  // counter of rank j at counters[j * kCounterStride]
  char* data = nullptr;
  int64_t slot_bytes = 0;
  static constexpr int kCounterStride = 8;  // 64 bytes
  char* Slot(uint64_t set, int j, int n) const { return data + ((set % 2) * (n + 1) + j) * slot_bytes; }
  ~Shm() {
    if (map != MAP_FAILED) munmap(map, map_bytes);
  }
};

namespace {

// ---- bf16 / f16 reductions ------------------------------------------------------------

template <typename T, bool kMax>
void HalfReduce(void* in, void* inout, int* len, MPI_Datatype*) {
  const T* a = static_cast<const T*>(in);
  T* b = static_cast<T*>(inout);
  for (int i = 0; i < *len; ++i) {
    float x = static_cast<float>(a[i]);
    float y = static_cast<float>(b[i]);
    b[i] = static_cast<T>(kMax ? (x > y ? x : y) : x + y);
  }
}

struct HalfTypes {
  MPI_Datatype half2 = MPI_DATATYPE_NULL;  // one 2-byte element
  MPI_Op bf16_sum, bf16_max, f16_sum, f16_max;
};

const HalfTypes& Halves() {
  static HalfTypes t;
  static std::once_flag once;
  std::call_once(once, [] {
    MPI_Type_contiguous(2, MPI_BYTE, &t.half2);
    MPI_Type_commit(&t.half2);
    MPI_Op_create(&HalfReduce<c10::BFloat16, false>, /*commute=*/1, &t.bf16_sum);
    MPI_Op_create(&HalfReduce<c10::BFloat16, true>, 1, &t.bf16_max);
    MPI_Op_create(&HalfReduce<c10::Half, false>, 1, &t.f16_sum);
    MPI_Op_create(&HalfReduce<c10::Half, true>, 1, &t.f16_max);
  });
  return t;
}

MPI_Datatype MpiType(at::ScalarType s) {
  switch (s) {
    case at::kFloat: return MPI_FLOAT;
    case at::kLong: return MPI_INT64_T;
    default: return Halves().half2;  // bf16, f16 (others rejected before this)
  }
}

MPI_Op MpiOp(at::ScalarType s, ReduceOp op) {
  bool max = op == ReduceOp::kMax;
  if (s == at::kBFloat16) return max ? Halves().bf16_max : Halves().bf16_sum;
  if (s == at::kHalf) return max ? Halves().f16_max : Halves().f16_sum;
  return max ? MPI_MAX : MPI_SUM;
}

Status CountFits(const char* what, const std::string& group, int64_t n) {
  if (n > INT_MAX)
    return InvalidArgumentError(fmt::format(
        "{} on group '{}': {} elements exceed MPI's int count limit; split the tensor", what, group, n));
  return Status::OK();
}

}  // namespace

MpiCommunicator::MpiCommunicator(MPI_Comm comm, std::string name, const CommOptions& options)
    : comm_(comm), name_(std::move(name)), options_(options) {
  MPI_Comm_rank(comm_, &rank_);
  MPI_Comm_size(comm_, &size_);
}

StatusOr<std::unique_ptr<MpiCommunicator>> MpiCommunicator::Create(MPI_Comm comm, std::string name,
                                                                   const CommOptions& options) {
  RETURN_IF_ERROR(options.Validate());
  if (MpiSession::Get() == nullptr)
    return FailedPreconditionError("MpiCommunicator needs MPI initialised by an MpiSession");
  if (comm == MPI_COMM_NULL) return InvalidArgumentError("MpiCommunicator: MPI_COMM_NULL");
  MPI_Comm_set_errhandler(comm, MPI_ERRORS_RETURN);
  Halves();
  std::unique_ptr<MpiCommunicator> c(new MpiCommunicator(comm, std::move(name), options));
  RETURN_IF_ERROR(c->SetUpShm());
  return c;
}

StatusOr<std::unique_ptr<MpiCommunicator>> MpiCommunicator::Duplicate(std::string name,
                                                                      const CommOptions& options) const {
  MPI_Comm dup;
  {
    ASSIGN_OR_RETURN(auto guard, MpiCallGuard::Acquire("comm dup"));
    int rc = MPI_Comm_dup(comm_, &dup);
    if (rc != MPI_SUCCESS) return InternalError("MPI_Comm_dup failed: " + MpiErrorString(rc));
  }
  return Create(dup, std::move(name), options);  // which takes the guard itself
}

MpiCommunicator::~MpiCommunicator() {
  // A timed-out request may have completed since; release what we can. Requests still
  // pending keep their buffers alive (leaked on purpose: MPI may still write into them).
  for (auto& a : abandoned_) {
    int done = 0;
    MPI_Test(&a->request, &done, MPI_STATUS_IGNORE);
    if (!done) a.release();
  }
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized && comm_ != MPI_COMM_WORLD && comm_ != MPI_COMM_NULL) MPI_Comm_free(&comm_);
}

std::string MpiCommunicator::CallName(const char* what) const {
  return fmt::format("{} #{} on group '{}' (rank {} of {}, {})", what, seq_, name_, rank_, size_,
                     RankTag());
}

Status MpiCommunicator::Begin(const char* what) {
  if (!poisoned_by_.empty())
    return FailedPreconditionError(fmt::format(
        "{} on group '{}': the communicator is unusable since {} timed out; restart from the last "
        "checkpoint",
        what, name_, poisoned_by_));
  ++seq_;
  return Status::OK();
}

template <typename StartFn>
Status MpiCommunicator::Run(const char* what, std::vector<at::Tensor> keep_alive, StartFn start,
                            MPI_Status* status_out) {
  const auto begin = std::chrono::steady_clock::now();
  std::vector<MPI_Request> reqs(1, MPI_REQUEST_NULL);
  {
    ASSIGN_OR_RETURN(auto guard, MpiCallGuard::Acquire(what));
    int rc = start(&reqs[0]);
    if (rc != MPI_SUCCESS) return InternalError(CallName(what) + " failed to start: " + MpiErrorString(rc));
  }
  return WaitRange(what, reqs, 0, 1, keep_alive, begin, status_out);
}

Status MpiCommunicator::WaitRange(const char* what, std::vector<MPI_Request>& reqs, size_t first,
                                  size_t count, const std::vector<at::Tensor>& keep_alive,
                                  std::chrono::steady_clock::time_point begin, MPI_Status* status_out) {
  std::vector<MPI_Status> st(count);
  int spins = 0;
  for (;;) {
    int done = 0;
    {
      ASSIGN_OR_RETURN(auto guard, MpiCallGuard::Acquire(what));
      int rc = MPI_Testall(static_cast<int>(count), reqs.data() + first, &done, st.data());
      if (rc != MPI_SUCCESS) {
        std::string detail = MpiErrorString(rc);
        for (const auto& s : st) {
          if (s.MPI_ERROR != MPI_SUCCESS && s.MPI_ERROR != MPI_ERR_PENDING) detail = MpiErrorString(s.MPI_ERROR);
        }
        return InternalError(CallName(what) + " failed: " + detail);
      }
    }
    if (done) {
      if (status_out != nullptr && count > 0) *status_out = st[0];
      return Status::OK();
    }
    if (IdleOrTimedOut(what, &spins, begin)) {
      for (MPI_Request r : reqs) {
        if (r != MPI_REQUEST_NULL) abandoned_.push_back(std::make_unique<Abandoned>(Abandoned{r, keep_alive}));
      }
      return CallTimedOut(CallName(what), options_.timeout);
    }
  }
}

bool MpiCommunicator::IdleOrTimedOut(const char* what, int* spins, std::chrono::steady_clock::time_point begin) {
  if (++*spins < options_.spin_before_yield) return false;
  sched_yield();
  // Checking the clock on every poll would cost more than the poll itself.
  if (options_.timeout.count() > 0 && std::chrono::steady_clock::now() - begin > options_.timeout) {
    poisoned_by_ = fmt::format("{} #{}", what, seq_);
    return true;
  }
  return false;
}

namespace {
// dst = a op b for the large all-reduces (sum, or max; avg divides afterwards).
void ReduceTo(at::Tensor dst, const at::Tensor& a, const at::Tensor& b, ReduceOp op) {
  if (op == ReduceOp::kMax) at::maximum_out(dst, a, b);
  else at::add_out(dst, a, b);
}
// dst op= src.
void ReduceInto(at::Tensor dst, const at::Tensor& src, ReduceOp op) { ReduceTo(dst, dst, src, op); }
}  // namespace

// Ring all-reduce, for n ranks and a flat tensor of N elements cut into n near-equal chunks:
//  1. reduce-scatter: in step s (0..n-2) rank r sends chunk (r - s) mod n to rank r+1 and
//     receives chunk (r - s - 1) mod n from rank r-1 into scratch, then reduces it into place.
//     After n-1 steps rank r holds the full reduction of chunk (r + 1) mod n.
//  2. all-gather: in step s rank r sends chunk (r + 1 - s) mod n to r+1 and receives chunk
//     (r - s) mod n from r-1 straight into place.
// Each rank sends and receives 2 (n-1)/n N elements, the bandwidth optimum. Within a step a
// chunk travels as segments (all posted at once, matched in order since MPI does not let
// messages with one tag overtake); each received segment is reduced while still in cache.
// The last reduce-scatter step forwards each segment as soon as it is reduced (it is final,
// and it is what all-gather step 0 sends), so the all-gather overlaps the reduction; the two
// streams from the same peer use different tags. At n = 2 that is the whole algorithm.
Status MpiCommunicator::RingAllReduce(at::Tensor& flat, ReduceOp op) {
  constexpr int kReduceTag = 0x7a11, kGatherTag = 0x7a12;
  const char* what = "allreduce";
  const auto begin = std::chrono::steady_clock::now();
  const int n = size_;
  const int64_t total = flat.numel();
  const int64_t item = flat.element_size();
  const int64_t seg = std::max<int64_t>(1, options_.ring_segment_bytes / item);
  auto chunk_begin = [&](int c) { return total * c / n; };
  auto chunk_len = [&](int c) { return chunk_begin(c + 1) - chunk_begin(c); };
  auto segs = [&](int c) { return (chunk_len(c) + seg - 1) / seg; };
  auto seg_len = [&](int c, int64_t k) { return static_cast<int>(std::min(seg, chunk_len(c) - k * seg)); };
  at::Tensor scratch = Scratch(flat, (total + n - 1) / n);
  const std::vector<at::Tensor> keep = {flat, scratch};
  MPI_Datatype type = MpiType(flat.scalar_type());
  char* base = static_cast<char*>(flat.data_ptr());
  char* sbase = static_cast<char*>(scratch.data_ptr());
  const int next = (rank_ + 1) % n, prev = (rank_ + n - 1) % n;
  auto mod = [n](int x) { return ((x % n) + n) % n; };
  auto at_chunk = [&](int c, int64_t k) { return base + (chunk_begin(c) + k * seg) * item; };

  // One step. Requests, in order: receives of recv_c, sends of send_c, and for the last
  // reduce-scatter step also the all-gather receives of gather_c and the forwarded sends.
  auto step = [&](int send_c, int recv_c, bool reduce, bool forward, int gather_c) -> Status {
    const int64_t rsegs = segs(recv_c), ssegs = segs(send_c);
    const int64_t gsegs = forward ? segs(gather_c) : 0, fsegs = forward ? rsegs : 0;
    std::vector<MPI_Request> reqs(rsegs + ssegs + gsegs + fsegs, MPI_REQUEST_NULL);
    MPI_Request* rq = reqs.data();
    MPI_Request* sq = rq + rsegs;
    MPI_Request* gq = sq + ssegs;
    MPI_Request* fq = gq + gsegs;
    const int tag = reduce ? kReduceTag : kGatherTag;
    {
      ASSIGN_OR_RETURN(auto guard, MpiCallGuard::Acquire(what));
      for (int64_t k = 0; k < rsegs; ++k)
        MPI_Irecv(reduce ? sbase + k * seg * item : at_chunk(recv_c, k), seg_len(recv_c, k), type, prev, tag,
                  comm_, &rq[k]);
      for (int64_t k = 0; k < gsegs; ++k)
        MPI_Irecv(at_chunk(gather_c, k), seg_len(gather_c, k), type, prev, kGatherTag, comm_, &gq[k]);
      for (int64_t k = 0; k < ssegs; ++k)
        MPI_Isend(at_chunk(send_c, k), seg_len(send_c, k), type, next, tag, comm_, &sq[k]);
    }
    for (int64_t k = 0; k < rsegs; ++k) {
      RETURN_IF_ERROR(WaitRange(what, reqs, k, 1, keep, begin));
      if (!reduce) continue;
      ReduceInto(flat.narrow(0, chunk_begin(recv_c) + k * seg, seg_len(recv_c, k)),
                 scratch.narrow(0, k * seg, seg_len(recv_c, k)), op);
      if (forward) {
        ASSIGN_OR_RETURN(auto guard, MpiCallGuard::Acquire(what));
        MPI_Isend(at_chunk(recv_c, k), seg_len(recv_c, k), type, next, kGatherTag, comm_, &fq[k]);
      }
    }
    return WaitRange(what, reqs, rsegs, ssegs + gsegs + fsegs, keep, begin);
  };

  for (int s = 0; s < n - 1; ++s) {
    const bool last = s == n - 2;
    RETURN_IF_ERROR(step(mod(rank_ - s), mod(rank_ - s - 1), /*reduce=*/true, /*forward=*/last,
                         /*gather_c=*/mod(rank_)));
  }
  // All-gather step 0 happened inside the last reduce-scatter step.
  for (int s = 1; s < n - 1; ++s) RETURN_IF_ERROR(step(mod(rank_ + 1 - s), mod(rank_ - s), false, false, 0));
  return Status::OK();
}

at::Tensor& MpiCommunicator::Scratch(const at::Tensor& flat, int64_t elements) {
  if (!scratch_ || scratch_->scalar_type() != flat.scalar_type() || scratch_->numel() < elements)
    scratch_ = std::make_unique<at::Tensor>(at::empty({elements}, flat.options()));
  return *scratch_;
}

// Rabenseifner's all-reduce for n = 2^k ranks, the flat tensor cut into n near-equal blocks:
//  1. reduce-scatter by recursive halving: with mask = n/2, n/4, .., 1, rank r and its
//     partner r ^ mask split the blocks they still hold in two; r keeps the lower half when
//     its mask bit is 0, sends the other half and reduces the partner's copy of its own half
//     into place. After k steps rank r holds block r fully reduced.
//  2. all-gather by recursive doubling: with mask = 1, 2, .., n/2, r and r ^ mask swap what
//     they hold (adjacent block ranges), straight into place.
// Each rank sends and receives 2 (n-1)/n N elements as in the ring, in 2 k steps instead of
// 2 (n - 1): fewer hand-offs between ranks, which is what costs most when ranks share cores.
// Exchanges travel as segments and every received segment is reduced while still in cache;
// every element is reduced by one rank and then copied, so all ranks end bitwise identical.
Status MpiCommunicator::HalvingDoublingAllReduce(at::Tensor& flat, ReduceOp op) {
  constexpr int kReduceTag = 0x7a13, kGatherTag = 0x7a14;
  const char* what = "allreduce";
  const auto begin = std::chrono::steady_clock::now();
  const int n = size_;
  const int64_t total = flat.numel(), item = flat.element_size();
  const int64_t seg = std::max<int64_t>(1, options_.ring_segment_bytes / item);
  auto block = [&](int b) { return total * b / n; };
  // Half the blocks, each at most one element longer than total / n.
  at::Tensor scratch = Scratch(flat, total / 2 + n);
  const std::vector<at::Tensor> keep = {flat, scratch};
  MPI_Datatype type = MpiType(flat.scalar_type());
  char* base = static_cast<char*>(flat.data_ptr());
  char* sbase = static_cast<char*>(scratch.data_ptr());

  // Sends elements [s0, s1) to `peer` and receives [r0, r1) from it: reduced into place from
  // scratch when `reduce`, else received in place.
  auto exchange = [&](int peer, int64_t s0, int64_t s1, int64_t r0, int64_t r1, bool reduce) -> Status {
    const int64_t rsegs = (r1 - r0 + seg - 1) / seg, ssegs = (s1 - s0 + seg - 1) / seg;
    std::vector<MPI_Request> reqs(rsegs + ssegs, MPI_REQUEST_NULL);
    const int tag = reduce ? kReduceTag : kGatherTag;
    {
      ASSIGN_OR_RETURN(auto guard, MpiCallGuard::Acquire(what));
      for (int64_t k = 0; k < rsegs; ++k) {
        const int64_t off = k * seg, len = std::min(seg, r1 - r0 - off);
        MPI_Irecv(reduce ? sbase + off * item : base + (r0 + off) * item, static_cast<int>(len), type, peer, tag,
                  comm_, &reqs[k]);
      }
      for (int64_t k = 0; k < ssegs; ++k) {
        const int64_t off = k * seg, len = std::min(seg, s1 - s0 - off);
        MPI_Isend(base + (s0 + off) * item, static_cast<int>(len), type, peer, tag, comm_, &reqs[rsegs + k]);
      }
    }
    for (int64_t k = 0; k < rsegs; ++k) {
      RETURN_IF_ERROR(WaitRange(what, reqs, k, 1, keep, begin));
      if (!reduce) continue;
      const int64_t off = k * seg, len = std::min(seg, r1 - r0 - off);
      ReduceInto(flat.narrow(0, r0 + off, len), scratch.narrow(0, off, len), op);
    }
    return WaitRange(what, reqs, rsegs, ssegs, keep, begin);
  };

  int lo = 0, hi = n;  // the blocks this rank is responsible for
  for (int mask = n / 2; mask >= 1; mask /= 2) {
    const int mid = (lo + hi) / 2;
    const bool lower = (rank_ & mask) == 0;
    const int keep_lo = lower ? lo : mid, keep_hi = lower ? mid : hi;
    const int send_lo = lower ? mid : lo, send_hi = lower ? hi : mid;
    RETURN_IF_ERROR(exchange(rank_ ^ mask, block(send_lo), block(send_hi), block(keep_lo), block(keep_hi), true));
    lo = keep_lo, hi = keep_hi;
  }
  for (int mask = 1; mask < n; mask *= 2) {
    const bool lower = (rank_ & mask) == 0;  // the partner holds the range above ours
    const int peer_lo = lower ? hi : lo - (hi - lo), peer_hi = lower ? hi + (hi - lo) : lo;
    RETURN_IF_ERROR(exchange(rank_ ^ mask, block(lo), block(hi), block(peer_lo), block(peer_hi), false));
    lo = std::min(lo, peer_lo), hi = std::max(hi, peer_hi);
  }
  return Status::OK();
}

// Maps the group's shared-memory segment when every rank of it is on this node (else leaves
// shm_ null and the ring serves). Collective over comm_; see ShmAllReduce for the layout's use.
Status MpiCommunicator::SetUpShm() {
  if (options_.shm_allreduce_min_ranks == 0 || size_ < 2 || size_ < options_.shm_allreduce_min_ranks)
    return Status::OK();
  // Blocking collectives without a deadline, like the MPI_Comm_split or MPI_Comm_dup that
  // made the communicator just before (Create runs on every rank of it).
  ASSIGN_OR_RETURN(auto guard, MpiCallGuard::Acquire("shared-memory set-up"));
  MPI_Comm node;
  int rc = MPI_Comm_split_type(comm_, MPI_COMM_TYPE_SHARED, rank_, MPI_INFO_NULL, &node);
  if (rc != MPI_SUCCESS) return InternalError("MPI_Comm_split_type failed: " + MpiErrorString(rc));
  int node_size = 0;
  MPI_Comm_size(node, &node_size);
  MPI_Comm_free(&node);
  // Every rank sees the same answer: either all ranks share this node or none has all.
  if (node_size != size_) return Status::OK();

  auto shm = std::make_unique<Shm>();
  shm->slot_bytes = options_.shm_slot_bytes / 64 * 64;
  const int64_t counters_bytes = int64_t{64} * size_;
  shm->map_bytes = static_cast<size_t>(counters_bytes + 2 * (size_ + 1) * shm->slot_bytes);
  // Rank 0 creates the segment (its pages allocated now, so a full /dev/shm is an error here
  // rather than a SIGBUS later) and sends its name; a failure anywhere means no segment.
  static std::atomic<int> created{0};
  char name[64] = {0};
  std::string why;
  if (rank_ == 0) {
    std::snprintf(name, sizeof name, "/vlorch-%d-%d-%s", static_cast<int>(getpid()), created++, name_.substr(0, 16).c_str());
    for (char* c = name + 1; *c; ++c)
      if (*c == '/') *c = '_';
    int fd = shm_open(name, O_CREAT | O_EXCL | O_RDWR, 0600);
    int err = fd < 0 ? errno : 0;
    if (err == 0 && ftruncate(fd, static_cast<off_t>(shm->map_bytes)) != 0) err = errno;
    if (err == 0) err = posix_fallocate(fd, 0, static_cast<off_t>(shm->map_bytes));  // returns the error
    if (err != 0) {
      why = fmt::format("creating {} ({} bytes): {}", name, shm->map_bytes, std::strerror(err));
      if (fd >= 0) close(fd), shm_unlink(name);
      name[0] = 0;
    } else {
      close(fd);
    }
  }
  MPI_Bcast(name, sizeof name, MPI_CHAR, 0, comm_);
  int ok = 0;
  if (name[0] != 0) {
    int fd = shm_open(name, O_RDWR, 0600);
    if (fd >= 0) {
      shm->map = mmap(nullptr, shm->map_bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
      close(fd);
    }
    ok = shm->map != MAP_FAILED;
    if (!ok) why = fmt::format("mapping {}: {}", name, std::strerror(errno));
  }
  int all_ok = 0;
  MPI_Allreduce(&ok, &all_ok, 1, MPI_INT, MPI_MIN, comm_);
  if (rank_ == 0 && name[0] != 0) shm_unlink(name);  // every rank has it mapped (or gave up)
  if (!all_ok) {
    if (!why.empty())
      VLOG_WARNING("group '{}': no shared-memory all-reduce ({}); using the ring", name_, why);
    return Status::OK();
  }
  shm->counters = static_cast<uint64_t*>(shm->map);  // zero: a new segment reads as zeros
  shm->data = static_cast<char*>(shm->map) + counters_bytes;
  shm_ = std::move(shm);
  return Status::OK();
}

Status MpiCommunicator::ShmSync(const char* what, std::chrono::steady_clock::time_point begin) {
  const uint64_t gen = ++shm_gen_;
  __atomic_store_n(&shm_->counters[rank_ * Shm::kCounterStride], gen, __ATOMIC_RELEASE);
  int spins = 0;
  for (int j = 0; j < size_; ++j) {
    while (__atomic_load_n(&shm_->counters[j * Shm::kCounterStride], __ATOMIC_ACQUIRE) < gen) {
      if (IdleOrTimedOut(what, &spins, begin))
        return CallTimedOut(CallName(what) + fmt::format(" (waiting for rank {} in shared memory)", j), options_.timeout);
    }
  }
  return Status::OK();
}

// Shared-memory all-reduce for a group whose ranks share one node. Per chunk of up to
// slot_bytes: every rank copies its part of the tensor into its slot; barrier; rank r reduces
// slice r of the chunk (elements [len r / n, len (r + 1) / n)) over all slots, in rank order,
// into the result slot; barrier; every rank copies the whole result out. Each element is
// reduced once, in the same order, so all ranks end bitwise identical. Two barriers per chunk
// instead of the ring's 2 (n - 1) hand-offs, and a chunk stays in cache from copy-in to
// copy-out (ops/bench/allreduce: 256 KiB slots beat 4 MiB ones by 1.3-2x at np = 4).
// Chunks alternate between two slot sets, so a chunk's copy-in never overwrites what a
// slower rank is still reading of the chunk before: by the time a rank reuses a set, it has
// passed a barrier that every rank reaches only after finishing the chunk that used it.
Status MpiCommunicator::ShmAllReduce(at::Tensor& flat, ReduceOp op) {
  const char* what = "allreduce";
  const auto begin = std::chrono::steady_clock::now();
  const int n = size_;
  const int64_t item = flat.element_size(), total = flat.numel();
  const int64_t cap = shm_->slot_bytes / item;
  char* mine = static_cast<char*>(flat.data_ptr());
  const at::TensorOptions opts = flat.options();
  for (int64_t off = 0; off < total; off += cap) {
    const int64_t len = std::min(cap, total - off);
    const uint64_t set = shm_gen_ / 2;  // two barriers per chunk: consecutive chunks alternate sets
    std::memcpy(shm_->Slot(set, rank_, n), mine + off * item, static_cast<size_t>(len * item));
    RETURN_IF_ERROR(ShmSync(what, begin));
    const int64_t s0 = len * rank_ / n, s1 = len * (rank_ + 1) / n;
    if (s1 > s0) {
      auto slice = [&](int j) { return at::from_blob(shm_->Slot(set, j, n) + s0 * item, {s1 - s0}, opts); };
      at::Tensor out = slice(n);  // the result slot
      ReduceTo(out, slice(0), slice(1), op);
      for (int j = 2; j < n; ++j) ReduceInto(out, slice(j), op);
    }
    RETURN_IF_ERROR(ShmSync(what, begin));
    std::memcpy(mine + off * item, shm_->Slot(set, n, n), static_cast<size_t>(len * item));
  }
  return Status::OK();
}

Status MpiCommunicator::AllReduce(at::Tensor& t, ReduceOp op) {
  RETURN_IF_ERROR(CheckCollectiveTensor(*this, "allreduce", t, /*want_cuda=*/false));
  RETURN_IF_ERROR(Begin("allreduce"));
  TracedCollective traced(name_, "allreduce", seq_, size_);
  if (size_ > 1 && static_cast<int64_t>(t.nbytes()) / size_ >= options_.ring_min_chunk_bytes) {
    at::Tensor flat = t.view({-1});
    const bool power_of_two = (size_ & (size_ - 1)) == 0;
    if (shm_) RETURN_IF_ERROR(ShmAllReduce(flat, op));
    else if (size_ >= 4 && power_of_two && static_cast<int64_t>(t.nbytes()) <= options_.halving_doubling_max_bytes)
      RETURN_IF_ERROR(HalvingDoublingAllReduce(flat, op));
    else RETURN_IF_ERROR(RingAllReduce(flat, op));
    if (op == ReduceOp::kAvg) DivideForAvg(t, size_);
    return Status::OK();
  }
  MPI_Datatype type = MpiType(t.scalar_type());
  MPI_Op mop = MpiOp(t.scalar_type(), op);
  // Large tensors go in chunks that fit MPI's int counts.
  constexpr int64_t kChunk = int64_t{1} << 30;
  char* base = static_cast<char*>(t.data_ptr());
  const int64_t item = t.element_size();
  const int64_t chunks = std::max<int64_t>(1, (t.numel() + kChunk - 1) / kChunk);
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t off = c * kChunk;
    const int count = static_cast<int>(std::min<int64_t>(kChunk, t.numel() - off));
    RETURN_IF_ERROR(Run("allreduce", {t}, [&](MPI_Request* r) {
      return MPI_Iallreduce(MPI_IN_PLACE, base + off * item, count, type, mop, comm_, r);
    }));
  }
  if (op == ReduceOp::kAvg) DivideForAvg(t, size_);
  return Status::OK();
}

Status MpiCommunicator::AllGather(const at::Tensor& in, at::Tensor& out) {
  RETURN_IF_ERROR(CheckAllGather(*this, in, out, /*want_cuda=*/false));
  RETURN_IF_ERROR(CountFits("allgather", name_, out.numel()));
  RETURN_IF_ERROR(Begin("allgather"));
  TracedCollective traced(name_, "allgather", seq_, size_);
  MPI_Datatype type = MpiType(in.scalar_type());
  int n = static_cast<int>(in.numel());
  return Run("allgather", {in, out}, [&](MPI_Request* r) {
    return MPI_Iallgather(in.data_ptr(), n, type, out.data_ptr(), n, type, comm_, r);
  });
}

Status MpiCommunicator::ReduceScatter(const at::Tensor& in, at::Tensor& out, ReduceOp op) {
  RETURN_IF_ERROR(CheckReduceScatter(*this, in, out, /*want_cuda=*/false));
  RETURN_IF_ERROR(CountFits("reducescatter", name_, in.numel()));
  RETURN_IF_ERROR(Begin("reducescatter"));
  TracedCollective traced(name_, "reducescatter", seq_, size_);
  MPI_Datatype type = MpiType(in.scalar_type());
  MPI_Op mop = MpiOp(in.scalar_type(), op);
  int n = static_cast<int>(out.numel());
  RETURN_IF_ERROR(Run("reducescatter", {in, out}, [&](MPI_Request* r) {
    return MPI_Ireduce_scatter_block(in.data_ptr(), out.data_ptr(), n, type, mop, comm_, r);
  }));
  if (op == ReduceOp::kAvg) DivideForAvg(out, size_);
  return Status::OK();
}

Status MpiCommunicator::AllToAll(const at::Tensor& in, const std::vector<int64_t>& send_rows,
                                 at::Tensor& out, const std::vector<int64_t>& recv_rows) {
  ASSIGN_OR_RETURN(const int64_t row, CheckAllToAll(*this, in, send_rows, out, recv_rows, /*want_cuda=*/false));
  std::vector<int> sc(size_), sd(size_), rc(size_), rd(size_);
  int64_t s_total = 0, r_total = 0;
  for (int p = 0; p < size_; ++p) {
    RETURN_IF_ERROR(CountFits("alltoall", name_, (s_total + send_rows[p]) * row));
    RETURN_IF_ERROR(CountFits("alltoall", name_, (r_total + recv_rows[p]) * row));
    sc[p] = static_cast<int>(send_rows[p] * row);
    sd[p] = static_cast<int>(s_total * row);
    rc[p] = static_cast<int>(recv_rows[p] * row);
    rd[p] = static_cast<int>(r_total * row);
    s_total += send_rows[p];
    r_total += recv_rows[p];
  }
  RETURN_IF_ERROR(Begin("alltoall"));
  TracedCollective traced(name_, "alltoall", seq_, size_);
  MPI_Datatype type = MpiType(in.scalar_type());
  return Run("alltoall", {in, out}, [&](MPI_Request* r) {
    return MPI_Ialltoallv(in.data_ptr(), sc.data(), sd.data(), type, out.data_ptr(), rc.data(),
                          rd.data(), type, comm_, r);
  });
}

Status MpiCommunicator::Broadcast(at::Tensor& t, int root) {
  RETURN_IF_ERROR(CheckCollectiveTensor(*this, "broadcast", t, false));
  RETURN_IF_ERROR(CheckBroadcastRoot(*this, root));
  RETURN_IF_ERROR(CountFits("broadcast", name_, t.numel()));
  RETURN_IF_ERROR(Begin("broadcast"));
  TracedCollective traced(name_, "broadcast", seq_, size_);
  MPI_Datatype type = MpiType(t.scalar_type());
  int n = static_cast<int>(t.numel());
  return Run("broadcast", {t}, [&](MPI_Request* r) {
    return MPI_Ibcast(t.data_ptr(), n, type, root, comm_, r);
  });
}

Status MpiCommunicator::Send(const at::Tensor& t, int peer, int tag) {
  RETURN_IF_ERROR(CheckCollectiveTensor(*this, "send", t, false));
  RETURN_IF_ERROR(CheckPeer(*this, "send", peer));
  RETURN_IF_ERROR(CountFits("send", name_, t.numel()));
  RETURN_IF_ERROR(Begin("send"));
  TracedCollective traced(name_, "send", seq_, size_);
  MPI_Datatype type = MpiType(t.scalar_type());
  int n = static_cast<int>(t.numel());
  return Run("send", {t}, [&](MPI_Request* r) {
    return MPI_Isend(t.data_ptr(), n, type, peer, tag, comm_, r);
  });
}

Status MpiCommunicator::Recv(at::Tensor& t, int peer, int tag) {
  RETURN_IF_ERROR(CheckCollectiveTensor(*this, "recv", t, false));
  RETURN_IF_ERROR(CheckPeer(*this, "recv", peer));
  RETURN_IF_ERROR(CountFits("recv", name_, t.numel()));
  RETURN_IF_ERROR(Begin("recv"));
  TracedCollective traced(name_, "recv", seq_, size_);
  MPI_Datatype type = MpiType(t.scalar_type());
  int n = static_cast<int>(t.numel());
  MPI_Status st;
  Status s = Run(
      "recv", {t}, [&](MPI_Request* r) { return MPI_Irecv(t.data_ptr(), n, type, peer, tag, comm_, r); },
      &st);
  if (s.code() == StatusCode::kInternal && s.message().find("TRUNCATE") != std::string::npos)
    return InvalidArgumentError(fmt::format(
        "recv #{} on group '{}': rank {} sent more than the {} elements this tensor holds", seq_,
        name_, peer, n));
  RETURN_IF_ERROR(s);
  int got = 0;
  MPI_Get_count(&st, type, &got);
  if (got != n)
    return InvalidArgumentError(fmt::format(
        "recv #{} on group '{}': rank {} sent {} elements but this tensor holds {}", seq_, name_,
        peer, got, n));
  return Status::OK();
}

Status MpiCommunicator::Barrier() {
  RETURN_IF_ERROR(Begin("barrier"));
  TracedCollective traced(name_, "barrier", seq_, size_);
  return Run("barrier", {}, [&](MPI_Request* r) { return MPI_Ibarrier(comm_, r); });
}

}  // namespace vlorch::comm
