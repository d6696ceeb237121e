// Every collective of the Communicator interface, on every backend that can run here, for
// every dtype, at sizes 0, 1, odd, not divisible by the world, and large. Runs under mpirun
// at np = 1..4. Values are small integers, so every result is exact even in bf16/f16 and
// is compared for equality.
#include <functional>
#include <memory>

#include <gtest/gtest.h>

#include "tests/worker/comm/mpi_test_env.h"
#include "worker/comm/mpi_communicator.h"
#include "worker/comm/mpi_runtime.h"
#include "worker/comm/nccl_communicator.h"

namespace vlorch::testing {

namespace {
std::unique_ptr<comm::Communicator> g_mpi_world;
std::unique_ptr<comm::Communicator> g_nccl_world;
bool g_nccl_tried = false;
}  // namespace

comm::Communicator* WorldComm(comm::CommBackend backend) {
  comm::CommOptions opts;
  opts.timeout = kTestTimeout;
  if (backend == comm::CommBackend::kMpi) {
    if (!g_mpi_world) {
      MPI_Comm dup;
      MPI_Comm_dup(MPI_COMM_WORLD, &dup);
      g_mpi_world = std::move(comm::MpiCommunicator::Create(dup, "world", opts)).value();
    }
    return g_mpi_world.get();
  }
  if (!g_nccl_tried) {
    g_nccl_tried = true;
    if (comm::NcclUsable()) {
      auto c = comm::CreateNcclCommunicator(MPI_COMM_WORLD, "world", opts);
      if (c.ok()) g_nccl_world = std::move(c).value();
      else ADD_FAILURE() << c.status().ToString();
    }
  }
  return g_nccl_world.get();
}

at::Device DeviceFor(comm::CommBackend backend) {
  return backend == comm::CommBackend::kNccl ? at::Device(at::kCUDA) : at::Device(at::kCPU);
}

void ReleaseTestCommunicators() {
  g_nccl_world.reset();
  g_mpi_world.reset();
}

namespace {

using comm::CommBackend;
using comm::ReduceOp;

const int64_t kSizes[] = {0, 1, 7, 1000, 65537};

struct Param {
  CommBackend backend;
  at::ScalarType dtype;
};

std::string ParamName(const ::testing::TestParamInfo<Param>& info) {
  return std::string(comm::CommBackendName(info.param.backend)) + "_" +
         c10::toString(info.param.dtype);
}

class CollectivesTest : public ::testing::TestWithParam<Param> {
 protected:
  void SetUp() override {
    c_ = WorldComm(GetParam().backend);
    if (c_ == nullptr) GTEST_SKIP() << "nccl backend needs a GPU and a CUDA LibTorch";
    rank_ = c_->rank();
    n_ = c_->size();
  }

  // A tensor of `count` elements with value fn(i), on the backend's device.
  at::Tensor Make(int64_t count, const std::function<double(int64_t)>& fn) const {
    std::vector<double> v(count);
    for (int64_t i = 0; i < count; ++i) v[i] = fn(i);
    return at::tensor(v, at::kDouble).reshape({count}).to(GetParam().dtype).to(DeviceFor(GetParam().backend));
  }

  static void ExpectEqual(const at::Tensor& got, const at::Tensor& want, const std::string& what) {
    at::Tensor g = got.to(at::kCPU).to(at::kDouble).reshape({-1});
    at::Tensor w = want.to(at::kCPU).to(at::kDouble).reshape({-1});
    ASSERT_EQ(g.numel(), w.numel()) << what;
    if (g.numel() == 0) return;
    at::Tensor diff = (g != w).nonzero();
    if (diff.size(0) > 0) {
      int64_t i = diff[0][0].item<int64_t>();
      FAIL() << what << ": element " << i << " is " << g[i].item<double>() << ", expected "
             << w[i].item<double>() << " (" << diff.size(0) << " elements differ)";
    }
  }

