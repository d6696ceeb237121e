// MpiSession: owns MPI_Init_thread/MPI_Finalize for the process and remembers the thread
// level MPI granted, so communicators can honour it:
//
//   MULTIPLE    any thread may call at any time
//   SERIALIZED  any thread, one at a time: communicators take a process-wide lock
//   FUNNELED / SINGLE  only the thread that initialised MPI: other threads get
//               FailedPrecondition instead of undefined behaviour
//
// Exactly one MpiSession may exist; it finalizes MPI when destroyed.
#pragma once

#include <memory>
#include <mutex>
#include <optional>
#include <thread>

#include "common/status.h"

namespace vlorch::comm {

enum class MpiThreadLevel { kSingle = 0, kFunneled = 1, kSerialized = 2, kMultiple = 3 };
const char* MpiThreadLevelName(MpiThreadLevel level);

class MpiSession {
 public:
  // Initialises MPI asking for `requested`; fails if MPI is already initialised by someone
  // else or initialisation fails. Also sets MPI_ERRORS_RETURN on MPI_COMM_WORLD.
  static StatusOr<std::unique_ptr<MpiSession>> Init(int* argc, char*** argv,
                                                    MpiThreadLevel requested);
  ~MpiSession();

  MpiThreadLevel provided() const { return provided_; }
  int world_rank() const { return world_rank_; }
  int world_size() const { return world_size_; }
  // Rank among the processes on this host (from MPI_COMM_TYPE_SHARED), for device choice.
  int local_rank() const { return local_rank_; }
  int local_size() const { return local_size_; }

  // The session, or nullptr before Init / after destruction.
  static MpiSession* Get();

 private:
  MpiSession() = default;
  MpiThreadLevel provided_ = MpiThreadLevel::kSingle;
  int world_rank_ = 0, world_size_ = 1, local_rank_ = 0, local_size_ = 1;
};

// Held around every MPI call made by a communicator. Returns FailedPrecondition when the
// granted thread level forbids a call from this thread.
class MpiCallGuard {
 public:
  static StatusOr<MpiCallGuard> Acquire(const char* what);
  MpiCallGuard(MpiCallGuard&&) = default;

 private:
  MpiCallGuard() = default;
  std::unique_lock<std::mutex> lock_;
};

// "MPI_ERR_TRUNCATE: message truncated" for an MPI error code.
std::string MpiErrorString(int code);

}  // namespace vlorch::comm
