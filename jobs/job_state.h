// Where a job stands, read from its run directory alone, so that `vlorch-worker` without a
// coordinator, the coordinator and `vlorch job status` agree on where to resume.
//
//   <run_dir>/stages/<stage>/state.json        the stage's seal (written once, atomically)
//   <run_dir>/stages/<stage>/checkpoints/      committed checkpoints; `latest` names the newest
//   <run_dir>/stages/<stage>/preempted.json    the last stop by SIGTERM (see PreemptionRecord)
//
// A stage is sealed when its final checkpoint is committed and state.json records it with
// the CRC32C of that checkpoint's manifest (which holds every file's size and CRC32C). A
// sealed stage never runs again, and its checkpoint is immutable: its files are made
// read-only, and every later stage that starts from it checks the manifest checksum first.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "common/status.h"
#include "jobs/job_spec.h"

namespace vlorch {

struct StageSeal {
  std::string stage;
  std::string kind = "train";  // "train" or the transform's kind
  std::string checkpoint;      // the sealed checkpoint directory
  uint32_t manifest_crc32c = 0;
  int64_t steps = 0;
  double loss = 0;
};

std::string StageDir(const std::string& run_dir, const std::string& stage);
// <run_dir>/stages/<stage>/checkpoints: the stage's committed checkpoints
// (jobs/checkpoint_layout.h names what is inside).
std::string CheckpointDir(const std::string& run_dir, const std::string& stage);

// The stage's seal; nullopt when the stage is not sealed. Corruption when state.json exists
// but is not a seal (it names the file and the field and says to delete it to re-run the
// stage): not JSON, a field missing or of the wrong type, a CRC past 32 bits, a checkpoint
// path that is not `.../<stage>/checkpoints/step-N`. Never throws.
StatusOr<std::optional<StageSeal>> ReadStageSeal(const std::string& run_dir, const std::string& stage);

// Seals a stage: computes the manifest checksum of seal.checkpoint, makes the checkpoint's
// files read-only and writes state.json atomically. Sealing twice with the same checkpoint
// is a no-op; with another checkpoint it is FailedPrecondition (a sealed stage is final).
Status SealStage(const std::string& run_dir, StageSeal seal);

// OK when the sealed checkpoint still has the manifest it was sealed with; otherwise
// Corruption naming the checkpoint and the stage.
Status VerifySealedCheckpoint(const StageSeal& seal);

// Rank 0 writes this (atomically) after committing the checkpoint of a SIGTERM stop, so that
// whoever launched the ranks can tell a preemption from a failure whatever mpirun's own exit
// code says: Open MPI's mpirun exits 1 when it is signalled itself, even after every rank
// committed and exited with the preempted code.
struct PreemptionRecord {
  int64_t incarnation = 0;  // the coordinator's launch number (0 without a coordinator)
  int64_t step = 0;
  std::string checkpoint;
};
Status WritePreemptionRecord(const std::string& run_dir, const std::string& stage, const PreemptionRecord& record);
// nullopt when there is none, or when it cannot be read (it is only a hint; checkpoints rule).
std::optional<PreemptionRecord> ReadPreemptionRecord(const std::string& run_dir, const std::string& stage);

enum class StageStatus { kPending, kInProgress, kSealed };
const char* StageStatusName(StageStatus status);  // "pending", "in-progress", "sealed"

struct StageProgress {
  std::string stage;
  StageStatus status = StageStatus::kPending;
  int64_t latest_step = -1;  // what checkpoints/latest names (a hint); -1 none or damaged
  std::optional<StageSeal> seal;
};

// Every stage of the job, in order.
StatusOr<std::vector<StageProgress>> ReadJobProgress(const JobSpec& job, const std::string& run_dir);

}  // namespace vlorch