  comm::Communicator* c_ = nullptr;
  int rank_ = 0;
  int n_ = 1;
};

TEST_P(CollectivesTest, AllReduceSum) {
  for (int64_t count : kSizes) {
    at::Tensor t = Make(count, [&](int64_t i) { return (rank_ + 1) + i % 5; });
    ASSERT_TRUE(c_->AllReduce(t, ReduceOp::kSum).ok());
    ExpectEqual(t, Make(count, [&](int64_t i) { return n_ * (n_ + 1) / 2.0 + n_ * (i % 5); }),
                "allreduce sum, count " + std::to_string(count));
  }
}

TEST_P(CollectivesTest, AllReduceMax) {
  for (int64_t count : kSizes) {
    auto v = [](int r, int64_t i) { return static_cast<double>((i * 7 + r * 3) % 11); };
    at::Tensor t = Make(count, [&](int64_t i) { return v(rank_, i); });
    ASSERT_TRUE(c_->AllReduce(t, ReduceOp::kMax).ok());
    ExpectEqual(t, Make(count, [&](int64_t i) {
                  double m = v(0, i);
                  for (int r = 1; r < n_; ++r) m = std::max(m, v(r, i));
                  return m;
                }),
                "allreduce max, count " + std::to_string(count));
  }
}

TEST_P(CollectivesTest, AllReduceAvg) {
  const bool integer = GetParam().dtype == at::kLong;
  for (int64_t count : kSizes) {
    // Integers: negative values whose sum does not divide by n, to pin truncation toward 0.
    auto v = [&](int r, int64_t i) { return integer ? -(r + 1.0) - (i % 4) : 2.0 * (r + 1) + (i % 4); };
    at::Tensor t = Make(count, [&](int64_t i) { return v(rank_, i); });
    ASSERT_TRUE(c_->AllReduce(t, ReduceOp::kAvg).ok());
    ExpectEqual(t, Make(count, [&](int64_t i) {
                  double sum = 0;
                  for (int r = 0; r < n_; ++r) sum += v(r, i);
                  return integer ? static_cast<double>(static_cast<int64_t>(sum) / n_) : sum / n_;
                }),
                "allreduce avg, count " + std::to_string(count));
  }
}

TEST_P(CollectivesTest, AllGather) {
  for (int64_t count : kSizes) {
    at::Tensor in = Make(count, [&](int64_t i) { return rank_ * 8 + i % 8; });
    at::Tensor out = Make(count * n_, [](int64_t) { return -1; });
    ASSERT_TRUE(c_->AllGather(in, out).ok());
    ExpectEqual(out, Make(count * n_, [&](int64_t j) { return (j / std::max<int64_t>(count, 1)) * 8 + (j % std::max<int64_t>(count, 1)) % 8; }),
                "allgather, count " + std::to_string(count));
  }
}

TEST_P(CollectivesTest, ReduceScatter) {
  for (int64_t chunk : {int64_t{0}, int64_t{1}, int64_t{7}, int64_t{1000}}) {
    for (ReduceOp op : {ReduceOp::kSum, ReduceOp::kMax}) {
      auto v = [](int r, int64_t j) { return static_cast<double>((r + j) % 8); };
      at::Tensor in = Make(chunk * n_, [&](int64_t j) { return v(rank_, j); });
      at::Tensor out = Make(chunk, [](int64_t) { return -1; });
      ASSERT_TRUE(c_->ReduceScatter(in, out, op).ok());
      ExpectEqual(out, Make(chunk, [&](int64_t k) {
                    int64_t j = rank_ * chunk + k;
                    double acc = v(0, j);
                    for (int r = 1; r < n_; ++r) acc = op == ReduceOp::kSum ? acc + v(r, j) : std::max(acc, v(r, j));
                    return acc;
                  }),
                  std::string("reducescatter ") + comm::ReduceOpName(op) + ", chunk " + std::to_string(chunk));
    }
  }
}

// Uneven splits including zero-length parts: rank q sends (q + 2p + shift) % 3 rows of width
// 3 to rank p; a value encodes (source, destination, row, column).
TEST_P(CollectivesTest, AllToAllUneven) {
  const int64_t width = 3;
  auto value = [](int src, int dst, int64_t row, int64_t col) {
    return static_cast<double>(src * 4 + dst + col * 16 + row * 64);
  };
  for (int shift : {0, 1, 2}) {
    auto rows = [&](int src, int dst) { return static_cast<int64_t>((src + 2 * dst + shift) % 3); };
    std::vector<int64_t> send(n_), recv(n_);
    std::vector<double> in_v, want_v;
    for (int p = 0; p < n_; ++p) {
      send[p] = rows(rank_, p);
      recv[p] = rows(p, rank_);
      for (int64_t k = 0; k < send[p]; ++k)
        for (int64_t col = 0; col < width; ++col) in_v.push_back(value(rank_, p, k, col));
      for (int64_t k = 0; k < recv[p]; ++k)
        for (int64_t col = 0; col < width; ++col) want_v.push_back(value(p, rank_, k, col));
    }
    auto dev = [&](const std::vector<double>& v) {
      return at::tensor(v, at::kDouble).reshape({-1, width}).to(GetParam().dtype).to(DeviceFor(GetParam().backend));
    };
    at::Tensor in = dev(in_v);
    at::Tensor out = at::full({static_cast<int64_t>(want_v.size()) / width, width}, -1,
                              in.options());
    ASSERT_TRUE(c_->AllToAll(in, send, out, recv).ok());
    ExpectEqual(out, dev(want_v), "alltoall shift " + std::to_string(shift));
  }
  // Everyone sends nothing.
  at::Tensor empty_in = at::empty({0, width}, at::TensorOptions().dtype(GetParam().dtype).device(DeviceFor(GetParam().backend)));
  at::Tensor empty_out = at::empty({0, width}, empty_in.options());
  EXPECT_TRUE(c_->AllToAll(empty_in, std::vector<int64_t>(n_, 0), empty_out, std::vector<int64_t>(n_, 0)).ok());
}

TEST_P(CollectivesTest, BroadcastFromEveryRoot) {
  for (int root = 0; root < n_; ++root) {
    for (int64_t count : kSizes) {
      at::Tensor t = Make(count, [&](int64_t i) { return rank_ == root ? root * 10 + i % 10 : -1.0; });
      ASSERT_TRUE(c_->Broadcast(t, root).ok());
      ExpectEqual(t, Make(count, [&](int64_t i) { return root * 10 + i % 10; }),
                  "broadcast root " + std::to_string(root) + ", count " + std::to_string(count));
    }
  }
}

// A ring: even ranks send first, odd ranks receive first, so large messages cannot deadlock.
TEST_P(CollectivesTest, SendRecvRing) {
  if (n_ == 1) GTEST_SKIP() << "needs two ranks";
  const int next = (rank_ + 1) % n_, prev = (rank_ + n_ - 1) % n_;
  for (int64_t count : {int64_t{1}, int64_t{1000}, int64_t{1} << 18}) {
    at::Tensor out = Make(count, [&](int64_t i) { return rank_ + i % 16; });
    at::Tensor in = Make(count, [](int64_t) { return -1; });
    if (rank_ % 2 == 0) {
      ASSERT_TRUE(c_->Send(out, next, 7).ok());
      ASSERT_TRUE(c_->Recv(in, prev, 7).ok());
    } else {
      ASSERT_TRUE(c_->Recv(in, prev, 7).ok());
      ASSERT_TRUE(c_->Send(out, next, 7).ok());
    }
    ExpectEqual(in, Make(count, [&](int64_t i) { return prev + i % 16; }), "recv from " + std::to_string(prev));
  }
}

TEST_P(CollectivesTest, Barrier) {
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(c_->Barrier().ok());
}

// Argument errors are detected before any communication, so they fail on the calling rank
// alone and leave the communicator usable (the barrier afterwards proves it).
TEST_P(CollectivesTest, ArgumentErrorsNameTheCallAndGroup) {
  auto opts = at::TensorOptions().dtype(GetParam().dtype).device(DeviceFor(GetParam().backend));
  at::Tensor m = at::zeros({4, 3}, opts);
  at::Tensor t = m.t();
  Status s = c_->AllReduce(t, ReduceOp::kSum);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("allreduce on group 'world': tensor is not contiguous"), std::string::npos) << s.message();

