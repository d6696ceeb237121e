// Committed checkpoints (docs/checkpoints.md).
//
// One checkpoint is one directory `<dir>/step-NNNNNNNN/`:
//   model.safetensors      every parameter, Hugging Face names
//   optimizer.safetensors  "<param>.exp_avg" / "<param>.exp_avg_sq"; metadata "steps"
//   trainer_state.json     step, data cursor, RNG state, schedule position, layout, counters
//   manifest.json          written last: format, stage, step, and every file's size and CRC32C
//
// Commit protocol (LevelDB's SetCurrentFile, per directory):
//   1. write every file into `<dir>/.tmp-step-NNNNNNNN/`, fsync each
//   2. write manifest.json there, fsync it, fsync the directory
//   3. only when step-NNNNNNNN already exists (a re-save of a committed step): rename it to
//      `.replaced-step-NNNNNNNN`
//   4. rename the temporary directory to `step-NNNNNNNN`, fsync `<dir>`
//   5. write `latest.tmp` naming it, fsync, rename to `latest`, fsync `<dir>`
//   6. delete `.replaced-step-NNNNNNNN`, and committed checkpoints beyond the newest `keep`
// Before 1, the free space under <dir> is checked against the payload's size: too little is
// a ResourceExhausted error naming the directory, the bytes needed and the bytes free, with
// nothing written; a write that fails for space later removes its .tmp directory and returns
// the same kind of error. Committed checkpoints are untouched either way.
// A crash before 3 leaves a .tmp directory that the next CheckpointManager removes, and the
// committed checkpoints as they were. A crash between 3 and 4 leaves step N only as
// .replaced-step-N: the next Open renames it back before anything reads the directory. A
// crash after 4 leaves a complete checkpoint that FindLatest verifies and uses even if
// `latest` still names the previous one. So the committed step-N of a re-save stays whole
// until its replacement is complete, and at every instant step N or the previous commit is
// there to resume from (VLORCH_FAULT points: during=checkpoint-write after model.safetensors,
// during=checkpoint-replace between 3 and 4).
//
// One writer per directory: the caller holds the run directory's RunDirLock
// (worker/checkpoint/run_dir_lock.h), so no other process's Open removes this one's saves.
//
// Asynchronous saves: Save() copies the tensors to host memory (the only cost the training
// step pays) and a background thread does steps 1-6. A second Save() first waits for the
// previous one and reuses its host buffers. The bytes are those a synchronous save writes.
//
// Thread safety: one thread calls Save/Wait; the writer thread is internal.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <torch/torch.h>

#include "common/status.h"
#include "jobs/checkpoint_layout.h"

namespace vlorch::checkpoint {

using NamedTensors = std::vector<std::pair<std::string, torch::Tensor>>;

struct CheckpointPayload {
  NamedTensors model;
  NamedTensors optimizer;
  std::map<std::string, std::string> optimizer_metadata;
  std::string trainer_state_json;
};

struct CheckpointOptions {
  // Committed checkpoints kept; older ones are deleted after each commit. Default 3.
  int keep = 3;
  // Write in a background thread. Default true.
  bool async = true;
  // fsync files and directories (off only in benchmarks measuring the page cache). Default true.
  bool fsync = true;
  // Reported to VLORCH_FAULT kill points ("rank" key; `stage` is reported as "stage"). Default 0.
  int rank = 0;
  // Stage name written into the manifest.
  std::string stage;
  // Called after each commit (from the writer thread when async): step, checkpoint
  // directory. Default none.
  std::function<void(int64_t, const std::string&)> on_commit;
};

struct SaveStats {
  double snapshot_seconds = 0;  // paid by the training step
  double write_seconds = 0;     // background
  uint64_t bytes = 0;
};

class CheckpointManager {
 public:
  // `dir` is created if needed. What a crashed save left is cleaned up: .tmp-* directories
  // are removed, and a .replaced-step-N whose step-N is missing is renamed back.
  static StatusOr<std::unique_ptr<CheckpointManager>> Open(const std::string& dir, const CheckpointOptions& options);
  ~CheckpointManager();  // waits for a save in flight

  // Snapshots `payload` and commits it as step `step` (now, or in the background).
  Status Save(int64_t step, const CheckpointPayload& payload);
  // Waits for the save in flight; its result (OK when none).
  Status Wait();
  SaveStats last_stats();
  const std::string& dir() const { return dir_; }

 private:
  CheckpointManager(std::string dir, const CheckpointOptions& options) : dir_(std::move(dir)), options_(options) {}
  // Steps 0 (free space) to 6; removes the temporary directory of a failed write.
  Status Write(int64_t step, const CheckpointPayload& snapshot, SaveStats* stats);
  // Steps 1 to 6.
  Status WriteFiles(int64_t step, const CheckpointPayload& snapshot, SaveStats* stats);

  std::string dir_;
  CheckpointOptions options_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::thread writer_;
  bool busy_ = false;
  Status result_;
  SaveStats stats_;
  std::shared_ptr<CheckpointPayload> spare_;  // the last snapshot, reused by the next Save
};

// Reads a safetensors file of the checkpoint into host tensors (name order).
StatusOr<NamedTensors> ReadTensors(const std::string& file, std::map<std::string, std::string>* metadata);

}  // namespace vlorch::checkpoint
