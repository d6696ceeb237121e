// transfer_vpg's pieces: the fused projector is the composition of converter and source
// projector; token pairs from shared ids and from captions; and jobs/model_schema (used by
// the spec validator and `vlorch job plan`) names exactly the LibTorch model's parameters.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "jobs/model_schema.h"
#include "worker/models/vl_model.h"
#include "worker/transforms/transfer_vpg.h"

namespace vlorch::transforms {
namespace {

ModelConfig Tiny(ProjectorKind projector, LlmKind llm, bool qformer) {
  ModelConfig c;
  c.vision = VisionConfig{};
  c.vision.image_size = 16, c.vision.patch_size = 8, c.vision.hidden = 16, c.vision.layers = 2, c.vision.heads = 2,
  c.vision.intermediate = 32;
  c.use_qformer = qformer;
  c.qformer.num_queries = 3, c.qformer.hidden = 16, c.qformer.layers = 3, c.qformer.heads = 2, c.qformer.intermediate = 24;
  c.projector.kind = projector;
  c.projector.hidden = projector == ProjectorKind::kLinear ? 0 : 20;
  c.llm.kind = llm;
  c.llm.vocab_size = 40, c.llm.hidden = 24, c.llm.layers = 2, c.llm.heads = 4, c.llm.intermediate = 48;
  c.llm.max_positions = 32;
  if (llm == LlmKind::kLlama) c.llm.tie_embeddings = false, c.llm.kv_heads = 2;
  return c;
}

TEST(ModelSchema, MatchesTheLibTorchModelNameForName) {
  for (ProjectorKind pk : {ProjectorKind::kLinear, ProjectorKind::kMlp, ProjectorKind::kTwoLinear})
    for (LlmKind lk : {LlmKind::kOpt, LlmKind::kLlama})
      for (bool q : {true, false}) {
        const ModelConfig c = Tiny(pk, lk, q);
        auto model = models::VLModel::Create(c, 1);
        ASSERT_TRUE(model.ok()) << model.status().ToString();
        const auto params = (*model)->SortedParameters();
        const auto schema = ModelParameters(c);
        ASSERT_EQ(params.size(), schema.size()) << ProjectorKindName(pk) << " " << LlmKindName(lk) << " qformer " << q;
        for (size_t i = 0; i < params.size(); ++i) {
          EXPECT_EQ(params[i].first, schema[i].name);
          EXPECT_EQ(params[i].second.sizes().vec(), schema[i].shape) << schema[i].name;
        }
      }
}

TEST(FuseProjector, EqualsConverterAfterSourceProjector) {
  torch::manual_seed(3);
  const int64_t in = 16, inner = 20, ds = 24, dt = 40;
  const torch::Tensor wg = torch::randn({dt, ds}), bg = torch::randn({dt});
  const torch::Tensor x = torch::randn({7, 5, in});
  for (ProjectorKind kind : {ProjectorKind::kLinear, ProjectorKind::kMlp, ProjectorKind::kTwoLinear}) {
    std::map<std::string, torch::Tensor> src;
    torch::Tensor expected, fused_out;
    auto g = [&](const torch::Tensor& h) { return torch::matmul(h, wg.t()) + bg; };
    if (kind == ProjectorKind::kLinear) {
      src = {{"language_projection.weight", torch::randn({ds, in})}, {"language_projection.bias", torch::randn({ds})}};
      expected = g(torch::matmul(x, src["language_projection.weight"].t()) + src["language_projection.bias"]);
    } else {
      const std::string last = kind == ProjectorKind::kMlp ? "language_projection.2" : "language_projection.1";
      src = {{"language_projection.0.weight", torch::randn({inner, in})},
             {"language_projection.0.bias", torch::randn({inner})},
             {last + ".weight", torch::randn({ds, inner})},
             {last + ".bias", torch::randn({ds})}};
      torch::Tensor h = torch::matmul(x, src["language_projection.0.weight"].t()) + src["language_projection.0.bias"];
      if (kind == ProjectorKind::kMlp) h = torch::gelu(h);
      expected = g(torch::matmul(h, src[last + ".weight"].t()) + src[last + ".bias"]);
    }
    auto fused = FuseProjector(kind, src, wg, bg);
    ASSERT_TRUE(fused.ok()) << fused.status().ToString();
    // Run the fused tensors through the real target projector module.
    ModelConfig c = Tiny(kind, LlmKind::kOpt, true);
    c.llm.hidden = dt;
    c.llm.heads = 4;
    c.llm.intermediate = 16;
    auto model = models::VLModel::Create(c, 1);
    ASSERT_TRUE(model.ok());
    torch::NoGradGuard no_grad;
    for (auto& [name, p] : (*model)->SortedParameters())
      if (fused->count(name)) p.copy_(fused->at(name));
    const torch::Tensor got = (*model)->Project(x);
    ASSERT_EQ(got.sizes(), expected.sizes());
    EXPECT_LT((got - expected).abs().max().item<double>(), 1e-4 * (1 + expected.abs().max().item<double>()))
        << ProjectorKindName(kind);
    // The first layer is carried over unchanged.
    if (kind != ProjectorKind::kLinear) {
      EXPECT_TRUE(torch::equal(fused->at("language_projection.0.weight"), src["language_projection.0.weight"]));
    }
  }
  std::map<std::string, torch::Tensor> wrong = {{"language_projection.weight", torch::randn({ds + 1, in})},
                                                {"language_projection.bias", torch::randn({ds + 1})}};
  auto bad = FuseProjector(ProjectorKind::kLinear, wrong, wg, bg);
  EXPECT_EQ(bad.status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(FuseProjector(ProjectorKind::kMlp, wrong, wg, bg).status().code(), StatusCode::kInvalidArgument);
}

// Word-level toy tokenizers: ids from a fixed vocabulary; the second splits "ab" words in two.
class WordTokenizer : public dataflow::Tokenizer {
 public:
  WordTokenizer(int offset, bool split) : offset_(offset), split_(split) {}
  std::vector<int32_t> EncodeText(std::string_view text) const override {
    std::vector<int32_t> ids;
    size_t i = 0;
    while (i < text.size()) {
      size_t j = text.find(' ', i);
      if (j == std::string_view::npos) j = text.size();
      const std::string_view w = text.substr(i, j - i);
      if (split_ && w == "ab") ids.push_back(offset_ + 100), ids.push_back(offset_ + 101);
      else ids.push_back(offset_ + static_cast<int32_t>(w.size()) * 10 + (w[0] - 'a'));
      i = j + 1;
    }
    return ids;
  }

 private:
  int offset_;
  bool split_;
};

TEST(TokenPairs, FromCaptionsOfEqualLengthOnly) {
  WordTokenizer src(0, false), dst(1000, true);
  const std::vector<std::string> captions = {"a b", "ab c", "b a", "a b"};
  TokenPairs p = CaptionPairs(src, dst, captions);
  EXPECT_EQ(p.mode, "captions");
  EXPECT_EQ(p.captions_read, 4);
  EXPECT_EQ(p.captions_used, 3);  // "ab c" splits differently
  // Unique, sorted pairs: a=10 -> 1010, b=11 -> 1011.
  EXPECT_EQ(p.source, (std::vector<int64_t>{10, 11}));
  EXPECT_EQ(p.target, (std::vector<int64_t>{1010, 1011}));

  TokenPairs ids = SharedIdPairs(5, 3);
  EXPECT_EQ(ids.source, (std::vector<int64_t>{0, 1, 2}));
  EXPECT_EQ(ids.target, ids.source);
}

}  // namespace
}  // namespace vlorch::transforms
