#include "worker/train/stage_runner.h"

#include <ATen/CPUGeneratorImpl.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <csignal>
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "common/durable_file.h"
#include "common/fault.h"
#include "common/logging.h"
#include "dataflow/pipeline.h"
#include "jobs/job_state.h"
#include "sharding/shard_store.h"
#include "worker/checkpoint/checkpoint.h"
#include "worker/checkpoint/run_dir_lock.h"
#include "worker/checkpoint/trainer_state.h"
#include "worker/models/vl_model.h"
#include "worker/models/weights.h"
#include "worker/train/grad_reducer.h"
#include "worker/train/optimizer.h"
#include "worker/train/tokenization.h"
#include "worker/transforms/transfer_vpg.h"

namespace vlorch::train {
namespace fs = std::filesystem;
namespace {

std::atomic<int> g_stop_requested{0};

extern "C" void OnSigterm(int) { g_stop_requested.store(1); }

double Since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// Bytes of this build's CPU generator state: a saved state of another size is damaged.
size_t CpuRngStateBytes() {
  at::Generator gen = at::detail::getDefaultCPUGenerator();
  std::lock_guard<std::mutex> lock(gen.mutex());
  return static_cast<size_t>(gen.get_state().numel());
}

}  // namespace

StatusOr<int64_t> AgreedLatestCheckpoint(const std::string& dir, comm::DeviceMesh& mesh,
                                         const checkpoint::ContentCheck& check) {
  int64_t step = -1;
  if (mesh.rank() == 0) {
    std::vector<std::string> skipped;
    ASSIGN_OR_RETURN(auto found, checkpoint::FindLatest(dir, &skipped, check));
    for (const auto& s : skipped) VLOG_WARNING("skipping damaged checkpoint {}", s);
    if (found) step = found->manifest.step;
  }
  torch::Tensor t = torch::tensor({step}, torch::kInt64);
  RETURN_IF_ERROR(mesh.world().Broadcast(t, 0));
  return t.item<int64_t>();
}

StatusOr<std::optional<checkpoint::RunDirLock>> LockRunDir(const std::string& run_dir, const std::string& what,
                                                           comm::DeviceMesh& mesh) {
  std::optional<checkpoint::RunDirLock> lock;
  Status failed;
  if (mesh.rank() == 0) {
    auto l = checkpoint::RunDirLock::Acquire(run_dir, what);
    if (l.ok()) {
      lock.emplace(std::move(l).value());
    } else {
      failed = l.status();
    }
  }
  // Every rank learns the outcome now, rather than waiting for rank 0 in its first collective
  // until the collective timeout.
  torch::Tensor t = torch::tensor({static_cast<int64_t>(failed.ok() ? 0 : 1)}, torch::kInt64);
  RETURN_IF_ERROR(mesh.world().Broadcast(t, 0));
  if (!failed.ok()) return failed;
  if (t.item<int64_t>() != 0)
    return FailedPreconditionError(fmt::format(
        "rank 0 could not take the lock of run directory {}; its message names the writer that holds it", run_dir));
  return lock;
}

StatusOr<std::string> SealedCheckpoint(const std::string& run_dir, const std::string& stage,
                                       const std::string& from_stage) {
  ASSIGN_OR_RETURN(std::optional<StageSeal> seal, ReadStageSeal(run_dir, from_stage));
  if (!seal)
    return FailedPreconditionError(fmt::format("stage '{}' starts from stage '{}', which is not sealed yet ({} has no "
                                               "state.json); run that stage first",
                                               stage, from_stage, StageDir(run_dir, from_stage)));
  RETURN_IF_ERROR(VerifySealedCheckpoint(*seal));
  RETURN_IF_ERROR(checkpoint::VerifyCheckpoint(seal->checkpoint).status());
  return seal->checkpoint;
}

namespace {

struct StepBatch {
  std::vector<dataflow::PipelineBatch> micro;
  int64_t tokens = 0, samples = 0;
};

int64_t LabelTokens(const dataflow::Batch& b) {
  if (!b.labels.defined()) return 0;
  return b.labels.slice(1, 1).ne(dataflow::kIgnoreIndex).sum().item<int64_t>();
}

class StageRun {
 public:
  StageRun(const JobSpec& job, const StageSpec& stage, comm::DeviceMesh& mesh, const StageRunOptions& options)
      : job_(job), stage_(stage), model_config_(job.ModelOf(stage)), data_(job.DataOf(stage)), mesh_(mesh),
        options_(options) {
    run_dir_ = options.run_dir.empty() ? job.run_dir : options.run_dir;
    stage_dir_ = StageDir(run_dir_, stage.name);
    rank0_ = mesh.rank() == 0;
  }

