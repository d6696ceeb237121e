#include "worker/transforms/transfer_vpg.h"

#include <ATen/CPUGeneratorImpl.h>

#include <filesystem>
#include <fstream>
#include <set>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "common/fault.h"
#include "common/logging.h"
#include "jobs/job_state.h"
#include "sharding/shard_store.h"
#include "worker/checkpoint/checkpoint.h"
#include "worker/models/vl_model.h"
#include "worker/models/weights.h"
#include "worker/train/optimizer.h"
#include "worker/train/tokenization.h"

namespace vlorch::transforms {
namespace fs = std::filesystem;
namespace {

bool IsVpgOrVision(const std::string& name) {
  return name == "query_tokens" || name.rfind("qformer.", 0) == 0 || name.rfind("vision_model.", 0) == 0;
}

// Names of the projector's first and last linear layers ("" first for a single linear).
std::pair<std::string, std::string> ProjectorLayers(ProjectorKind kind) {
  switch (kind) {
    case ProjectorKind::kLinear: return {"", "language_projection"};
    case ProjectorKind::kMlp: return {"language_projection.0", "language_projection.2"};
    case ProjectorKind::kTwoLinear: return {"language_projection.0", "language_projection.1"};
  }
  return {"", "language_projection"};
}

// Captions of the stage's stores, in index order, at most `limit`.
StatusOr<std::vector<std::string>> ReadCaptions(const JobSpec& job, const DataSpec& data, int64_t limit) {
  std::vector<std::string> out;
  for (const std::string& store_dir : data.stores) {
    sharding::ShardStoreOptions so;
    so.read_only = true;
    ASSIGN_OR_RETURN(auto store, sharding::ShardStore::Open(job.Resolve(store_dir), so));
    for (uint64_t i = 0; i < store->num_samples() && static_cast<int64_t>(out.size()) < limit; ++i) {
      auto s = store->Get(i, /*with_image=*/false);
      if (!s.ok()) continue;  // a damaged record: the pipeline skips it too
      if (!s->record.text.empty()) out.push_back(s->record.text);
      for (const auto& turn : s->record.conversation)
        if (turn.from == "gpt" && !turn.value.empty()) out.push_back(turn.value);
    }
  }
  return out;
}

class TransferVpg {
 public:
  TransferVpg(const JobSpec& job, const StageSpec& stage, comm::DeviceMesh& mesh, const train::StageRunOptions& options)
      : job_(job), stage_(stage), spec_(*stage.transform), mesh_(mesh), options_(options) {
    run_dir_ = options.run_dir.empty() ? job.run_dir : options.run_dir;
    stage_dir_ = StageDir(run_dir_, stage.name);
    rank0_ = mesh.rank() == 0;
  }

  StatusOr<train::StageResult> Run();

 private:
  Status BuildPairs(const ModelConfig& src, const ModelConfig& dst);
  Status Fit();
  Status SaveConverter(int64_t step);
  Status LoadConverter(int64_t* step);

  const JobSpec& job_;
  const StageSpec& stage_;
  const TransformSpec& spec_;
  comm::DeviceMesh& mesh_;
  train::StageRunOptions options_;
  std::string run_dir_, stage_dir_;
  bool rank0_ = false;

