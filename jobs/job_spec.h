// A job spec: what to train, on what data, in which stages. Read from YAML (docs/job-spec.md
// has a complete example); every error names the file, line, column and field, and says what
// is allowed. No LibTorch here: the CLI and the coordinator read the same specs.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "common/status.h"
#include "jobs/model_config.h"
#include "jobs/parallel_layout.h"

namespace vlorch {

struct TokenizerSpec {
  // "byte" (UTF-8 bytes + 3, ids 0..2 = pad/bos/eos; for tiny models and tests),
  // "gpt2" (vocab + merges files) or "sentencepiece" (model file). Default "byte".
  std::string kind = "byte";
  std::string vocab, merges, model;  // paths, relative to the spec's directory
};

struct DataSpec {
  std::vector<std::string> stores;  // shard store directories, relative to the spec's directory
  std::vector<double> weights;      // mixture weights; empty = 1 each
  std::string template_name = "blip2_caption";
  TokenizerSpec tokenizer;
  int max_len = 0;                  // 0: no limit
  uint64_t shuffle_window = 8192;
  int workers = 2;                  // batch-building threads per rank
  int prefetch = 4;
  // Redistribute each step's samples among the dp ranks so their token counts match
  // (dataflow::PipelineOptions::balance_tokens). Default true.
  bool balance_tokens = true;
  int balance_group = 8;            // ranks balanced together; 0: the whole dp group
};

// External weights loaded into the model before a stage starts (safetensors file, or a
// directory holding model.safetensors or model.safetensors.index.json).
struct WeightsSpec {
  std::string path;
  // Prepended to every name in the file: "language_model." loads an LLM's own checkpoint.
  std::string prefix;
};

enum class ScheduleKind { kConstant, kCosine };

struct ScheduleSpec {
  ScheduleKind kind = ScheduleKind::kCosine;
  int64_t warmup_steps = 0;     // linear from warmup_init_lr to lr
  double warmup_init_lr = 0.0;
  double min_lr = 0.0;          // cosine ends here
  // Step the schedule every iteration (default) or hold it for a whole epoch.
  bool per_epoch = false;
};

struct OptimizerSpec {
  double lr = 1e-4;
  double beta1 = 0.9, beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 0.05;   // not applied to biases, norms and other 1-D parameters
};

struct LrMultiplier {
  std::string pattern;  // parameter-name glob ('*' matches anything)
  double factor = 1.0;
};

struct CheckpointSpec {
  int64_t every_steps = 0;  // 0: only at the end of the stage (and on SIGTERM)
  int keep = 3;             // committed checkpoints kept per stage
  bool async = true;        // write in a background thread
};

// A transform stage: instead of training, it builds its stage's model from an earlier
// stage's sealed checkpoint and commits the result as its own checkpoint (docs/job-spec.md).
// Transforms are resumable: their own work is checkpointed under the stage's directory.
struct TransformSpec {
  // "transfer_vpg" (VPGTrans). Later: upcycle_moe, add_adapters, add_lora.
  std::string kind;
  // The earlier stage whose sealed checkpoint (and model definition) is the source.
  std::string from;
  // transfer_vpg: how source and target token embeddings are paired to fit the converter.
  //   auto        shared_ids when both stages use the same tokenizer, captions otherwise (default)
  //   shared_ids  token id i of the source with token id i of the target
  //   captions    tokens at the same position in captions both tokenizers split into the
  //               same number of tokens (from this stage's data)
  std::string pairs = "auto";
  int64_t steps = 300;          // converter optimisation steps (Adam, loss 1 - cos)
  double lr = 1e-3;
  int64_t batch_size = 4096;    // pairs per step, over all ranks
  int64_t caption_samples = 20000;  // captions read to find pairs (captions mode)
  int64_t checkpoint_every = 50;    // converter checkpoints (resume after a kill)
};

struct StageSpec {
  std::string name;
  // The model definition this stage trains (a key of `models`; "model" when the job has a
  // single `model`). Filled in by the parser: never empty after it.
  std::string model;
  // Data for this stage instead of the job's `data` (e.g. another tokenizer for another LLM).
  std::optional<DataSpec> data;
  std::optional<TransformSpec> transform;
  std::string init_stage;             // start from this earlier stage's sealed checkpoint
  std::vector<WeightsSpec> init_weights;
  std::vector<std::string> trainable;  // parameter-name globs; the rest is frozen
  std::vector<LrMultiplier> lr_multipliers;
  OptimizerSpec optimizer;
  ScheduleSpec schedule;
  int64_t steps = 0;       // exactly one of steps / epochs
  double epochs = 0;
  int64_t batch_size = 8;  // per rank, per micro-batch
  int grad_accum = 1;
  double clip_grad_norm = 0;  // 0: no clipping
  CheckpointSpec checkpoint;
  int log_every = 1;
};

struct NamedModel {
  std::string name;
  ModelConfig config;
};

struct JobSpec {
  std::string name;
  std::string source;  // the file it was read from (for messages)
  std::string base_dir;  // relative paths in the spec are relative to this
  std::string run_dir;
  uint64_t seed = 0;
  // `model:` (one definition, named "model") or `models:` (several, e.g. the source and
  // target of a VPG transfer), in file order.
  std::vector<NamedModel> models;
  DataSpec data;
  ParallelLayout layout;
  int threads = 1;  // LibTorch intra-op threads per rank. Default 1 (ranks fill the cores).
  std::vector<StageSpec> stages;

  // nullptr when there is no such stage.
  const StageSpec* FindStage(const std::string& name) const;
  // The model and data a stage uses (the parser guarantees the model exists).
  const ModelConfig& ModelOf(const StageSpec& stage) const;
  const DataSpec& DataOf(const StageSpec& stage) const;
  // Resolves a path from the spec against base_dir.
  std::string Resolve(const std::string& path) const;
};

// Reads and validates a spec. InvalidArgument naming "file:line:col: field: problem" for an
// unknown key, a wrong type, an out-of-range value, a stage whose init refers to a later or
// unknown stage, a duplicate stage name, an unknown model, a trainable or learning-rate
// pattern that names no parameter of the stage's model, or a transform whose models lack
// the modules it moves; NotFound when the file does not exist. The file must be a regular
// file of at most kMaxJobSpecBytes (a FIFO or device is refused without blocking).
inline constexpr size_t kMaxJobSpecBytes = 4 << 20;
StatusOr<JobSpec> LoadJobSpec(const std::string& path);
StatusOr<JobSpec> ParseJobSpec(const std::string& yaml_text, const std::string& source_name,
                               const std::string& base_dir);

// Glob match for parameter names: '*' matches any run of characters (dots included).
bool MatchesGlob(const std::string& pattern, const std::string& name);

}  // namespace vlorch
