// What a job will do on N ranks, before anything runs: per stage, the model, what trains
// (parameter counts trainable / frozen, by module), the layout, the steps and the data.
// `vlorch job plan` prints it; the coordinator checks it before launching.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "common/status.h"
#include "jobs/job_spec.h"

namespace vlorch {

struct StagePlan {
  std::string name;
  std::string kind;   // "train" or the transform's kind
  std::string model;
  int64_t trainable = 0, frozen = 0;          // parameters
  std::map<std::string, int64_t> trained_by_module;  // "qformer" -> parameters trained
  std::string init;   // where the weights come from, for people
  // Steps: known for `steps:` stages and transforms; for `epochs:` stages when the stores
  // can be opened (samples_per_epoch > 0), else -1 (known at run time).
  int64_t steps = -1;
  int64_t samples_per_epoch = 0;
  int64_t samples_per_step = 0;  // dp x batch x accumulation
  std::string data;   // stores, weights, template, tokenizer
  std::vector<std::string> notes;  // e.g. a store that does not exist yet
};

struct JobPlan {
  ParallelLayout layout;  // resolved for np
  int np = 0;
  std::vector<StagePlan> stages;
};

// Samples in a shard store directory (jobs/ does not depend on sharding/: the CLI passes a
// function that opens the store read-only).
using SampleCounter = std::function<StatusOr<int64_t>(const std::string& store_dir)>;

// InvalidArgument, naming the spec and what to change, when the layout does not fit np.
// With `count_samples`, epochs become steps; a store it cannot count becomes a note.
StatusOr<JobPlan> PlanJob(const JobSpec& job, int np, const SampleCounter& count_samples = nullptr);

// The plan as text, one block per stage.
std::string FormatPlan(const JobSpec& job, const JobPlan& plan);

}  // namespace vlorch