  std::map<std::string, torch::Tensor> source_;  // the source checkpoint's tensors
  TokenPairs pairs_;
  torch::Tensor src_emb_, dst_emb_;  // [N, ds], [N, dt] of the pairs
  torch::Tensor wg_, bg_;
  std::unique_ptr<train::AdamW> adam_;
  std::unique_ptr<checkpoint::CheckpointManager> converter_ckpt_;
  double last_loss_ = 0;
};

Status TransferVpg::BuildPairs(const ModelConfig& src, const ModelConfig& dst) {
  const StageSpec& from = *job_.FindStage(spec_.from);
  const DataSpec& src_data = job_.DataOf(from);
  const DataSpec& dst_data = job_.DataOf(stage_);
  std::string mode = spec_.pairs;
  if (mode == "auto") mode = train::SameTokenizer(job_, src_data, dst_data) ? "shared_ids" : "captions";
  if (mode == "shared_ids") {
    pairs_ = SharedIdPairs(src.llm.vocab_size, dst.llm.vocab_size);
  } else {
    ASSIGN_OR_RETURN(train::Tokenization st, train::MakeTokenizer(job_, src_data, src));
    ASSIGN_OR_RETURN(train::Tokenization dt, train::MakeTokenizer(job_, dst_data, dst));
    ASSIGN_OR_RETURN(std::vector<std::string> captions, ReadCaptions(job_, dst_data, spec_.caption_samples));
    pairs_ = CaptionPairs(*st.tokenizer, *dt.tokenizer, captions);
  }
  if (pairs_.source.empty())
    return FailedPreconditionError(fmt::format(
        "{}: stage '{}': transfer_vpg found no token pairs ({} mode{}); give the stage data with captions, or "
        "`pairs: shared_ids` when both LLMs share a vocabulary",
        job_.source, stage_.name, pairs_.mode,
        pairs_.mode == "captions" ? fmt::format(", {} captions read", pairs_.captions_read) : ""));
  for (size_t i = 0; i < pairs_.source.size(); ++i)
    if (pairs_.source[i] >= src.llm.vocab_size || pairs_.target[i] >= dst.llm.vocab_size)
      return InvalidArgumentError(fmt::format("{}: stage '{}': token pair ({}, {}) is outside the vocabularies ({}, {}); "
                                              "the tokenizers do not fit the models",
                                              job_.source, stage_.name, pairs_.source[i], pairs_.target[i],
                                              src.llm.vocab_size, dst.llm.vocab_size));
  return Status::OK();
}

Status TransferVpg::SaveConverter(int64_t step) {
  if (!converter_ckpt_) return Status::OK();
  checkpoint::CheckpointPayload p;
  p.model = {{"converter.bias", bg_}, {"converter.weight", wg_}};
  p.optimizer = adam_->StateTensors();
  p.optimizer_metadata = {{"optimizer", "adam"}, {"steps", std::to_string(adam_->steps())}};
  nlohmann::json j;
  j["stage"] = stage_.name;
  j["transform"] = "transfer_vpg";
  j["step"] = step;
  j["optimizer_steps"] = adam_->steps();
  j["loss"] = last_loss_;
  j["pairs"] = pairs_.source.size();
  p.trainer_state_json = j.dump(2) + "\n";
  return converter_ckpt_->Save(step, p);
}

Status TransferVpg::LoadConverter(int64_t* step) {
  const std::string dir = (fs::path(stage_dir_) / "converter").string();
  ASSIGN_OR_RETURN(const int64_t found, train::AgreedLatestCheckpoint(dir, mesh_));
  if (found < 0) return Status::OK();
  const fs::path path = fs::path(dir) / fmt::format("step-{:08d}", found);
  ASSIGN_OR_RETURN(auto model, checkpoint::ReadTensors((path / checkpoint::kModelFile).string(), nullptr));
  ASSIGN_OR_RETURN(auto opt, checkpoint::ReadTensors((path / checkpoint::kOptimizerFile).string(), nullptr));
  torch::NoGradGuard no_grad;
  for (auto& [name, tensor] : model) {
    torch::Tensor& dst = name == "converter.weight" ? wg_ : bg_;
    if (!tensor.sizes().equals(dst.sizes()))
      return CorruptionError(fmt::format("{}: {} has shape {} but the converter needs {}; delete {} to fit it again",
                                         path.string(), name, fmt::join(tensor.sizes(), "x"), fmt::join(dst.sizes(), "x"), dir));
    dst.copy_(tensor);
  }
  RETURN_IF_ERROR(adam_->LoadState(opt, found));
  *step = found;
  if (rank0_) VLOG_INFO("stage '{}': resuming the converter fit from {} (step {})", stage_.name, path.string(), found);
  return Status::OK();
}

Status TransferVpg::Fit() {
  const int64_t n = static_cast<int64_t>(pairs_.source.size());
  const int64_t ds = src_emb_.size(1), dt = dst_emb_.size(1);
  {
    // Seeded init, the same on every rank: N(0, 1/ds) weights, zero bias.
    auto gen = at::detail::createCPUGenerator(job_.seed ^ 0x7f4a7c15ull);
    torch::NoGradGuard no_grad;
    wg_ = at::normal(0.0, 1.0 / std::sqrt(static_cast<double>(ds)), {dt, ds}, gen);
    bg_ = torch::zeros({dt});
  }
  wg_.requires_grad_(true);
  bg_.requires_grad_(true);
  OptimizerSpec os;
  os.lr = spec_.lr;
  os.weight_decay = 0;
  std::vector<train::OptimizedParam> group(2);
  group[0].name = "converter.weight", group[0].param = wg_;
  group[1].name = "converter.bias", group[1].param = bg_;
  adam_ = std::make_unique<train::AdamW>(std::move(group), os);
  if (rank0_) {
    checkpoint::CheckpointOptions co;
    co.keep = 2;
    co.async = false;  // kilobytes to megabytes: not worth a thread
    co.stage = stage_.name;
    co.rank = mesh_.rank();
    ASSIGN_OR_RETURN(converter_ckpt_,
                     checkpoint::CheckpointManager::Open((fs::path(stage_dir_) / "converter").string(), co));
  }
  int64_t step = 0;
  RETURN_IF_ERROR(LoadConverter(&step));

  const int world = mesh_.world_size(), rank = mesh_.rank();
  const int64_t batch = std::min(spec_.batch_size, n);
  const int64_t lo = batch * rank / world, hi = batch * (rank + 1) / world;
  std::ofstream metrics;
  if (rank0_) metrics.open(fs::path(stage_dir_) / "metrics.jsonl", std::ios::app);
  for (; step < spec_.steps; ++step) {
    // The step's batch depends on (seed, step) only: a resumed fit draws the same pairs.
    auto gen = at::detail::createCPUGenerator(job_.seed * 1000003ull + static_cast<uint64_t>(step));
    torch::Tensor idx = at::randint(n, {batch}, gen, torch::TensorOptions().dtype(torch::kInt64)).slice(0, lo, hi);
    torch::Tensor loss_sum = torch::zeros({});
    if (idx.numel() > 0) {
      torch::Tensor pred = torch::addmm(bg_, src_emb_.index_select(0, idx), wg_.t());
      loss_sum = (1.0 - torch::cosine_similarity(pred, dst_emb_.index_select(0, idx), 1, 1e-8)).sum();
      (loss_sum / static_cast<double>(batch)).backward();
    } else {
      wg_.mutable_grad() = torch::zeros_like(wg_);
      bg_.mutable_grad() = torch::zeros_like(bg_);
    }
    torch::Tensor flat = torch::cat({wg_.grad().reshape(-1), bg_.grad(), loss_sum.detach().reshape(1)});
    RETURN_IF_ERROR(mesh_.world().AllReduce(flat, comm::ReduceOp::kSum));
    {
      torch::NoGradGuard no_grad;
      wg_.grad().copy_(flat.slice(0, 0, dt * ds).view({dt, ds}));
      bg_.grad().copy_(flat.slice(0, dt * ds, dt * ds + dt));
    }
    adam_->Step(spec_.lr);
    wg_.mutable_grad() = torch::Tensor();
    bg_.mutable_grad() = torch::Tensor();
    last_loss_ = flat[dt * ds + dt].item<double>() / static_cast<double>(batch);
    MaybeKill({{"rank", rank}, {"stage", stage_.name.c_str()}, {"step", step + 1}});
    if ((step + 1) % spec_.checkpoint_every == 0 || step + 1 == spec_.steps) RETURN_IF_ERROR(SaveConverter(step + 1));
    if (rank0_) {
      metrics << nlohmann::json{{"step", step + 1}, {"loss", last_loss_}}.dump() << '\n';
      if (options_.print_progress && ((step + 1) % 50 == 0 || step + 1 == spec_.steps)) {
        std::printf("[%s] converter step %lld/%lld loss (1 - cos) %.4f\n", stage_.name.c_str(),
                    static_cast<long long>(step + 1), static_cast<long long>(spec_.steps), last_loss_);
        std::fflush(stdout);
      }
    }
  }
  if (metrics.is_open()) metrics.flush();
  return Status::OK();
}

StatusOr<train::StageResult> TransferVpg::Run() {
  train::StageResult result;
  std::error_code ec;
  fs::create_directories(stage_dir_, ec);
  if (ec) return IOError(fmt::format("cannot create {}: {}", stage_dir_, ec.message()));
  at::set_num_threads(job_.threads);

  const StageSpec& from = *job_.FindStage(spec_.from);
  const ModelConfig& src_cfg = job_.ModelOf(from);
  const ModelConfig& dst_cfg = job_.ModelOf(stage_);
  ASSIGN_OR_RETURN(std::string src_ck, train::SealedCheckpoint(run_dir_, stage_.name, spec_.from));
  {
    ASSIGN_OR_RETURN(auto tensors, checkpoint::ReadTensors((fs::path(src_ck) / checkpoint::kModelFile).string(), nullptr));
    for (auto& [name, t] : tensors) source_[name] = t.to(torch::kFloat32);
  }
  const std::string src_emb_name = EmbeddingName(src_cfg.llm);
  if (!source_.count(src_emb_name))
    return CorruptionError(fmt::format("{}: no {} in the source checkpoint of stage '{}'", src_ck, src_emb_name, spec_.from));

  // The target: its seeded init, the stage's init weights (the target LLM), then the source's
  // vision encoder and VPG.
  ASSIGN_OR_RETURN(auto model, models::VLModel::Create(dst_cfg, job_.seed));
  auto params = model->SortedParameters();
  if (!stage_.init_stage.empty()) {
    ASSIGN_OR_RETURN(std::string init_ck, train::SealedCheckpoint(run_dir_, stage_.name, stage_.init_stage));
    RETURN_IF_ERROR(models::LoadWeights(params, (fs::path(init_ck) / checkpoint::kModelFile).string(), "").status());
  }
  for (const WeightsSpec& w : stage_.init_weights) {
    ASSIGN_OR_RETURN(models::LoadReport r, models::LoadWeights(params, job_.Resolve(w.path), w.prefix));
    if (rank0_) VLOG_INFO("loaded {} tensors ({:.1f} MB) from {}", r.tensors, r.bytes / 1e6, w.path);
  }
  torch::Tensor dst_table;
  {
    torch::NoGradGuard no_grad;
    int64_t copied = 0;
    for (auto& [name, p] : params) {
      if (!IsVpgOrVision(name)) continue;
      auto it = source_.find(name);
      if (it == source_.end() || !it->second.sizes().equals(p.sizes()))
        return InvalidArgumentError(fmt::format("{}: stage '{}': the source checkpoint {} has no {} of shape {}", job_.source,
                                                stage_.name, src_ck, name, fmt::join(p.sizes(), "x")));
      p.copy_(it->second);
      ++copied;
    }
    for (auto& [name, p] : params)
      if (name == EmbeddingName(dst_cfg.llm)) dst_table = p.detach().to(torch::kFloat32);
    if (rank0_) VLOG_INFO("stage '{}': copied {} vision and VPG tensors from {}", stage_.name, copied, src_ck);
  }

  RETURN_IF_ERROR(BuildPairs(src_cfg, dst_cfg));
  src_emb_ = source_[src_emb_name].index_select(0, torch::tensor(pairs_.source, torch::kInt64));
  dst_emb_ = dst_table.index_select(0, torch::tensor(pairs_.target, torch::kInt64));
  if (rank0_)
    VLOG_INFO("stage '{}': fitting the word-embedding converter {} -> {} on {} pairs ({}{}), {} steps over {} ranks",
              stage_.name, src_emb_.size(1), dst_emb_.size(1), pairs_.source.size(), pairs_.mode,
              pairs_.mode == "captions" ? fmt::format(", {} of {} captions", pairs_.captions_used, pairs_.captions_read) : "",
              spec_.steps, mesh_.world_size());
  RETURN_IF_ERROR(Fit());

  // Fuse and commit.
  std::map<std::string, torch::Tensor> src_proj;
  for (const auto& [name, t] : source_)
    if (name.rfind("language_projection", 0) == 0) src_proj[name] = t;
  ASSIGN_OR_RETURN(auto fused, FuseProjector(src_cfg.projector.kind, src_proj, wg_.detach(), bg_.detach()));
  {
    torch::NoGradGuard no_grad;
    for (auto& [name, p] : params) {
      auto it = fused.find(name);
      if (it != fused.end()) p.copy_(it->second);
    }
  }
  const int64_t steps = spec_.steps;
  const std::string ck_dir = (fs::path(stage_dir_) / checkpoint::kCheckpointsDir).string();
  result.checkpoint = (fs::path(ck_dir) / fmt::format("step-{:08d}", steps)).string();
  if (rank0_) {
    checkpoint::CheckpointOptions co;
    co.keep = 1;
    co.async = false;
    co.stage = stage_.name;
    co.rank = mesh_.rank();
    ASSIGN_OR_RETURN(auto ckpt, checkpoint::CheckpointManager::Open(ck_dir, co));
    checkpoint::CheckpointPayload p;
    p.model = params;
    nlohmann::json j;
    j["stage"] = stage_.name;
    j["transform"] = "transfer_vpg";
    j["from"] = spec_.from;
    j["source_checkpoint"] = src_ck;
    j["step"] = steps;
    j["converter_loss"] = last_loss_;
    j["pairs"] = pairs_.source.size();
    j["pairs_mode"] = pairs_.mode;
    p.trainer_state_json = j.dump(2) + "\n";
    MaybeKill({{"rank", mesh_.rank()}, {"stage", stage_.name.c_str()}, {"during", "commit"}});
    RETURN_IF_ERROR(ckpt->Save(steps, p));
    RETURN_IF_ERROR(ckpt->Wait());
    StageSeal seal;
    seal.stage = stage_.name;
    seal.kind = "transfer_vpg";
    seal.checkpoint = result.checkpoint;
    seal.steps = steps;
    seal.loss = last_loss_;
    RETURN_IF_ERROR(SealStage(run_dir_, seal));
    VLOG_INFO("stage '{}' sealed: {} (converter 1 - cos = {:.4f})", stage_.name, result.checkpoint, last_loss_);
  }
  RETURN_IF_ERROR(mesh_.world().Barrier());
  result.steps = steps;
  result.last_loss = last_loss_;
  return result;
}

}  // namespace

TokenPairs SharedIdPairs(int64_t source_vocab, int64_t target_vocab) {
  TokenPairs p;
  p.mode = "shared_ids";
  for (int64_t i = 0; i < std::min(source_vocab, target_vocab); ++i) p.source.push_back(i), p.target.push_back(i);
  return p;
}

TokenPairs CaptionPairs(const dataflow::Tokenizer& source, const dataflow::Tokenizer& target,
                        const std::vector<std::string>& captions) {
  std::set<std::pair<int64_t, int64_t>> unique;
  TokenPairs p;
  p.mode = "captions";
  for (const std::string& c : captions) {
    ++p.captions_read;
    const std::vector<int32_t> a = source.EncodeText(c), b = target.EncodeText(c);
    if (a.empty() || a.size() != b.size()) continue;
    ++p.captions_used;
    for (size_t i = 0; i < a.size(); ++i) unique.emplace(a[i], b[i]);
  }
  for (const auto& [s, t] : unique) p.source.push_back(s), p.target.push_back(t);
  return p;
}

StatusOr<std::map<std::string, at::Tensor>> FuseProjector(ProjectorKind kind,
                                                          const std::map<std::string, at::Tensor>& source,
                                                          const at::Tensor& wg, const at::Tensor& bg) {
  const auto [first, last] = ProjectorLayers(kind);
  auto get = [&](const std::string& name) -> StatusOr<torch::Tensor> {
    auto it = source.find(name);
    if (it == source.end()) return InvalidArgumentError(fmt::format("the source projector has no {}", name));
    return it->second;
  };
  ASSIGN_OR_RETURN(torch::Tensor w, get(last + ".weight"));
  ASSIGN_OR_RETURN(torch::Tensor b, get(last + ".bias"));
  if (wg.dim() != 2 || wg.size(1) != w.size(0) || bg.dim() != 1 || bg.size(0) != wg.size(0))
    return InvalidArgumentError(fmt::format("converter {} / {} does not fit the source projector's {} [{}]",
                                            fmt::join(wg.sizes(), "x"), fmt::join(bg.sizes(), "x"), last + ".weight",
                                            fmt::join(w.sizes(), "x")));
  std::map<std::string, torch::Tensor> out;
  // In float64, so the fused layer is the composition to float32 rounding.
  const torch::Tensor wg64 = wg.to(torch::kFloat64);
  out[last + ".weight"] = torch::matmul(wg64, w.to(torch::kFloat64)).to(w.scalar_type());
  out[last + ".bias"] = (torch::matmul(wg64, b.to(torch::kFloat64)) + bg.to(torch::kFloat64)).to(b.scalar_type());
  if (!first.empty()) {
    ASSIGN_OR_RETURN(out[first + ".weight"], get(first + ".weight"));
    ASSIGN_OR_RETURN(out[first + ".bias"], get(first + ".bias"));
  }
  return out;
}

std::string EmbeddingName(const LlmConfig& llm) {
  return llm.kind == LlmKind::kOpt ? "language_model.model.decoder.embed_tokens.weight"
                                   : "language_model.model.embed_tokens.weight";
}

StatusOr<train::StageResult> RunTransferVpg(const JobSpec& job, const StageSpec& stage, comm::DeviceMesh& mesh,
                                            const train::StageRunOptions& options) {
  try {
    TransferVpg t(job, stage, mesh, options);
    return t.Run();
  } catch (const c10::Error& e) {
    return InternalError(fmt::format("stage '{}' (transfer_vpg): LibTorch error: {}", stage.name, e.what_without_backtrace()));
  } catch (const std::exception& e) {
    return InternalError(fmt::format("stage '{}' (transfer_vpg): {}", stage.name, e.what()));
  }
}

}  // namespace vlorch::transforms
