// main() for test binaries that run under mpirun: every rank runs every test; rank 0 prints
// the usual gtest output, other ranks print only their failures (prefixed with the rank),
// and the exit code is non-zero on every rank if any rank failed.
#include <mpi.h>

#include <cstdio>

#include <gtest/gtest.h>

#include "common/logging.h"
#include "tests/worker/comm/mpi_test_env.h"
#include "worker/comm/mpi_runtime.h"

namespace {

class RankFailurePrinter : public ::testing::EmptyTestEventListener {
 public:
  explicit RankFailurePrinter(int rank) : rank_(rank) {}
  void OnTestPartResult(const ::testing::TestPartResult& r) override {
    if (!r.failed()) return;
    std::fprintf(stderr, "[rank %d] %s:%d: Failure\n%s\n", rank_, r.file_name() ? r.file_name() : "?",
                 r.line_number(), r.summary());
  }
  void OnTestEnd(const ::testing::TestInfo& info) override {
    if (info.result()->Failed())
      std::fprintf(stderr, "[rank %d] FAILED %s.%s\n", rank_, info.test_suite_name(), info.name());
  }

 private:
  int rank_;
};

}  // namespace

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  auto session = vlorch::comm::MpiSession::Init(&argc, &argv, vlorch::comm::MpiThreadLevel::kSerialized);
  if (!session.ok()) {
    std::fprintf(stderr, "%s\n", session.status().ToString().c_str());
    return 1;
  }
  const int rank = (*session)->world_rank();
  vlorch::LogOptions log;
  log.rank = rank;
  vlorch::InitLogging(log);
  if (rank != 0) {
    auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
    listeners.Append(new RankFailurePrinter(rank));
  }
  int failed = RUN_ALL_TESTS() != 0 ? 1 : 0;
  vlorch::testing::ReleaseTestCommunicators();
  int any_failed = failed;
  MPI_Allreduce(&failed, &any_failed, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  if (rank == 0)
    std::printf("[mpi] %d ranks: %s\n", (*session)->world_size(),
                any_failed ? "at least one rank FAILED" : "every rank passed");
  session->reset();
  return any_failed;
}