  StatusOr<StageResult> Run();

 private:
  Status Setup();
  Status InitWeights();
  Status Resume();
  StatusOr<int64_t> TotalSteps();
  Status OpenPipeline();
  StatusOr<StepBatch> NextStepBatch();
  Status TrainStep(StepBatch& sb, bool* stop);
  Status SaveCheckpoint();
  std::string TrainerStateJson() const;
  Status LogStep(double loss, double lr, double grad_norm, const StepBatch& sb, double step_seconds);

  const JobSpec& job_;
  const StageSpec& stage_;
  const ModelConfig& model_config_;
  const DataSpec& data_;
  comm::DeviceMesh& mesh_;
  StageRunOptions options_;
  std::string run_dir_, stage_dir_;
  bool rank0_ = false;

  Tokenization tok_;
  dataflow::PromptTemplate template_;
  std::shared_ptr<models::VLModel> model_;
  std::vector<std::pair<std::string, torch::Tensor>> params_;  // sorted by name
  std::unique_ptr<AdamW> optimizer_;
  std::unique_ptr<GradReducer> reducer_;
  std::unique_ptr<checkpoint::CheckpointManager> checkpoints_;
  std::unique_ptr<dataflow::DataPipeline> pipeline_;

  int64_t step_ = 0, total_steps_ = 0, steps_per_epoch_ = 1;
  int64_t samples_seen_ = 0, tokens_seen_ = 0;
  dataflow::Cursor cursor_;
  int64_t saved_step_ = -1;
  double last_loss_ = 0, lr_ = 0, last_grad_norm_ = 0;
  std::string last_checkpoint_;
  std::unique_ptr<std::ofstream> trace_;
  double data_wait_ = 0;

