// Runs one stage of a job on this rank: builds the model, restores or initialises it, trains
// with data parallelism over the mesh's dp group, checkpoints, and stops cleanly on SIGTERM.
//
// Run directory layout (docs/checkpoints.md):
//   <run_dir>/stages/<stage>/checkpoints/step-NNNNNNNN/   committed checkpoints (+ latest)
//   <run_dir>/stages/<stage>/metrics.jsonl                one line per logged step (rank 0)
//   <run_dir>/stages/<stage>/state.json                   {"status": "done", "checkpoint": ...}
//   <run_dir>/stages/<stage>/trace/rank-R.tsv             trained sample keys per step (opt-in)
//
// One optimizer step:
//   1. take grad_accum micro-batches from the pipeline; count their label tokens
//   2. all-reduce (label tokens, stop requested) over dp: the loss is normalised by the
//      global token count, so np = N with batch b trains exactly like np = 1 with batch N*b
//   3. forward + backward each micro-batch; the last one's backward feeds the GradReducer
//   4. clip by global norm, AdamW at the scheduled learning rate, zero gradients
//   5. all-reduce the loss for the log; checkpoint when due (or when a stop was requested)
//
// Determinism: with the same job, seed and world size, a run resumed from any checkpoint ends
// with the same bytes as an uninterrupted run (no dropout; data order from the cursor; the
// optimizer state and step restored exactly).
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>

#include "common/status.h"
#include "jobs/job_spec.h"
#include "jobs/checkpoint_layout.h"
#include "worker/checkpoint/run_dir_lock.h"
#include "worker/comm/device_mesh.h"

namespace vlorch::train {

struct StepReport {
  std::string stage;
  int64_t step = 0;
  int64_t total_steps = 0;
  double loss = 0;
  double samples_per_second = 0;
  double data_wait_seconds = 0;  // waiting for batches, cumulative in this process
};

struct StageRunOptions {
  // Overrides the spec's run_dir when not empty.
  std::string run_dir;
  // Write every trained sample's key to trace/rank-R.tsv. Default false.
  bool trace_samples = false;
  // Stop after this many optimizer steps of the stage have run in total, as if the stage
  // were that long (tests and benchmarks). 0: the stage's own length.
  int64_t max_steps = 0;
  // Reduce gradients during backward (default) or after it (benchmark baseline).
  bool overlap_grad_reduce = true;
  // Print a progress line every log_every steps on rank 0. Default true.
  bool print_progress = true;
  // Called on every rank after each optimizer step (the coordinator agent's progress).
  // Default none.
  std::function<void(const StepReport&)> on_step;
  // Called on the rank that writes checkpoints once one is committed, from the writer
  // thread: stage, step, checkpoint directory. Default none.
  std::function<void(const std::string&, int64_t, const std::string&)> on_checkpoint;
};


enum class StageOutcome { kDone, kAlreadyDone, kPreempted };

struct StageResult {
  StageOutcome outcome = StageOutcome::kDone;
  int64_t steps = 0;          // optimizer steps completed in total
  int64_t steps_run = 0;      // in this process
  double last_loss = 0;
  double mean_step_seconds = 0;       // over this process's steps after the first
  double mean_exposed_comm_seconds = 0;
  double mean_comm_seconds = 0;
  double mean_checkpoint_stall_seconds = 0;  // snapshot time per checkpointed step
  std::string checkpoint;     // the last committed checkpoint
};

// Installs the SIGTERM handler (idempotent). After it, SIGTERM makes the running stage finish
// its step, commit a checkpoint and return kPreempted.
void InstallPreemptionHandler();

// The newest committed checkpoint in `dir` that verifies (and passes `check`, when given), as
// rank 0 finds it (damaged ones skipped with a warning), broadcast so every rank loads the
// same one: its step, -1 if none.
StatusOr<int64_t> AgreedLatestCheckpoint(const std::string& dir, comm::DeviceMesh& mesh,
                                         const checkpoint::ContentCheck& check = nullptr);

// Collective: rank 0 takes the run directory's lock (worker/checkpoint/run_dir_lock.h) and
// every rank learns whether it could. The lock (held on rank 0 only; nullopt elsewhere), or
// FailedPrecondition on every rank when another writer holds it (rank 0's message names it).
StatusOr<std::optional<checkpoint::RunDirLock>> LockRunDir(const std::string& run_dir, const std::string& what,
                                                           comm::DeviceMesh& mesh);

// The checkpoint of `from_stage`'s seal, verified (manifest checksum and every file), for
// `stage` to start from. FailedPrecondition when from_stage is not sealed yet.
StatusOr<std::string> SealedCheckpoint(const std::string& run_dir, const std::string& stage,
                                       const std::string& from_stage);

// Runs a training stage, or a transform stage (worker/transforms/). Rank 0 holds the run
// directory's RunDirLock (worker/checkpoint/run_dir_lock.h) meanwhile: FailedPrecondition,
// naming the holder's pid and host, when another process writes the same run directory.
StatusOr<StageResult> RunStage(const JobSpec& job, const std::string& stage_name, comm::DeviceMesh& mesh,
                               const StageRunOptions& options);

}  // namespace vlorch::train
