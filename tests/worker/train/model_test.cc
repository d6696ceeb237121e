#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <set>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <gtest/gtest.h>

#include "common/safetensors.h"
#include "dataflow/prompt_template.h"
#include "worker/models/vl_model.h"
#include "worker/models/weights.h"

namespace vlorch::models {
namespace {
namespace fs = std::filesystem;

ModelConfig Tiny(LlmKind kind) {
  ModelConfig c;
  c.vision = VisionConfig{};
  c.vision.image_size = 32, c.vision.patch_size = 8, c.vision.hidden = 32, c.vision.layers = 2, c.vision.heads = 4,
  c.vision.intermediate = 64;
  c.qformer.num_queries = 4, c.qformer.hidden = 32, c.qformer.layers = 2, c.qformer.heads = 4,
  c.qformer.intermediate = 64;
  c.llm.kind = kind, c.llm.vocab_size = 64, c.llm.hidden = 32, c.llm.layers = 2, c.llm.heads = 4,
  c.llm.intermediate = 64, c.llm.max_positions = 64;
  if (kind == LlmKind::kLlama) c.llm.kv_heads = 2, c.llm.tie_embeddings = false;
  return c;
}

std::set<std::string> Names(const VLModel& m) {
  std::set<std::string> out;
  for (const auto& [n, t] : m.SortedParameters()) out.insert(n);
  return out;
}

TEST(VLModel, ParameterNamesAreHuggingFaces) {
  auto opt = VLModel::Create(Tiny(LlmKind::kOpt), 1);
  ASSERT_TRUE(opt.ok()) << opt.status().ToString();
  const auto names = Names(**opt);
  for (const char* n : {
           "vision_model.embeddings.class_embedding", "vision_model.embeddings.patch_embedding.weight",
           "vision_model.embeddings.position_embedding", "vision_model.encoder.layers.1.self_attn.qkv.weight",
           "vision_model.encoder.layers.0.self_attn.q_bias", "vision_model.encoder.layers.0.self_attn.projection.bias",
           "vision_model.encoder.layers.0.mlp.fc1.weight", "vision_model.encoder.layers.0.layer_norm2.bias",
           "vision_model.post_layernorm.weight", "query_tokens", "qformer.layernorm.weight",
           "qformer.encoder.layer.0.attention.attention.query.weight",
           "qformer.encoder.layer.0.attention.output.LayerNorm.weight",
           "qformer.encoder.layer.0.crossattention.attention.key.weight",
           "qformer.encoder.layer.1.intermediate_query.dense.weight", "qformer.encoder.layer.1.output_query.dense.bias",
           "language_projection.weight", "language_model.model.decoder.embed_tokens.weight",
           "language_model.model.decoder.embed_positions.weight",
           "language_model.model.decoder.layers.1.self_attn.out_proj.weight",
           "language_model.model.decoder.layers.0.self_attn_layer_norm.weight",
           "language_model.model.decoder.layers.0.fc2.bias", "language_model.model.decoder.final_layer_norm.weight"})
    EXPECT_TRUE(names.count(n)) << n;
  // Cross-attention only every second layer (cross_attention_frequency 2); OPT's head is tied.
  EXPECT_FALSE(names.count("qformer.encoder.layer.1.crossattention.attention.key.weight"));
  EXPECT_FALSE(names.count("language_model.lm_head.weight"));
  // OPT's learned positions carry the offset of 2.
  for (const auto& [n, t] : (*opt)->SortedParameters())
    if (n == "language_model.model.decoder.embed_positions.weight") {
      EXPECT_EQ(t.size(0), 64 + 2);
    }

  auto llama = VLModel::Create(Tiny(LlmKind::kLlama), 1);
  ASSERT_TRUE(llama.ok());
  const auto ln = Names(**llama);
  for (const char* n : {"language_model.model.embed_tokens.weight", "language_model.model.layers.0.self_attn.k_proj.weight",
                        "language_model.model.layers.1.mlp.gate_proj.weight", "language_model.model.layers.1.mlp.down_proj.weight",
                        "language_model.model.layers.0.input_layernorm.weight",
                        "language_model.model.layers.0.post_attention_layernorm.weight", "language_model.model.norm.weight",
                        "language_model.lm_head.weight"})
    EXPECT_TRUE(ln.count(n)) << n;
  for (const auto& [n, t] : (*llama)->SortedParameters())
    if (n == "language_model.model.layers.0.self_attn.k_proj.weight") {
      EXPECT_EQ(t.size(0), 16);  // 2 kv heads x 8
    }
}

TEST(VLModel, SameSeedSameWeightsOtherSeedOther) {
  auto a = VLModel::Create(Tiny(LlmKind::kOpt), 5), b = VLModel::Create(Tiny(LlmKind::kOpt), 5),
       c = VLModel::Create(Tiny(LlmKind::kOpt), 6);
  auto pa = (*a)->SortedParameters(), pb = (*b)->SortedParameters(), pc = (*c)->SortedParameters();
  bool all_equal = true, any_differs = false;
  for (size_t i = 0; i < pa.size(); ++i) {
    all_equal &= torch::equal(pa[i].second, pb[i].second);
    any_differs |= !torch::equal(pa[i].second, pc[i].second);
  }
  EXPECT_TRUE(all_equal);
  EXPECT_TRUE(any_differs);
}

dataflow::Batch MakeBatch(const ModelConfig& c, bool with_images) {
  dataflow::Batch b;
  const int64_t B = 2, L = 16;
  b.input_ids = torch::randint(3, c.llm.vocab_size, {B, L}, torch::kInt64);
  b.attention_mask = torch::ones({B, L}, torch::kInt64);
  b.attention_mask[1].slice(0, 12).fill_(0);  // row 1 is padded
  b.labels = b.input_ids.clone();
  b.labels.slice(1, 0, 6).fill_(dataflow::kIgnoreIndex);
  b.labels[1].slice(0, 12).fill_(dataflow::kIgnoreIndex);
  if (with_images) {
    b.images = torch::randn({2, 3, c.vision.image_size, c.vision.image_size});
    b.image_positions = torch::tensor({0, 1, 1, 1}, torch::kInt64).view({2, 2});
  }
  b.keys = {"a", "b"};
  return b;
}

TEST(VLModel, ForwardBackwardReachesEveryModule) {
  for (LlmKind kind : {LlmKind::kOpt, LlmKind::kLlama}) {
    auto m = VLModel::Create(Tiny(kind), 3);
    ASSERT_TRUE(m.ok());
    torch::manual_seed(0);
    dataflow::Batch b = MakeBatch((*m)->config(), true);
    ModelOutput out = (*m)->Forward(b);
    EXPECT_EQ(out.label_tokens, 10 + 6);  // labels[:, 1:] that are not ignored
    const double loss = out.loss_sum.item<double>() / out.label_tokens;
    EXPECT_NEAR(loss, std::log(64.0), 1.0);  // near-uniform at init
    out.loss_sum.backward();
    for (const auto& [n, p] : (*m)->SortedParameters()) {
      ASSERT_TRUE(p.grad().defined()) << n;
      // Every module sits on the path from the image to the loss (q_bias starts at zero but
      // still gets a gradient).
      if (n.find("embed_positions") == std::string::npos) {
        EXPECT_GT(p.grad().abs().sum().item<double>(), 0) << n;
      }
    }
  }
}

TEST(VLModel, VisualTokensChangeTheLossOnlyThroughImageSlots) {
  auto m = VLModel::Create(Tiny(LlmKind::kOpt), 3);
  torch::manual_seed(1);
  dataflow::Batch b = MakeBatch((*m)->config(), true);
  torch::NoGradGuard ng;
  const double with_a = (*m)->Forward(b).loss_sum.item<double>();
  b.images = b.images + 1.0;
  const double with_b = (*m)->Forward(b).loss_sum.item<double>();
  EXPECT_NE(with_a, with_b);
  // The placeholder ids under the image slots do not matter: they are overwritten.
  dataflow::Batch c = b;
  c.input_ids = b.input_ids.clone();
  c.input_ids[0].slice(0, 1, 5).fill_(7);
  EXPECT_EQ((*m)->Forward(c).loss_sum.item<double>(), with_b);
}

TEST(VLModel, TooFewImageSlotsIsAnError) {
  auto m = VLModel::Create(Tiny(LlmKind::kOpt), 3);
  dataflow::Batch b = MakeBatch((*m)->config(), true);
  b.image_positions = torch::tensor({0, 14, 1, 1}, torch::kInt64).view({2, 2});  // 4 tokens from 14 > 16
  EXPECT_THROW((*m)->Forward(b), c10::Error);
}

// The decoder computes only real tokens, and its last layer only the positions with a label
// next (llm.cc): a sample's loss and gradients must not depend on how long its batchmates
// are, how much padding it gets, or which rows the last layer skipped. Each sample of a padded
// batch is run again alone at its own length; the batch's loss and gradients are the sums.
TEST(VLModel, PaddingAndBatchmatesChangeNoSamplesLossOrGradient) {
  for (LlmKind kind : {LlmKind::kOpt, LlmKind::kLlama}) {
    auto m = VLModel::Create(Tiny(kind), 4);
    ASSERT_TRUE(m.ok());
    const ModelConfig& c = (*m)->config();
    torch::manual_seed(2);
    const int64_t L = 16, lengths[] = {16, 11, 7};
    dataflow::Batch b;
    b.input_ids = torch::randint(3, c.llm.vocab_size, {3, L}, torch::kInt64);
    b.attention_mask = torch::zeros({3, L}, torch::kInt64);
    b.labels = b.input_ids.clone();
    for (int i = 0; i < 3; ++i) {
      b.attention_mask[i].slice(0, 0, lengths[i]).fill_(1);
      b.labels[i].slice(0, lengths[i]).fill_(dataflow::kIgnoreIndex);
    }
    b.labels.slice(1, 0, 5).fill_(dataflow::kIgnoreIndex);  // BOS and the image slots
    b.images = torch::randn({3, 3, c.vision.image_size, c.vision.image_size});
    b.image_positions = torch::tensor({0, 1, 1, 1, 2, 1}, torch::kInt64).view({3, 2});

    auto grads = [&](const dataflow::Batch& batch, ModelOutput* out) {
      for (auto& [n, p] : (*m)->SortedParameters()) p.mutable_grad() = torch::Tensor();
      *out = (*m)->Forward(batch);
      out->loss_sum.backward();
      std::vector<torch::Tensor> g;
      for (auto& [n, p] : (*m)->SortedParameters()) g.push_back(p.grad().clone());
      return g;
    };
    ModelOutput whole;
    const std::vector<torch::Tensor> g_whole = grads(b, &whole);
    EXPECT_EQ(whole.label_tokens, (16 - 5) + (11 - 5) + (7 - 5));  // labels from position 5 on
    double loss_sum = 0;
    int64_t tokens = 0;
    std::vector<torch::Tensor> g_sum;
    for (int i = 0; i < 3; ++i) {
      dataflow::Batch one;
      one.input_ids = b.input_ids.slice(0, i, i + 1).slice(1, 0, lengths[i]);
      one.attention_mask = b.attention_mask.slice(0, i, i + 1).slice(1, 0, lengths[i]);
      one.labels = b.labels.slice(0, i, i + 1).slice(1, 0, lengths[i]);
      one.images = b.images.slice(0, i, i + 1);
      one.image_positions = torch::tensor({0, 1}, torch::kInt64).view({1, 2});
      ModelOutput o;
      std::vector<torch::Tensor> g = grads(one, &o);
      loss_sum += o.loss_sum.item<double>();
      tokens += o.label_tokens;
      if (g_sum.empty()) g_sum = g;
      else for (size_t k = 0; k < g.size(); ++k) g_sum[k] += g[k];
    }
    EXPECT_EQ(tokens, whole.label_tokens);
    EXPECT_NEAR(whole.loss_sum.item<double>(), loss_sum, 1e-4 * loss_sum);
    // float32 sums in another order: agreement to ~1e-6 of the gradients' scale.
    const auto names = (*m)->SortedParameters();
    for (size_t k = 0; k < g_sum.size(); ++k)
      EXPECT_TRUE(torch::allclose(g_whole[k], g_sum[k], 1e-3, 1e-5))
          << names[k].first << ": max diff " << (g_whole[k] - g_sum[k]).abs().max().item<double>();
  }
}

TEST(VLModel, ALabelOnPaddingIsAnError) {
  auto m = VLModel::Create(Tiny(LlmKind::kOpt), 3);
  dataflow::Batch b = MakeBatch((*m)->config(), true);
  b.labels[1][14] = 5;  // row 1 is padding from 12 on: position 13 would have to predict it
  EXPECT_THROW((*m)->Forward(b), c10::Error);
}

class WeightsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / fmt::format("vlorch-weights-{}", ::getpid());
    fs::create_directories(dir_);
    model_ = *VLModel::Create(Tiny(LlmKind::kOpt), 1);
  }
  void TearDown() override { fs::remove_all(dir_); }

