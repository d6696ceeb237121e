#include "jobs/job_spec.h"

#include <gtest/gtest.h>

#include "tests/jobs/spec_errors.h"

namespace vlorch {
namespace {

const char* kGood = R"(name: tiny
seed: 7
model:
  vision: {image_size: 32, patch_size: 8, hidden: 64, layers: 2, heads: 4, intermediate: 128}
  qformer: {num_queries: 8, hidden: 64, layers: 2, heads: 4, intermediate: 128}
  projector: {kind: mlp, hidden: 96}
  llm: {kind: llama, vocab_size: 300, hidden: 64, layers: 2, heads: 4, kv_heads: 2, intermediate: 128}
data:
  stores: [data/a, /abs/b]
  weights: [5, 1]
  tokenizer: {kind: byte}
stages:
  - name: warmup
    trainable: ["language_projection.*"]
    lr_multipliers: [{pattern: "language_projection.*", factor: 5}]
    schedule: {kind: constant}
    epochs: 1
  - name: main
    init: {stage: warmup, weights: [{path: llm.safetensors, prefix: language_model.}]}
    trainable: ["qformer.*", "language_projection.*"]
    optimizer: {lr: 2.0e-4, beta2: 0.98, weight_decay: 0.05}
    schedule: {warmup_steps: 10, min_lr: 1.0e-5, per: epoch}
    steps: 100
    batch_size: 4
    grad_accum: 2
    clip_grad_norm: 1.0
    checkpoint: {every_steps: 25, keep: 2, async: false}
)";

StatusOr<JobSpec> Parse(const std::string& text) { return ParseJobSpec(text, "job.yaml", "/jobs"); }

TEST(JobSpec, ParsesEveryField) {
  auto spec = Parse(kGood);
  ASSERT_TRUE(spec.ok()) << spec.status().ToString();
  EXPECT_EQ(spec->name, "tiny");
  EXPECT_EQ(spec->seed, 7u);
  EXPECT_EQ(spec->run_dir, "/jobs/runs/tiny");
  EXPECT_EQ(spec->models[0].config.llm.kind, LlmKind::kLlama);
  EXPECT_FALSE(spec->models[0].config.llm.tie_embeddings);  // LLaMA's default
  EXPECT_EQ(spec->models[0].config.llm.kv_heads, 2);
  EXPECT_EQ(spec->models[0].config.projector.kind, ProjectorKind::kMlp);
  EXPECT_EQ(spec->models[0].config.visual_tokens(), 8);
  EXPECT_EQ(spec->Resolve(spec->data.stores[0]), "/jobs/data/a");
  EXPECT_EQ(spec->Resolve(spec->data.stores[1]), "/abs/b");
  ASSERT_EQ(spec->stages.size(), 2u);
  const StageSpec& main = spec->stages[1];
  EXPECT_EQ(main.init_stage, "warmup");
  ASSERT_EQ(main.init_weights.size(), 1u);
  EXPECT_EQ(main.init_weights[0].prefix, "language_model.");
  EXPECT_DOUBLE_EQ(main.optimizer.beta2, 0.98);
  EXPECT_TRUE(main.schedule.per_epoch);
  EXPECT_EQ(main.grad_accum, 2);
  EXPECT_FALSE(main.checkpoint.async);
  EXPECT_DOUBLE_EQ(spec->stages[0].lr_multipliers[0].factor, 5.0);
  EXPECT_EQ(spec->stages[0].schedule.kind, ScheduleKind::kConstant);
}

// Each bad spec names file, line and field.
using testing_util::BadCase;

TEST(JobSpec, ErrorsNameFileLineAndField) {
  const std::vector<BadCase> cases = {
      {"seed: 7", "seed: 7\nsede: 8", "job.yaml:3:1: sede: unknown key"},
      {"batch_size: 4", "batch_size: four", "stages[1].batch_size: 'four' is not a valid integer"},
      {"grad_accum: 2", "grad_accum: 0", "stages[1].grad_accum: 0 is out of range"},
      {"init: {stage: warmup,", "init: {stage: later,", "stages[1].init.stage: 'later' is not an earlier stage"},
      {"- name: main", "- name: warmup", "duplicate stage 'warmup'"},
      {"kind: llama", "kind: gpt", "model.llm.kind: 'gpt' is not one of: opt, llama"},
      {"weights: [5, 1]", "weights: [5]", "data.weights: 1 weights for 2 stores"},
      {"    steps: 100\n", "", "give exactly one of `steps` and `epochs`"},
      {"patch_size: 8", "patch_size: 7", "image_size 32 is not a multiple of patch_size 7"},
      {"kv_heads: 2", "kv_heads: 3", "heads 4 is not divisible by kv_heads 3"},
      {"- name: main", "- name: ma/in", "stages[1].name: use letters"},
      {"tokenizer: {kind: byte}", "tokenizer: {kind: gpt2}", "gpt2 needs `vocab`"},
      {"stores: [data/a, /abs/b]", "stores: []", "data.stores: missing"},
      {"trainable: [\"qformer.*\", \"language_projection.*\"]", "trainable: []", "stages[1].trainable: missing"},
      // Names and run directories that would climb out of where runs go.
      {"name: tiny", "name: ../../etc", "name: use letters, digits"},
      {"name: tiny", "name: .hidden", "name: use letters, digits"},
      {"seed: 7", "seed: 7\nrun_dir: ../../outside", "run_dir: '../../outside' climbs out of the spec's folder"},
      {"seed: 7", "seed: 7\nrun_dir: runs/../../x", "climbs out"},
  };
  testing_util::ExpectSpecErrors(kGood, cases);
}

TEST(JobSpec, MalformedYamlNamesTheLine) {
  auto spec = Parse("name: x\nmodel: [unclosed\n");
  ASSERT_FALSE(spec.ok());
  EXPECT_NE(spec.status().message().find("job.yaml:"), std::string::npos) << spec.status().message();
  EXPECT_NE(spec.status().message().find("not valid YAML"), std::string::npos);
}

TEST(JobSpec, MissingFileIsNotFound) {
  EXPECT_EQ(LoadJobSpec("/nonexistent/job.yaml").status().code(), StatusCode::kNotFound);
}

TEST(Glob, MatchesParameterNames) {
  EXPECT_TRUE(MatchesGlob("qformer.*", "qformer.encoder.layer.0.attention.attention.query.weight"));
  EXPECT_FALSE(MatchesGlob("qformer.*", "query_tokens"));
  EXPECT_TRUE(MatchesGlob("*.bias", "vision_model.post_layernorm.bias"));
  EXPECT_TRUE(MatchesGlob("language_model.*layers.1.*", "language_model.model.decoder.layers.1.fc1.weight"));
  EXPECT_FALSE(MatchesGlob("language_model.*layers.1.*", "language_model.model.decoder.layers.0.fc1.weight"));
  EXPECT_TRUE(MatchesGlob("query_tokens", "query_tokens"));
  EXPECT_FALSE(MatchesGlob("query_tokens", "query_tokens2"));
  EXPECT_TRUE(MatchesGlob("*", ""));
}

}  // namespace
}  // namespace vlorch