  // Timing over this process's steps.
  int64_t steps_run_ = 0;
  double step_time_sum_ = 0, exposed_sum_ = 0, comm_sum_ = 0, stall_sum_ = 0;
  int64_t stall_count_ = 0;
};

Status StageRun::Setup() {
  const ParallelLayout& layout = mesh_.layout();
  if (layout.tp != 1 || layout.ep != 1)
    return FailedPreconditionError(fmt::format(
        "{}: layout {} — training with tensor or expert parallelism is not implemented yet; use tp: 1, ep: 1",
        job_.source, layout.ToString()));
  at::set_num_threads(job_.threads);
  ASSIGN_OR_RETURN(tok_, MakeTokenizer(job_, data_, model_config_));
  ASSIGN_OR_RETURN(template_, StageTemplate(data_, model_config_, tok_));
  ASSIGN_OR_RETURN(model_, models::VLModel::Create(model_config_, job_.seed));
  params_ = model_->SortedParameters();
  return Status::OK();
}

Status StageRun::InitWeights() {
  if (!stage_.init_stage.empty()) {
    ASSIGN_OR_RETURN(std::string ck, SealedCheckpoint(run_dir_, stage_.name, stage_.init_stage));
    RETURN_IF_ERROR(models::LoadWeights(params_, (fs::path(ck) / checkpoint::kModelFile).string(), "").status());
  }
  for (const WeightsSpec& w : stage_.init_weights) {
    ASSIGN_OR_RETURN(models::LoadReport r, models::LoadWeights(params_, job_.Resolve(w.path), w.prefix));
    if (rank0_)
      VLOG_INFO("loaded {} tensors ({:.1f} MB, {} converted) from {}", r.tensors, r.bytes / 1e6, r.converted, w.path);
  }
  return Status::OK();
}

StatusOr<int64_t> StageRun::TotalSteps() {
  uint64_t samples = 0;
  for (const std::string& store : data_.stores) {
    sharding::ShardStoreOptions so;
    so.read_only = true;
    ASSIGN_OR_RETURN(auto s, sharding::ShardStore::Open(job_.Resolve(store), so));
    samples += s->num_samples();
  }
  if (samples == 0) return FailedPreconditionError(fmt::format("{}: the data stores hold no samples", job_.source));
  const uint64_t per_micro = static_cast<uint64_t>(mesh_.layout().dp) * stage_.batch_size;
  const uint64_t micro_per_epoch = (samples + per_micro - 1) / per_micro;
  steps_per_epoch_ = static_cast<int64_t>((micro_per_epoch + stage_.grad_accum - 1) / stage_.grad_accum);
  int64_t total = stage_.steps > 0 ? stage_.steps : static_cast<int64_t>(std::ceil(stage_.epochs * steps_per_epoch_));
  if (options_.max_steps > 0) total = std::min(total, options_.max_steps);
  return std::max<int64_t>(total, 1);
}

Status StageRun::Resume() {
  const std::string ck_dir = (fs::path(stage_dir_) / checkpoint::kCheckpointsDir).string();
  // A checkpoint whose trainer state does not parse is passed over like a damaged one.
  const size_t rng_bytes = CpuRngStateBytes();
  auto check = [rng_bytes](const std::string& path, const checkpoint::CheckpointManifest& m) {
    return checkpoint::ReadTrainerState(path, m.step, rng_bytes).status();
  };
  ASSIGN_OR_RETURN(const int64_t found_step, AgreedLatestCheckpoint(ck_dir, mesh_, check));
  if (found_step < 0) return Status::OK();
  const std::string found_path = (fs::path(ck_dir) / checkpoint::StepDirName(found_step)).string();

  ASSIGN_OR_RETURN(checkpoint::TrainerState ts, checkpoint::ReadTrainerState(found_path, found_step, rng_bytes));
  RETURN_IF_ERROR(models::LoadWeights(params_, (fs::path(found_path) / checkpoint::kModelFile).string(), "").status());
  std::map<std::string, std::string> meta;
  ASSIGN_OR_RETURN(auto opt_state, checkpoint::ReadTensors((fs::path(found_path) / checkpoint::kOptimizerFile).string(), &meta));
  RETURN_IF_ERROR(optimizer_->LoadState(opt_state, ts.optimizer_steps));
  step_ = ts.step;
  samples_seen_ = ts.samples;
  tokens_seen_ = ts.tokens;
  cursor_ = ts.cursor;
  if (ts.dp != mesh_.layout().dp && rank0_)
    VLOG_INFO("resuming a dp={} checkpoint at dp={}: the data cursor is global, so every remaining sample is seen once",
              ts.dp, mesh_.layout().dp);
  {
    at::Generator gen = at::detail::getDefaultCPUGenerator();
    std::lock_guard<std::mutex> lock(gen.mutex());
    torch::Tensor state =
        torch::from_blob(ts.rng_state.data(), {static_cast<int64_t>(ts.rng_state.size())}, torch::kUInt8).clone();
    gen.set_state(state);
  }
  saved_step_ = step_;
  last_checkpoint_ = found_path;
  if (rank0_) VLOG_INFO("stage '{}': resuming from {} (step {})", stage_.name, found_path, step_);
  return Status::OK();
}

Status StageRun::OpenPipeline() {
  dataflow::PipelineOptions po = StagePipelineOptions(job_, data_, model_config_, tok_, template_);
  po.dp = mesh_.layout().dp;
  po.rank = mesh_.coords().dp_rank;
  po.batch_size = static_cast<uint64_t>(stage_.batch_size);
  po.start = cursor_;
  ASSIGN_OR_RETURN(pipeline_, dataflow::DataPipeline::Open(po));
  return Status::OK();
}

StatusOr<StepBatch> StageRun::NextStepBatch() {
  StepBatch sb;
  const auto t0 = std::chrono::steady_clock::now();
  for (int m = 0; m < stage_.grad_accum; ++m) {
    ASSIGN_OR_RETURN(dataflow::PipelineBatch b, pipeline_->Next());
    sb.tokens += LabelTokens(b.batch);
    sb.samples += static_cast<int64_t>(b.batch.keys.size());
    sb.micro.push_back(std::move(b));
  }
  data_wait_ = Since(t0);
  return sb;
}

Status StageRun::TrainStep(StepBatch& sb, bool* stop) {
  // 2. Global token count and the stop vote in one small all-reduce.
  torch::Tensor counts =
      torch::tensor({sb.tokens, sb.samples, static_cast<int64_t>(g_stop_requested.load())}, torch::kInt64);
  RETURN_IF_ERROR(mesh_.dp().AllReduce(counts, comm::ReduceOp::kSum));
  const int64_t global_tokens = counts[0].item<int64_t>(), global_samples = counts[1].item<int64_t>();
  *stop = counts[2].item<int64_t>() > 0;

  // 3. Forward and backward.
  double loss_sum = 0;
  for (size_t m = 0; m < sb.micro.size(); ++m) {
    const dataflow::Batch& b = sb.micro[m].batch;
    const bool last = m + 1 == sb.micro.size();
    if (last && reducer_) reducer_->Arm();
    if (b.keys.empty() || global_tokens == 0) continue;
    models::ModelOutput out = model_->Forward(b);
    torch::Tensor loss = out.loss_sum / static_cast<double>(global_tokens);
    loss.backward();
    loss_sum += out.loss_sum.item<double>();
    if (trace_)
      for (const auto& k : b.keys) *trace_ << step_ + 1 << '\t' << k << '\n';
  }
  if (trace_) trace_->flush();
  if (reducer_) RETURN_IF_ERROR(reducer_->Finish());

  // 4. Clip, update, clear.
  double grad_norm = 0;
  {
    torch::NoGradGuard no_grad;
    for (const auto& p : optimizer_->params()) {
      const torch::Tensor& g = p.param.grad();
      if (!g.defined()) continue;
      // One read of the gradient (BLAS dot), no squared temporary.
      const torch::Tensor flat = g.reshape({-1});
      grad_norm += (g.scalar_type() == torch::kFloat32 ? flat.dot(flat) : flat.pow(2).sum()).item<double>();
    }
    grad_norm = std::sqrt(grad_norm);
    last_grad_norm_ = grad_norm;
  }
  // Clipping scales the gradients inside the optimizer's pass instead of in one of its own.
  double clip = 1.0;
  if (stage_.clip_grad_norm > 0) clip = std::min(1.0, stage_.clip_grad_norm / (grad_norm + 1e-6));
  lr_ = ScheduledLr(stage_.schedule, stage_.optimizer.lr, step_, total_steps_, steps_per_epoch_);
  optimizer_->Step(lr_, clip);
  for (const auto& p : optimizer_->params()) p.param.mutable_grad() = torch::Tensor();
  cursor_ = sb.micro.back().cursor_after;
  ++step_;
  samples_seen_ += global_samples;
  tokens_seen_ += global_tokens;

  // 5. Loss for the log, averaged over every label token of the dp group.
  torch::Tensor l = torch::tensor({static_cast<float>(loss_sum)}, torch::kFloat32);
  RETURN_IF_ERROR(mesh_.dp().AllReduce(l, comm::ReduceOp::kSum));
  last_loss_ = global_tokens ? l.item<double>() / static_cast<double>(global_tokens) : 0.0;
  sb.tokens = global_tokens;
  sb.samples = global_samples;
  return Status::OK();
}

std::string StageRun::TrainerStateJson() const {
  checkpoint::TrainerState ts;
  ts.job = job_.name;
  ts.stage = stage_.name;
  ts.step = step_;
  ts.optimizer_steps = optimizer_->steps();
  ts.total_steps = total_steps_;
  ts.cursor = cursor_;
  ts.samples = samples_seen_;
  ts.tokens = tokens_seen_;
  ts.lr = lr_;
  ts.loss = last_loss_;
  ts.seed = job_.seed;
  ts.dp = mesh_.layout().dp;
  ts.tp = mesh_.layout().tp;
  ts.ep = mesh_.layout().ep;
  at::Generator gen = at::detail::getDefaultCPUGenerator();
  torch::Tensor state;
  {
    std::lock_guard<std::mutex> lock(gen.mutex());
    state = gen.get_state();
  }
  const uint8_t* p = state.data_ptr<uint8_t>();
  ts.rng_state.assign(p, p + state.numel());
  return checkpoint::TrainerStateJson(ts);
}

Status StageRun::SaveCheckpoint() {
  if (saved_step_ == step_) return Status::OK();
  saved_step_ = step_;
  if (!checkpoints_) return Status::OK();  // only dp rank 0 writes: every replica holds the same state
  checkpoint::CheckpointPayload payload;
  payload.model = params_;
  payload.optimizer = optimizer_->StateTensors();
  payload.optimizer_metadata = {{"optimizer", "adamw"}, {"steps", std::to_string(optimizer_->steps())}};
  payload.trainer_state_json = TrainerStateJson();
  const auto t0 = std::chrono::steady_clock::now();
  RETURN_IF_ERROR(checkpoints_->Save(step_, payload));
  stall_sum_ += Since(t0);
  ++stall_count_;
  last_checkpoint_ = (fs::path(checkpoints_->dir()) / checkpoint::StepDirName(step_)).string();
  return Status::OK();
}

Status StageRun::LogStep(double loss, double lr, double grad_norm, const StepBatch& sb, double step_seconds) {
  if (!rank0_ || step_ % stage_.log_every != 0) return Status::OK();
  nlohmann::json j;
  j["step"] = step_;
  j["loss"] = loss;
  j["lr"] = lr;
  j["grad_norm"] = grad_norm;
  // The learning rate each trained module really gets (base x its group's multiplier).
  nlohmann::json by_module = nlohmann::json::object();
  for (const auto& p : optimizer_->params()) {
    const std::string module = p.name.substr(0, p.name.find('.'));
    by_module[module] = std::max(by_module.value(module, 0.0), lr * p.lr_multiplier);
  }
  j["lr_by_module"] = by_module;
  j["samples"] = sb.samples;
  j["tokens"] = sb.tokens;
  j["step_seconds"] = step_seconds;
  j["samples_per_second"] = step_seconds > 0 ? sb.samples / step_seconds : 0.0;
  j["data_wait_seconds"] = data_wait_;
  if (reducer_) {
    j["comm_seconds"] = reducer_->stats().comm_seconds;
    j["exposed_comm_seconds"] = reducer_->stats().exposed_seconds;
  }
  std::ofstream out(fs::path(stage_dir_) / "metrics.jsonl", std::ios::app);
  out << j.dump() << '\n';
  if (options_.print_progress) {
    std::printf("[%s] step %lld/%lld loss %.4f lr %.2e %.1f samples/s\n", stage_.name.c_str(),
                static_cast<long long>(step_), static_cast<long long>(total_steps_), loss, lr,
                step_seconds > 0 ? sb.samples / step_seconds : 0.0);
    std::fflush(stdout);
  }
  return Status::OK();
}

StatusOr<StageResult> StageRun::Run() {
  StageResult result;
  std::error_code ec;
  fs::create_directories(stage_dir_, ec);
  if (ec) return IOError(fmt::format("cannot create {}: {}", stage_dir_, ec.message()));

  RETURN_IF_ERROR(Setup());
  ASSIGN_OR_RETURN(TrainableSplit split, SplitTrainable(params_, stage_.trainable));
  for (auto& [n, p] : split.frozen) p.requires_grad_(false);
  for (auto& [n, p] : split.trainable) p.requires_grad_(true);
  RETURN_IF_ERROR(InitWeights());
  ASSIGN_OR_RETURN(std::vector<OptimizedParam> groups, MakeParamGroups(split.trainable, stage_));
  optimizer_ = std::make_unique<AdamW>(std::move(groups), stage_.optimizer);
  ASSIGN_OR_RETURN(total_steps_, TotalSteps());
  // The writer opens its checkpoints before anyone reads them: Open cleans up what a crashed
  // save left (and renames back a checkpoint an interrupted re-save had moved aside).
  if (mesh_.coords().dp_rank == 0) {
    checkpoint::CheckpointOptions co;
    co.keep = stage_.checkpoint.keep;
    co.async = stage_.checkpoint.async;
    co.rank = mesh_.rank();
    co.stage = stage_.name;
    if (options_.on_checkpoint) {
      co.on_commit = [cb = options_.on_checkpoint, name = stage_.name](int64_t step, const std::string& dir) {
        cb(name, step, dir);
      };
    }
    ASSIGN_OR_RETURN(checkpoints_, checkpoint::CheckpointManager::Open((fs::path(stage_dir_) / checkpoint::kCheckpointsDir).string(), co));
  }
  RETURN_IF_ERROR(Resume());

  if (mesh_.layout().dp > 1) {
    // Registration order of the trainable parameters (not name order): backward's order.
    std::vector<torch::Tensor> ordered;
    for (const auto& item : model_->named_parameters(true))
      if (item.value().requires_grad()) ordered.push_back(item.value());
    GradReducerOptions ro;
    ro.overlap = options_.overlap_grad_reduce;
    reducer_ = std::make_unique<GradReducer>(std::move(ordered), &mesh_.dp(), ro);
  }
  if (options_.trace_samples) {
    fs::create_directories(fs::path(stage_dir_) / "trace", ec);
    trace_ = std::make_unique<std::ofstream>(fs::path(stage_dir_) / "trace" / fmt::format("rank-{}.tsv", mesh_.rank()),
                                             std::ios::app);
  }
  RETURN_IF_ERROR(OpenPipeline());
  if (rank0_) {
    int64_t trainable = 0, frozen = 0;
    for (const auto& [n, p] : split.trainable) trainable += p.numel();
    for (const auto& [n, p] : split.frozen) frozen += p.numel();
    VLOG_INFO("stage '{}': {} trainable / {} frozen parameters, {} steps ({} per epoch), {} x {} per step{}", stage_.name,
              trainable, frozen, total_steps_, steps_per_epoch_, mesh_.layout().dp, stage_.batch_size * stage_.grad_accum,
              step_ > 0 ? fmt::format(", from step {}", step_) : "");
  }

  bool stop = false;
  while (step_ < total_steps_ && !stop) {
    const auto t0 = std::chrono::steady_clock::now();
    ASSIGN_OR_RETURN(StepBatch sb, NextStepBatch());
    RETURN_IF_ERROR(TrainStep(sb, &stop));
    const bool due = stage_.checkpoint.every_steps > 0 && step_ % stage_.checkpoint.every_steps == 0;
    const double step_seconds = Since(t0);
    MaybeKill({{"rank", mesh_.rank()}, {"stage", stage_.name.c_str()}, {"step", step_}});
    if (due || stop || step_ == total_steps_) RETURN_IF_ERROR(SaveCheckpoint());
    const double with_checkpoint = Since(t0);
    if (steps_run_ > 0) {
      step_time_sum_ += with_checkpoint;
      if (reducer_) exposed_sum_ += reducer_->stats().exposed_seconds, comm_sum_ += reducer_->stats().comm_seconds;
    }
    ++steps_run_;
    RETURN_IF_ERROR(LogStep(last_loss_, lr_, last_grad_norm_, sb, step_seconds));
    if (options_.on_step) {
      options_.on_step(StepReport{stage_.name, step_, total_steps_, last_loss_,
                                  step_seconds > 0 ? sb.samples / step_seconds : 0.0, data_wait_});
    }
  }
  if (checkpoints_) RETURN_IF_ERROR(checkpoints_->Wait());
  RETURN_IF_ERROR(mesh_.world().Barrier());

  result.steps = step_;
  result.steps_run = steps_run_;
  result.last_loss = last_loss_;
  result.checkpoint = last_checkpoint_;
  if (steps_run_ > 1) {
    result.mean_step_seconds = step_time_sum_ / static_cast<double>(steps_run_ - 1);
    result.mean_exposed_comm_seconds = exposed_sum_ / static_cast<double>(steps_run_ - 1);
    result.mean_comm_seconds = comm_sum_ / static_cast<double>(steps_run_ - 1);
  }
  if (stall_count_) result.mean_checkpoint_stall_seconds = stall_sum_ / static_cast<double>(stall_count_);
  if (rank0_) {
    // This process's timings, for ops/bench and for users comparing runs.
    nlohmann::json j;
    j["steps_run"] = steps_run_;
    j["mean_step_seconds"] = result.mean_step_seconds;
    j["mean_comm_seconds"] = result.mean_comm_seconds;
    j["mean_exposed_comm_seconds"] = result.mean_exposed_comm_seconds;
    j["mean_checkpoint_stall_seconds"] = result.mean_checkpoint_stall_seconds;
    j["checkpoints_saved"] = stall_count_;
    if (reducer_) j["grad_bytes_per_step"] = reducer_->stats().bytes, j["grad_buckets"] = reducer_->stats().buckets;
    if (checkpoints_) {
      const checkpoint::SaveStats cs = checkpoints_->last_stats();
      j["last_checkpoint_bytes"] = cs.bytes;
      j["last_checkpoint_write_seconds"] = cs.write_seconds;
    }
    std::ofstream(fs::path(stage_dir_) / "summary.json") << j.dump(2) << "\n";
  }
  if (stop && step_ < total_steps_) {
    result.outcome = StageOutcome::kPreempted;
    if (rank0_) VLOG_INFO("stage '{}': stopped by SIGTERM after step {}; committed {}", stage_.name, step_, last_checkpoint_);
    return result;
  }
  if (rank0_) {
    StageSeal seal;
    seal.stage = stage_.name;
    seal.checkpoint = last_checkpoint_;
    seal.steps = step_;
    seal.loss = last_loss_;
    RETURN_IF_ERROR(SealStage(run_dir_, seal));
    VLOG_INFO("stage '{}' sealed: {}", stage_.name, last_checkpoint_);
  }
  RETURN_IF_ERROR(mesh_.world().Barrier());
  return result;
}

}  // namespace

void InstallPreemptionHandler() {
  struct sigaction sa {};
  sa.sa_handler = OnSigterm;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGTERM, &sa, nullptr);
}