  // Writes the LLM's parameters (without the language_model. prefix) as an HF checkpoint,
  // filled with distinct values, optionally in another dtype, renamed or reshaped.
  std::string WriteLlm(const std::string& file, torch::ScalarType dtype, const std::string& rename_from = "",
                       const std::string& rename_to = "", const std::string& reshape = "") {
    std::vector<torch::Tensor> keep;
    std::vector<safetensors::TensorToWrite> w;
    int k = 0;
    for (const auto& [n, t] : model_->SortedParameters()) {
      if (n.rfind("language_model.", 0) != 0) continue;
      std::string name = n.substr(15);
      torch::Tensor v = torch::full(t.sizes(), 0.01 * ++k).to(dtype);
      if (name == reshape) v = torch::zeros({3, 3}).to(dtype);
      if (name == rename_from) name = rename_to;
      keep.push_back(v);
      safetensors::TensorToWrite tw;
      tw.name = name;
      tw.dtype = *SafetensorsDtype(dtype);
      tw.shape.assign(v.sizes().begin(), v.sizes().end());
      tw.data = v.data_ptr();
      tw.nbytes = v.numel() * v.element_size();
      w.push_back(tw);
    }
    const std::string path = (dir_ / file).string();
    EXPECT_TRUE(safetensors::WriteFile(path, w, {}).ok());
    return path;
  }