  at::Tensor i32 = at::zeros({4}, opts.dtype(at::kInt));
  s = c_->AllReduce(i32, ReduceOp::kSum);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("dtype Int is not supported (use f32, bf16, f16 or i64)"), std::string::npos) << s.message();

  at::Tensor in = at::zeros({5}, opts), wrong = at::zeros({5 * n_ + 1}, opts);
  s = c_->AllGather(in, wrong);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("allgather on group 'world'"), std::string::npos);

  at::Tensor rs_out = at::zeros({5}, opts), rs_in = at::zeros({5 * n_ + 2}, opts);
  EXPECT_EQ(c_->ReduceScatter(rs_in, rs_out, ReduceOp::kSum).code(), StatusCode::kInvalidArgument);

  at::Tensor a2a = at::zeros({3, 2}, opts);
  std::vector<int64_t> counts(n_, 0);
  counts[0] = 2;  // sums to 2, tensor has 3 rows
  s = c_->AllToAll(a2a, counts, a2a, counts);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("send_rows sum to 2 but the input has 3 rows"), std::string::npos) << s.message();
  EXPECT_EQ(c_->AllToAll(a2a, std::vector<int64_t>(n_ + 1, 0), a2a, counts).code(), StatusCode::kInvalidArgument);

  at::Tensor b = at::zeros({2}, opts);
  s = c_->Broadcast(b, n_);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("root " + std::to_string(n_) + " is not a rank"), std::string::npos) << s.message();
  EXPECT_EQ(c_->Send(b, rank_, 0).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(c_->Recv(b, n_, 0).code(), StatusCode::kInvalidArgument);

  EXPECT_TRUE(c_->Barrier().ok());
}

