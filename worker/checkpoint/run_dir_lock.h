// One writer per run directory (docs/checkpoints.md, "The run-directory lock").
//
// The process that writes a run directory — vlorch-worker's rank 0, which commits the
// checkpoints, seals the stages and appends the metrics — holds an exclusive flock(2) on
// `<run_dir>/lock` for as long as it may write. Without it two writers (an embedded and a
// daemon coordinator launching the same job, or a hand-started mpirun next to a supervised
// one) would share the directory, and each one's CheckpointManager::Open would delete the
// other's save in flight. The file says who holds it, for the error the second writer gets:
//
//   {"pid": 4242, "host": "node3", "started": "2025-01-01T10:00:00Z", "what": "job 'tiny'"}
//
// Protocol:
//   1. create the run directory and open (or create) `lock`; never delete or replace it
//   2. flock(LOCK_EX | LOCK_NB); EWOULDBLOCK: FailedPrecondition naming the holder's pid and
//      host (read from the file) and what to do
//   3. check that the locked file is still the one at `<run_dir>/lock` (someone may have
//      deleted it meanwhile); otherwise start again
//   4. truncate it and write this process's pid, host, start time and `what`
//   5. on release: truncate it, flock(LOCK_UN), close
//
// Stale locks recover by themselves: the kernel drops a flock when its holder dies, however
// it dies (kill -9, OOM, a crash), so the next writer takes it and overwrites the dead
// holder's text. Nobody needs to delete the file, and nobody should: deleting it while a
// writer runs lets a second writer lock a new file at the same name.
//
// Across hosts the lock is only as good as the file system's flock: local disks and NFSv4
// (Linux emulates flock with NFS byte-range locks) see one another's locks; NFS mounted with
// `local_lock=flock` or `nolock`, Lustre mounted with `localflock`, and some FUSE file systems
// keep flock local to each host, so two hosts can both "hold" it. A file system that refuses
// flock outright (ENOLCK, EOPNOTSUPP) makes Acquire fail rather than write unprotected.
//
// Within one process, Acquire of a directory the process already holds returns another
// handle on the same lock (the worker holds it across its stages and each stage acquires it
// again); the lock is released with the last handle. A forked child holds nothing.
//
// Thread safety: Acquire and ~RunDirLock may be called from any thread.
#pragma once

#include <memory>
#include <string>

#include "common/status.h"

namespace vlorch::checkpoint {

inline constexpr const char* kRunDirLockFile = "lock";

class RunDirLock {
 public:
  // Takes the lock of `run_dir` (created if missing), writing `what` ("job 'tiny'") into the
  // file. FailedPrecondition when another process holds it, naming its pid and host.
  static StatusOr<RunDirLock> Acquire(const std::string& run_dir, const std::string& what);

  RunDirLock(RunDirLock&&) = default;
  RunDirLock& operator=(RunDirLock&&) = default;
  ~RunDirLock();

  // `<run_dir>/lock`.
  const std::string& path() const;

  struct Held;  // one per locked file in this process

 private:
  explicit RunDirLock(std::shared_ptr<Held> held) : held_(std::move(held)) {}
  std::shared_ptr<Held> held_;
};

}  // namespace vlorch::checkpoint