StatusOr<StageResult> RunStage(const JobSpec& job, const std::string& stage_name, comm::DeviceMesh& mesh,
                               const StageRunOptions& options) {
  const StageSpec* stage = job.FindStage(stage_name);
  if (stage == nullptr) {
    std::vector<std::string> names;
    for (const auto& s : job.stages) names.push_back(s.name);
    return NotFoundError(fmt::format("{} has no stage '{}'; its stages are: {}", job.source, stage_name,
                                     fmt::join(names, ", ")));
  }
  const std::string run_dir = options.run_dir.empty() ? job.run_dir : options.run_dir;
  // One writer per run directory: rank 0 writes it (checkpoints, seal, metrics) and holds
  // its lock for the stage; a second writer fails here, naming the holder.
  ASSIGN_OR_RETURN(std::optional<checkpoint::RunDirLock> lock,
                   LockRunDir(run_dir, fmt::format("job '{}', stage '{}'", job.name, stage_name), mesh));
  // A sealed stage is final, whatever kind it is.
  auto seal = ReadStageSeal(run_dir, stage_name);
  if (!seal.ok()) return seal.status();
  if (*seal) {
    StageResult done;
    done.outcome = StageOutcome::kAlreadyDone;
    done.steps = (*seal)->steps;
    done.checkpoint = (*seal)->checkpoint;
    return done;
  }
  if (stage->transform) return transforms::RunTransferVpg(job, *stage, mesh, options);
  try {
    StageRun run(job, *stage, mesh, options);
    return run.Run();
  } catch (const c10::Error& e) {
    return InternalError(fmt::format("stage '{}': LibTorch error: {}", stage_name, e.what_without_backtrace()));
  } catch (const std::exception& e) {
    return InternalError(fmt::format("stage '{}': {}", stage_name, e.what()));
  }
}

}  // namespace vlorch::train