std::vector<Param> AllParams() {
  std::vector<Param> out;
  for (CommBackend b : {CommBackend::kMpi, CommBackend::kNccl})
    for (at::ScalarType t : {at::kFloat, at::kBFloat16, at::kHalf, at::kLong}) out.push_back({b, t});
  return out;
}

INSTANTIATE_TEST_SUITE_P(Backends, CollectivesTest, ::testing::ValuesIn(AllParams()), ParamName);

// ---- MPI-only behaviour --------------------------------------------------------------------

comm::MpiCommunicator& MpiWorld() { return static_cast<comm::MpiCommunicator&>(*WorldComm(CommBackend::kMpi)); }

// A message of the wrong size is an error naming both sizes, not silent truncation/padding.
TEST(MpiCommunicatorTest, RecvOfWrongSizeIsAnError) {
  auto& c = MpiWorld();
  if (c.size() < 2) GTEST_SKIP() << "needs two ranks";
  if (c.rank() == 0) {
    ASSERT_TRUE(c.Send(at::ones({5}), 1, 11).ok());
    ASSERT_TRUE(c.Send(at::ones({3}), 1, 12).ok());
  } else if (c.rank() == 1) {
    at::Tensor small = at::zeros({4});
    Status s = c.Recv(small, 0, 11);
    EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << s.ToString();
    EXPECT_NE(s.message().find("more than the 4 elements"), std::string::npos) << s.message();
    at::Tensor big = at::zeros({4});
    s = c.Recv(big, 0, 12);
    EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << s.ToString();
    EXPECT_NE(s.message().find("sent 3 elements but this tensor holds 4"), std::string::npos) << s.message();
  }
  EXPECT_TRUE(c.Barrier().ok());
}

