// Held-out loss of a stage's committed checkpoints: `vlorch-worker evaluate`. Every rank
// takes its part of the evaluation samples (the first epoch of the store's seeded order,
// whole batches only, so no sample counts twice); losses and label-token counts are summed
// over the world. Used by ops/bench/run vpgtrans to measure steps to a validation loss.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "common/status.h"
#include "jobs/job_spec.h"
#include "worker/comm/device_mesh.h"

namespace vlorch::train {

struct EvaluateOptions {
  std::string run_dir;       // default: the spec's run_dir
  std::string store;         // the held-out shard store
  int64_t max_samples = 0;   // 0: the whole store (rounded down to whole global batches)
  int64_t batch_size = 16;   // per rank
};

struct EvalPoint {
  int64_t step = 0;
  double loss = 0;           // mean cross-entropy per label token
  int64_t tokens = 0, samples = 0;
  std::string checkpoint;
};

// Every committed checkpoint of the stage (oldest first) that verifies.
StatusOr<std::vector<EvalPoint>> EvaluateStage(const JobSpec& job, const std::string& stage, comm::DeviceMesh& mesh,
                                               const EvaluateOptions& options);

}  // namespace vlorch::train
