// Multi-model jobs, transform stages and their validation; the recipes in jobs/recipes;
// stage seals and job progress read from a run directory.
#include <sys/stat.h>

#include <filesystem>
#include <limits>
#include <fstream>

#include <gtest/gtest.h>

#include "jobs/job_plan.h"
#include "jobs/job_spec.h"
#include "jobs/job_state.h"
#include "jobs/model_schema.h"
#include "tests/jobs/spec_errors.h"

namespace vlorch {
namespace {
namespace fs = std::filesystem;

const char* kTransfer = R"(name: transfer
models:
  small:
    vision: {image_size: 32, patch_size: 8, hidden: 32, layers: 2, heads: 4, intermediate: 64}
    qformer: {num_queries: 4, hidden: 32, layers: 2, heads: 4, intermediate: 64}
    projector: {kind: linear}
    llm: {kind: opt, vocab_size: 264, hidden: 32, layers: 2, heads: 4, intermediate: 64}
  large:
    vision: {image_size: 32, patch_size: 8, hidden: 32, layers: 2, heads: 4, intermediate: 64}
    qformer: {num_queries: 4, hidden: 32, layers: 2, heads: 4, intermediate: 64}
    projector: {kind: linear}
    llm: {kind: llama, vocab_size: 300, hidden: 64, layers: 2, heads: 4, intermediate: 128}
data:
  stores: [data/captions]
stages:
  - name: vpg
    model: small
    trainable: ["qformer.*", "query_tokens", "language_projection.*"]
    steps: 10
  - name: move
    model: large
    init: {weights: [{path: llama.safetensors, prefix: language_model.}]}
    transform: {kind: transfer_vpg, from: vpg, steps: 20}
  - name: warmup
    model: large
    init: {stage: move}
    trainable: ["language_projection.*"]
    lr_multipliers: [{pattern: "language_projection.*", factor: 5}]
    data: {stores: [data/other], tokenizer: {kind: sentencepiece, model: tok.model}}
    epochs: 1
)";

StatusOr<JobSpec> Parse(const std::string& text) { return ParseJobSpec(text, "job.yaml", "/jobs"); }

TEST(JobStages, ParsesModelsTransformsAndStageData) {
  auto spec = Parse(kTransfer);
  ASSERT_TRUE(spec.ok()) << spec.status().ToString();
  ASSERT_EQ(spec->models.size(), 2u);
  EXPECT_EQ(spec->models[0].name, "small");
  EXPECT_EQ(spec->models[1].name, "large");
  const StageSpec& move = spec->stages[1];
  ASSERT_TRUE(move.transform.has_value());
  EXPECT_EQ(move.transform->kind, "transfer_vpg");
  EXPECT_EQ(move.transform->from, "vpg");
  EXPECT_EQ(move.transform->steps, 20);
  EXPECT_EQ(move.transform->pairs, "auto");
  EXPECT_EQ(spec->ModelOf(move).llm.kind, LlmKind::kLlama);
  EXPECT_EQ(spec->ModelOf(spec->stages[0]).llm.hidden, 32);
  EXPECT_EQ(spec->DataOf(spec->stages[0]).stores[0], "data/captions");
  EXPECT_EQ(spec->DataOf(spec->stages[2]).stores[0], "data/other");
  EXPECT_EQ(spec->DataOf(spec->stages[2]).tokenizer.kind, "sentencepiece");
}

using testing_util::BadCase;
using testing_util::ExpectSpecErrors;

TEST(JobStages, ValidationErrorsNameFileLineAndField) {
  ExpectSpecErrors(kTransfer, {
      // unknown modules in patterns
      {"[\"qformer.*\", \"query_tokens\"", "[\"qformr.*\", \"query_tokens\"",
       "job.yaml:18:17: stages[0].trainable[0]: 'qformr.*' matches no parameter of model 'small'"},
      {"pattern: \"language_projection.*\"", "pattern: \"projector.*\"",
       "stages[2].lr_multipliers[0].pattern: 'projector.*' matches no parameter of model 'large'"},
      // models
      {"    model: small\n", "    model: tiny\n", "stages[0].model: no model 'tiny'; the job defines: small, large"},
      {"    model: small\n", "", "stages[0].model: missing; the job defines models small, large: name one"},
      // init and transform order
      {"init: {stage: move}", "init: {stage: vpg}",
       "stages[2].init.stage: stage 'vpg' trains model 'small', whose parameters differ from model 'large'"},
      {"from: vpg", "from: warmup", "stages[1].transform.from: 'warmup' is not an earlier stage"},
      {"kind: transfer_vpg", "kind: upcycle", "transform.kind: 'upcycle' is not one of: transfer_vpg"},
      // a transform applied to a model that lacks the module
      {"    qformer: {num_queries: 4, hidden: 32, layers: 2, heads: 4, intermediate: 64}\n    projector: {kind: linear}\n"
       "    llm: {kind: llama",
       "    projector: {kind: linear}\n    llm: {kind: llama",
       "transfer_vpg moves the VPG (query_tokens, qformer) but target model 'large' has none"},
      {"  large:\n    vision: {image_size: 32, patch_size: 8, hidden: 32, layers: 2",
       "  large:\n    vision: {image_size: 32, patch_size: 8, hidden: 32, layers: 3",
       "differ in vision encoder or Q-Former"},
      {"    projector: {kind: linear}\n    llm: {kind: llama", "    projector: {kind: mlp}\n    llm: {kind: llama",
       "the projectors of 'small' and 'large' must be the same kind"},
      // training keys on a transform stage
      {"from: vpg, steps: 20}", "from: vpg, steps: 20}\n    steps: 5", "stages[1].steps: unknown key"},
      {"transform: {kind: transfer_vpg, from: vpg, steps: 20}", "transform: {kind: transfer_vpg, from: vpg, pairs: ids}",
       "transform.pairs: 'ids' is not one of: auto, shared_ids, captions"},
      // data
      {"data:\n  stores: [data/captions]\n", "", "stages[0].data: missing; give the job a `data` section"},
      {"models:", "model: {}\nmodels:", "give exactly one of `model` (one definition) and `models`"},
  });
}

TEST(ModelSchema, CountsAndNames) {
  auto spec = Parse(kTransfer);
  ASSERT_TRUE(spec.ok()) << spec.status().ToString();
  const auto small = ModelParameters(spec->models[0].config);
  const auto large = ModelParameters(spec->models[1].config);
  auto find = [](const std::vector<ParameterShape>& ps, const std::string& n) -> const ParameterShape* {
    for (const auto& p : ps)
      if (p.name == n) return &p;
    return nullptr;
  };
  ASSERT_NE(find(small, "language_projection.weight"), nullptr);
  EXPECT_EQ(find(small, "language_projection.weight")->shape, (std::vector<int64_t>{32, 32}));
  EXPECT_EQ(find(large, "language_projection.weight")->shape, (std::vector<int64_t>{64, 32}));
  EXPECT_EQ(find(small, "language_model.model.decoder.embed_positions.weight")->shape, (std::vector<int64_t>{2050, 32}));
  EXPECT_NE(find(large, "language_model.lm_head.weight"), nullptr);  // LLaMA: untied by default
  EXPECT_EQ(find(small, "language_model.lm_head.weight"), nullptr);  // OPT: tied
  EXPECT_EQ(find(large, "qformer.encoder.layer.1.crossattention.attention.key.weight"), nullptr);  // every other layer
  EXPECT_EQ(find(large, "qformer.encoder.layer.0.crossattention.attention.key.weight")->shape,
            (std::vector<int64_t>{32, 32}));
  EXPECT_TRUE(std::is_sorted(small.begin(), small.end(), [](auto& a, auto& b) { return a.name < b.name; }));
}

TEST(Recipes, ParseAndValidate) {
  for (const char* name : {"vpgtrans.yaml", "vpgtrans-tiny.yaml"}) {
    const std::string path = std::string(VLORCH_SOURCE_DIR) + "/jobs/recipes/" + name;
    auto spec = LoadJobSpec(path);
    ASSERT_TRUE(spec.ok()) << spec.status().ToString();
    int transforms = 0;
    for (const auto& s : spec->stages) transforms += s.transform.has_value();
    EXPECT_EQ(transforms, 1) << name;
    const StageSpec* warmup = spec->FindStage("projector_warmup");
    ASSERT_NE(warmup, nullptr) << name;
    ASSERT_EQ(warmup->lr_multipliers.size(), 1u);
    EXPECT_DOUBLE_EQ(warmup->lr_multipliers[0].factor, 5.0);
    EXPECT_EQ(warmup->schedule.kind, ScheduleKind::kConstant);
    EXPECT_DOUBLE_EQ(warmup->epochs, 1.0);
    // LLMs stay frozen in every stage after the transfer.
    bool after = false;
    for (const auto& s : spec->stages) {
      if (s.transform) after = true;
      if (!after || s.transform) continue;
      for (const auto& p : s.trainable) EXPECT_EQ(p.rfind("language_model", 0), std::string::npos) << name << " " << s.name;
    }
  }
}

TEST(JobPlan, CountsStepsParametersAndChecksTheLayout) {
  auto spec = Parse(kTransfer);
  ASSERT_TRUE(spec.ok());
  // 100 samples in data/other: one epoch at dp 4 x batch 8 is ceil(100 / 32) = 4 steps.
  auto plan = PlanJob(*spec, 4, [](const std::string& dir) -> StatusOr<int64_t> {
    if (dir == "/jobs/data/other") return int64_t{100};
    return NotFoundError("no store " + dir);
  });
  ASSERT_TRUE(plan.ok()) << plan.status().ToString();
  EXPECT_EQ(plan->layout.dp, 4);
  ASSERT_EQ(plan->stages.size(), 3u);
  const StagePlan& vpg = plan->stages[0];
  EXPECT_EQ(vpg.steps, 10);
  EXPECT_EQ(vpg.samples_per_step, 32);
  int64_t total = 0, projector = 0;
  for (const auto& p : ModelParameters(spec->models[0].config)) {
    total += p.numel();
    if (p.name.rfind("language_projection", 0) == 0) projector += p.numel();
  }
  EXPECT_EQ(vpg.trainable + vpg.frozen, total);
  EXPECT_EQ(vpg.trained_by_module.at("language_projection"), projector);
  EXPECT_EQ(vpg.trained_by_module.count("language_model"), 0u);
  ASSERT_EQ(vpg.notes.size(), 1u);  // its store could not be counted
  EXPECT_EQ(plan->stages[1].kind, "transfer_vpg");
  EXPECT_EQ(plan->stages[1].trainable, 0);
  EXPECT_EQ(plan->stages[2].steps, 4);
  EXPECT_EQ(plan->stages[2].samples_per_epoch, 100);
  EXPECT_NE(FormatPlan(*spec, *plan).find("trains"), std::string::npos);

  std::string text = kTransfer;
  text.replace(text.find("stages:"), 7, "layout: {tp: 2}\nstages:");
  auto tp2 = Parse(text);
  ASSERT_TRUE(tp2.ok()) << tp2.status().ToString();
  auto bad = PlanJob(*tp2, 3);
  EXPECT_EQ(bad.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("job.yaml: layout:"), std::string::npos) << bad.status().message();
  EXPECT_TRUE(PlanJob(*tp2, 4).ok());
}

// A checkpoint directory as the worker commits one: files + manifest.json.
std::string MakeCheckpoint(const fs::path& dir, const std::string& content) {
  fs::create_directories(dir);
  std::ofstream(dir / "model.safetensors") << content;
  std::ofstream(dir / "manifest.json") << "{\"step\": 4, \"files\": [{\"name\": \"model.safetensors\", \"crc\": \""
                                       << content << "\"}]}";
  return dir.string();
}

TEST(JobState, SealVerifyAndProgress) {
  const fs::path run = fs::temp_directory_path() / ("vlorch-jobstate-" + std::to_string(::getpid()));
  fs::remove_all(run);
  auto spec = Parse(kTransfer);
  ASSERT_TRUE(spec.ok());

  auto progress = ReadJobProgress(*spec, run.string());
  ASSERT_TRUE(progress.ok());
  for (const auto& p : *progress) EXPECT_EQ(p.status, StageStatus::kPending);

  const std::string ck = MakeCheckpoint(fs::path(StageDir(run.string(), "vpg")) / "checkpoints" / "step-00000010", "a");
  std::ofstream(fs::path(StageDir(run.string(), "vpg")) / "checkpoints" / "latest") << "step-00000010\n";
  progress = ReadJobProgress(*spec, run.string());
  ASSERT_TRUE(progress.ok());
  EXPECT_EQ((*progress)[0].status, StageStatus::kInProgress);
  EXPECT_EQ((*progress)[0].latest_step, 10);

  StageSeal seal;
  seal.stage = "vpg";
  seal.checkpoint = ck;
  seal.steps = 10;
  seal.loss = std::numeric_limits<double>::quiet_NaN();  // a diverged stage: JSON null, read back as 0
  ASSERT_TRUE(SealStage(run.string(), seal).ok());
  auto read = ReadStageSeal(run.string(), "vpg");
  ASSERT_TRUE(read.ok() && read->has_value()) << read.status().ToString();
  EXPECT_EQ((*read)->checkpoint, ck);
  EXPECT_EQ((*read)->steps, 10);
  EXPECT_TRUE(VerifySealedCheckpoint(**read).ok());
  // The preemption record: absent, written, read back; a damaged one is no record at all.
  EXPECT_FALSE(ReadPreemptionRecord(run.string(), "vpg").has_value());
  ASSERT_TRUE(WritePreemptionRecord(run.string(), "vpg", {3, 7, ck}).ok());
  auto pre = ReadPreemptionRecord(run.string(), "vpg");
  ASSERT_TRUE(pre.has_value());
  EXPECT_EQ(pre->incarnation, 3);
  EXPECT_EQ(pre->step, 7);
  EXPECT_EQ(pre->checkpoint, ck);
  std::ofstream(fs::path(StageDir(run.string(), "vpg")) / "preempted.json") << "{\"incarnation\": \"3\"";
  EXPECT_FALSE(ReadPreemptionRecord(run.string(), "vpg").has_value());
  struct stat st {};
  ASSERT_EQ(::stat((fs::path(ck) / "model.safetensors").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0222, 0u) << "sealed files are read-only";
  progress = ReadJobProgress(*spec, run.string());
  EXPECT_EQ((*progress)[0].status, StageStatus::kSealed);
  EXPECT_EQ((*progress)[1].status, StageStatus::kPending);

  // Sealing again with the same checkpoint is a no-op; with another one it is refused.
  EXPECT_TRUE(SealStage(run.string(), seal).ok());
  StageSeal other = seal;
  other.checkpoint = MakeCheckpoint(fs::path(StageDir(run.string(), "vpg")) / "checkpoints" / "step-00000011", "b");
  EXPECT_EQ(SealStage(run.string(), other).code(), StatusCode::kFailedPrecondition);

  // A changed manifest is caught, naming the stage.
  fs::permissions(fs::path(ck) / "manifest.json", fs::perms::owner_write, fs::perm_options::add);
  std::ofstream(fs::path(ck) / "manifest.json", std::ios::app) << " ";
  Status s = VerifySealedCheckpoint(**read);
  EXPECT_EQ(s.code(), StatusCode::kCorruption);
  EXPECT_NE(s.message().find("changed after sealing"), std::string::npos) << s.message();
  EXPECT_NE(s.message().find("'vpg'"), std::string::npos) << s.message();

  // A damaged seal file is an error naming it, not "not sealed".
  std::ofstream(fs::path(StageDir(run.string(), "move")) / "state.json") << "{\"status\": \"do";
  fs::create_directories(StageDir(run.string(), "move"));
  std::ofstream(fs::path(StageDir(run.string(), "move")) / "state.json") << "{\"status\": \"do";
  auto bad = ReadStageSeal(run.string(), "move");
  EXPECT_EQ(bad.status().code(), StatusCode::kCorruption);
  EXPECT_NE(bad.status().message().find("state.json"), std::string::npos);
  fs::remove_all(run);
}

}  // namespace
}  // namespace vlorch