// Rank 0 enters an all-reduce that the others do not enter (yet): it must come back
// TimedOut within the deadline, naming the call and the group, and poison the communicator.
// The other ranks then enter it so that every MPI request completes before finalize.
// Ordered by messages, not sleeps: the late ranks wait on a world barrier that rank 0 joins
// only after its timeout.
TEST(MpiCommunicatorTest, CollectiveThatAPeerNeverEntersTimesOut) {
  auto& world = MpiWorld();
  if (world.size() < 2) GTEST_SKIP() << "needs two ranks";
  comm::CommOptions fast;
  fast.timeout = std::chrono::milliseconds(300);
  comm::CommOptions slow;
  slow.timeout = kTestTimeout;
  auto probe = world.Duplicate("probe", world.rank() == 0 ? fast : slow);
  ASSERT_TRUE(probe.ok());
  at::Tensor t = at::ones({1024});
  if (world.rank() == 0) {
    auto t0 = std::chrono::steady_clock::now();
    Status s = (*probe)->AllReduce(t, ReduceOp::kSum);
    double waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    EXPECT_EQ(s.code(), StatusCode::kTimedOut) << s.ToString();
    EXPECT_NE(s.message().find("allreduce #1 on group 'probe' (rank 0 of " + std::to_string(world.size())),
              std::string::npos) << s.message();
    EXPECT_NE(s.message().find("did not complete within 0.3 s"), std::string::npos) << s.message();
    EXPECT_GE(waited, 0.3);
    Status after = (*probe)->Barrier();
    EXPECT_EQ(after.code(), StatusCode::kFailedPrecondition);
    EXPECT_NE(after.message().find("unusable since allreduce #1 timed out"), std::string::npos) << after.message();
    ASSERT_TRUE(world.Barrier().ok());  // releases the late ranks
  } else {
    ASSERT_TRUE(world.Barrier().ok());
    ASSERT_TRUE((*probe)->AllReduce(t, ReduceOp::kSum).ok());  // completes rank 0's request
  }
  ASSERT_TRUE(world.Barrier().ok());
}