  fs::path dir_;
  std::shared_ptr<VLModel> model_;
};

TEST_F(WeightsTest, LoadsAnLlmCheckpointUnderAPrefixAndConvertsDtype) {
  const std::string path = WriteLlm("llm.safetensors", torch::kBFloat16);
  auto params = model_->SortedParameters();
  const torch::Tensor vision_before = params[params.size() - 1].second.clone();
  auto r = LoadWeights(params, path, "language_model.");
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_GT(r->tensors, 10);
  EXPECT_EQ(r->converted, r->tensors);
  int k = 0;
  for (const auto& [n, t] : model_->SortedParameters()) {
    if (n.rfind("language_model.", 0) != 0) continue;
    const float want = torch::tensor(0.01f * ++k).to(torch::kBFloat16).item<float>();
    EXPECT_EQ(t.flatten()[0].item<float>(), want) << n;
  }
  EXPECT_TRUE(torch::equal(params[params.size() - 1].second, vision_before));  // untouched
}

TEST_F(WeightsTest, WrongNameOrShapeListsTheNamesAndChangesNothing) {
  const std::string path = WriteLlm("bad.safetensors", torch::kFloat32, "model.decoder.layers.0.fc1.weight",
                                    "model.decoder.layers.0.fc_1.weight", "model.decoder.layers.1.fc2.weight");
  auto params = model_->SortedParameters();
  std::vector<torch::Tensor> before;
  for (const auto& [n, t] : params) before.push_back(t.clone());
  auto r = LoadWeights(params, path, "language_model.");
  ASSERT_FALSE(r.ok());
  const std::string msg = r.status().message();  // status() returns a copy: keep the text, not a reference into it
  EXPECT_NE(msg.find("1 missing: language_model.model.decoder.layers.0.fc1.weight"), std::string::npos) << msg;
  EXPECT_NE(msg.find("1 unexpected: language_model.model.decoder.layers.0.fc_1.weight"), std::string::npos) << msg;
  EXPECT_NE(msg.find("language_model.model.decoder.layers.1.fc2.weight: file"), std::string::npos) << msg;
  EXPECT_NE(msg.find("has [3,3], model wants [32,64]"), std::string::npos) << msg;
  for (size_t i = 0; i < params.size(); ++i) EXPECT_TRUE(torch::equal(params[i].second, before[i])) << params[i].first;
}

