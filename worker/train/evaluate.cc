#include "worker/train/evaluate.h"

#include <algorithm>
#include <filesystem>

#include <fmt/format.h>

#include "dataflow/pipeline.h"
#include "jobs/job_state.h"
#include "sharding/shard_store.h"
#include "worker/checkpoint/checkpoint.h"
#include "worker/models/vl_model.h"
#include "worker/models/weights.h"
#include "worker/train/tokenization.h"

namespace vlorch::train {
namespace fs = std::filesystem;

namespace {

StatusOr<std::vector<EvalPoint>> Evaluate(const JobSpec& job, const StageSpec& stage, comm::DeviceMesh& mesh,
                                          const EvaluateOptions& o) {
  const std::string run_dir = o.run_dir.empty() ? job.run_dir : o.run_dir;
  const ModelConfig& config = job.ModelOf(stage);
  const DataSpec& data = job.DataOf(stage);
  at::set_num_threads(job.threads);
  ASSIGN_OR_RETURN(Tokenization tok, MakeTokenizer(job, data, config));
  ASSIGN_OR_RETURN(dataflow::PromptTemplate tmpl, StageTemplate(data, config, tok));

  uint64_t samples = 0;
  {
    sharding::ShardStoreOptions so;
    so.read_only = true;
    ASSIGN_OR_RETURN(auto s, sharding::ShardStore::Open(o.store, so));
    samples = s->num_samples();
  }
  if (o.max_samples > 0) samples = std::min<uint64_t>(samples, static_cast<uint64_t>(o.max_samples));
  const uint64_t global_batch = static_cast<uint64_t>(mesh.world_size()) * o.batch_size;
  const uint64_t batches = samples / global_batch;
  if (batches == 0)
    return InvalidArgumentError(fmt::format("{} has {} samples, fewer than one global batch of {} ({} ranks x {})",
                                            o.store, samples, global_batch, mesh.world_size(), o.batch_size));

  // The checkpoints, oldest first (by step: a 9-digit step sorts after an 8-digit one).
  const fs::path dir = CheckpointDir(run_dir, stage.name);
  std::vector<std::pair<int64_t, std::string>> steps;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec))
    if (auto step = checkpoint::ParseStepDirName(e.path().filename().string()); step && e.is_directory())
      steps.emplace_back(*step, e.path().string());
  if (ec) return NotFoundError(fmt::format("stage '{}' has no checkpoints ({}: {})", stage.name, dir.string(), ec.message()));
  std::sort(steps.begin(), steps.end());
  std::vector<std::string> found;
  for (auto& s : steps) found.push_back(std::move(s.second));

  ASSIGN_OR_RETURN(auto model, models::VLModel::Create(config, job.seed));
  auto params = model->SortedParameters();
  std::vector<EvalPoint> out;
  for (const std::string& ck : found) {
    auto manifest = checkpoint::VerifyCheckpoint(ck);
    if (!manifest.ok()) continue;  // partial or damaged: not a committed checkpoint
    RETURN_IF_ERROR(models::LoadWeights(params, (fs::path(ck) / checkpoint::kModelFile).string(), "").status());
    dataflow::PipelineOptions po = StagePipelineOptions(job, data, config, tok, tmpl);
    po.stores = {o.store};
    po.weights.clear();
    po.dp = mesh.world_size();
    po.rank = mesh.rank();
    po.batch_size = static_cast<uint64_t>(o.batch_size);
    ASSIGN_OR_RETURN(auto pipeline, dataflow::DataPipeline::Open(po));
    double loss = 0;
    int64_t tokens = 0, n = 0;
    torch::NoGradGuard no_grad;
    for (uint64_t b = 0; b < batches; ++b) {
      ASSIGN_OR_RETURN(dataflow::PipelineBatch batch, pipeline->Next());
      if (batch.batch.keys.empty()) continue;
      models::ModelOutput r = model->Forward(batch.batch);
      loss += r.loss_sum.item<double>();
      tokens += r.label_tokens;
      n += static_cast<int64_t>(batch.batch.keys.size());
    }
    torch::Tensor sum = torch::tensor({static_cast<float>(loss)}, torch::kFloat32);
    torch::Tensor counts = torch::tensor({tokens, n}, torch::kInt64);
    RETURN_IF_ERROR(mesh.world().AllReduce(sum, comm::ReduceOp::kSum));
    RETURN_IF_ERROR(mesh.world().AllReduce(counts, comm::ReduceOp::kSum));
    EvalPoint p;
    p.step = manifest->step;
    p.tokens = counts[0].item<int64_t>();
    p.samples = counts[1].item<int64_t>();
    p.loss = p.tokens ? sum.item<double>() / static_cast<double>(p.tokens) : 0.0;
    p.checkpoint = ck;
    out.push_back(p);
  }
  return out;
}

}  // namespace

StatusOr<std::vector<EvalPoint>> EvaluateStage(const JobSpec& job, const std::string& stage_name, comm::DeviceMesh& mesh,
                                               const EvaluateOptions& options) {
  const StageSpec* stage = job.FindStage(stage_name);
  if (stage == nullptr) return NotFoundError(fmt::format("{} has no stage '{}'", job.source, stage_name));
  try {
    return Evaluate(job, *stage, mesh, options);
  } catch (const c10::Error& e) {
    return InternalError(fmt::format("evaluate '{}': LibTorch error: {}", stage_name, e.what_without_backtrace()));
  }
}

}  // namespace vlorch::train