// The large-tensor all-reduces (the ring; recursive halving/doubling, which power-of-two
// groups of 4 or more use; the shared-memory one of groups on one node) forced onto small
// tensors with 1 KiB segments and 4 KiB shared-memory slots, so blocks are uneven, span
// several segments or chunks, and can be shorter than a segment or empty. Besides the values,
// every rank must end with bitwise the same tensor.
TEST(MpiCommunicatorTest, RingAllReduceIsExactAndIdenticalOnEveryRank) {
  auto& world = MpiWorld();
  const int n = world.size(), r = world.rank();
  for (const char* algorithm : {"ring", "halving-doubling", "shared-memory"}) {
    const std::string a = algorithm;
    comm::CommOptions ring;
    ring.timeout = kTestTimeout;
    ring.ring_min_chunk_bytes = 0;
    ring.ring_segment_bytes = 1024;
    ring.halving_doubling_max_bytes = a == "halving-doubling" ? int64_t{1} << 40 : 0;
    ring.shm_allreduce_min_ranks = a == "shared-memory" ? 2 : 0;
    ring.shm_slot_bytes = 4096;
    auto c = world.Duplicate(algorithm, ring);
    ASSERT_TRUE(c.ok());
    // All ranks of these tests run on one machine.
    EXPECT_EQ((*c)->shared_memory(), a == "shared-memory" && n > 1) << algorithm;
    for (at::ScalarType t : {at::kFloat, at::kBFloat16, at::kHalf, at::kLong}) {
      for (int64_t count : {int64_t{1}, int64_t{3}, int64_t{7}, int64_t{1000}, int64_t{65537}}) {
        for (ReduceOp op : {ReduceOp::kSum, ReduceOp::kMax, ReduceOp::kAvg}) {
          at::Tensor idx = at::arange(count, at::kDouble);
          at::Tensor x = (idx.fmod(5) + (r + 1) * ((idx.fmod(3)) + 1)).to(t);
          at::Tensor want = at::zeros({count}, at::kDouble);
          for (int q = 0; q < n; ++q) {
            at::Tensor v = idx.fmod(5) + (q + 1) * ((idx.fmod(3)) + 1);
            want = op == ReduceOp::kMax ? (q == 0 ? v : at::maximum(want, v)) : want + v;
          }
          if (op == ReduceOp::kAvg) want = t == at::kLong ? at::div(want, n, "trunc") : want / n;
          ASSERT_TRUE((*c)->AllReduce(x, op).ok());
          std::string what = a + " " + c10::toString(t) + " " + comm::ReduceOpName(op) + " count " +
                             std::to_string(count);
          if (op == ReduceOp::kAvg && t != at::kLong && t != at::kFloat) {
            // bf16/f16 averages round the quotient; compare against the rounded expectation.
            want = want.to(t).to(at::kDouble);
          }
          ASSERT_TRUE(at::equal(x.to(at::kDouble), want)) << what;
          at::Tensor all = at::empty({n * count}, x.options());
          ASSERT_TRUE((*c)->AllGather(x, all).ok());
          for (int q = 0; q < n; ++q) ASSERT_TRUE(at::equal(all.narrow(0, q * count, count), x)) << what;
        }
      }
    }
  }
}

// A peer that never enters a shared-memory all-reduce: TimedOut naming the call and the rank
// waited for, and tearing the communicator down afterwards is local (a collective free
// would hang the ranks that did not time out).
TEST(MpiCommunicatorTest, SharedMemoryAllReduceThatAPeerNeverEntersTimesOut) {
  auto& world = MpiWorld();
  if (world.size() < 2) GTEST_SKIP() << "needs two ranks";
  comm::CommOptions o;
  o.timeout = world.rank() == 0 ? std::chrono::milliseconds(300) : kTestTimeout;
  o.shm_allreduce_min_ranks = 2;
  o.ring_min_chunk_bytes = 0;
  {
    auto probe = world.Duplicate("shm-probe", o);
    ASSERT_TRUE(probe.ok());
    ASSERT_TRUE((*probe)->shared_memory());
    if (world.rank() == 0) {
      at::Tensor t = at::ones({100000});
      Status s = (*probe)->AllReduce(t, ReduceOp::kSum);
      EXPECT_EQ(s.code(), StatusCode::kTimedOut) << s.ToString();
      EXPECT_NE(s.message().find("allreduce #1 on group 'shm-probe' (rank 0 of"), std::string::npos) << s.message();
      EXPECT_NE(s.message().find("waiting for rank 1 in shared memory"), std::string::npos) << s.message();
      EXPECT_EQ((*probe)->Barrier().code(), StatusCode::kFailedPrecondition);
    }
  }
  ASSERT_TRUE(world.Barrier().ok());
}

TEST(MpiCommunicatorTest, ThreadLevelIsHonoured) {
  // The test main asks for SERIALIZED; calls from another thread must then work.
  ASSERT_GE(comm::MpiSession::Get()->provided(), comm::MpiThreadLevel::kSerialized);
  auto& c = MpiWorld();
  Status s;
  at::Tensor t = at::ones({16});
  std::thread th([&] { s = c.AllReduce(t, ReduceOp::kSum); });
  th.join();
  ASSERT_TRUE(s.ok()) << s.ToString();
  EXPECT_EQ(t[0].item<float>(), static_cast<float>(c.size()));
}

}  // namespace
}  // namespace vlorch::testing