TEST_F(WeightsTest, ShardedIndexLoadsEveryShard) {
  // Split the LLM over two files and index them as transformers does.
  auto params = model_->SortedParameters();
  std::vector<torch::Tensor> keep;
  std::vector<safetensors::TensorToWrite> a, b;
  nlohmann::json index;
  int k = 0;
  for (const auto& [n, t] : params) {
    if (n.rfind("language_model.", 0) != 0) continue;
    torch::Tensor v = torch::full(t.sizes(), 0.5 + ++k);
    keep.push_back(v);
    safetensors::TensorToWrite tw{n.substr(15), safetensors::Dtype::kF32, {}, v.data_ptr(),
                                  static_cast<size_t>(v.numel() * 4)};
    tw.shape.assign(v.sizes().begin(), v.sizes().end());
    const bool first = k % 2;
    (first ? a : b).push_back(tw);
    index["weight_map"][tw.name] = first ? "model-00001-of-00002.safetensors" : "model-00002-of-00002.safetensors";
  }
  ASSERT_TRUE(safetensors::WriteFile((dir_ / "model-00001-of-00002.safetensors").string(), a, {}).ok());
  ASSERT_TRUE(safetensors::WriteFile((dir_ / "model-00002-of-00002.safetensors").string(), b, {}).ok());
  std::ofstream(dir_ / "model.safetensors.index.json") << index.dump();
  auto r = LoadWeights(params, dir_.string(), "language_model.");
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->files.size(), 2u);
  k = 0;
  for (const auto& [n, t] : params)
    if (n.rfind("language_model.", 0) == 0) {
      EXPECT_EQ(t.flatten()[0].item<float>(), 0.5f + ++k) << n;
    }

  std::ofstream(dir_ / "model.safetensors.index.json") << "{\"weight_map\": {\"x\": \"../etc/passwd\"}}";
  auto bad = LoadWeights(params, dir_.string(), "language_model.");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("must name a file beside the index"), std::string::npos);
}

}  // namespace
}  // namespace vlorch::models
