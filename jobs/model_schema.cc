#include "jobs/model_schema.h"

#include <algorithm>

#include <fmt/format.h>

namespace vlorch {
namespace {

class Builder {
 public:
  void Add(const std::string& name, std::vector<int64_t> shape) { out.push_back({name, std::move(shape)}); }
  void Linear(const std::string& prefix, int64_t in, int64_t out_features, bool bias = true) {
    Add(prefix + ".weight", {out_features, in});
    if (bias) Add(prefix + ".bias", {out_features});
  }
  void Norm(const std::string& prefix, int64_t n, bool bias = true) {
    Add(prefix + ".weight", {n});
    if (bias) Add(prefix + ".bias", {n});
  }
  std::vector<ParameterShape> out;
};

void Vision(Builder& b, const VisionConfig& c) {
  const std::string p = "vision_model.";
  b.Add(p + "embeddings.class_embedding", {1, 1, c.hidden});
  b.Add(p + "embeddings.patch_embedding.weight", {c.hidden, 3, c.patch_size, c.patch_size});
  b.Add(p + "embeddings.patch_embedding.bias", {c.hidden});
  b.Add(p + "embeddings.position_embedding", {1, c.num_patches() + 1, c.hidden});
  for (int i = 0; i < c.layers; ++i) {
    const std::string l = fmt::format("{}encoder.layers.{}.", p, i);
    b.Linear(l + "self_attn.qkv", c.hidden, 3 * c.hidden, false);
    b.Add(l + "self_attn.q_bias", {c.hidden});
    b.Add(l + "self_attn.v_bias", {c.hidden});
    b.Linear(l + "self_attn.projection", c.hidden, c.hidden);
    b.Norm(l + "layer_norm1", c.hidden);
    b.Linear(l + "mlp.fc1", c.hidden, c.intermediate);
    b.Linear(l + "mlp.fc2", c.intermediate, c.hidden);
    b.Norm(l + "layer_norm2", c.hidden);
  }
  b.Norm(p + "post_layernorm", c.hidden);
}

void QFormer(Builder& b, const QFormerConfig& c, int vision_hidden) {
  b.Add("query_tokens", {1, c.num_queries, c.hidden});
  b.Norm("qformer.layernorm", c.hidden);
  auto attention = [&](const std::string& p, int kv_in) {
    b.Linear(p + "attention.query", c.hidden, c.hidden);
    b.Linear(p + "attention.key", kv_in, c.hidden);
    b.Linear(p + "attention.value", kv_in, c.hidden);
    b.Linear(p + "output.dense", c.hidden, c.hidden);
    b.Norm(p + "output.LayerNorm", c.hidden);
  };
  for (int i = 0; i < c.layers; ++i) {
    const std::string l = fmt::format("qformer.encoder.layer.{}.", i);
    attention(l + "attention.", c.hidden);
    if (i % c.cross_attention_frequency == 0) attention(l + "crossattention.", vision_hidden);
    b.Linear(l + "intermediate_query.dense", c.hidden, c.intermediate);
    b.Linear(l + "output_query.dense", c.intermediate, c.hidden);
    b.Norm(l + "output_query.LayerNorm", c.hidden);
  }
}

void Projector(Builder& b, const ModelConfig& c) {
  const int in = c.use_qformer ? c.qformer.hidden : c.vision.hidden;
  const int out = c.llm.hidden, inner = c.projector.hidden > 0 ? c.projector.hidden : c.llm.hidden;
  switch (c.projector.kind) {
    case ProjectorKind::kLinear: b.Linear("language_projection", in, out); break;
    case ProjectorKind::kMlp:
      b.Linear("language_projection.0", in, inner);
      b.Linear("language_projection.2", inner, out);
      break;
    case ProjectorKind::kTwoLinear:
      b.Linear("language_projection.0", in, inner);
      b.Linear("language_projection.1", inner, out);
      break;
  }
}

void Llm(Builder& b, const LlmConfig& c) {
  if (c.kind == LlmKind::kOpt) {
    const std::string p = "language_model.model.decoder.";
    b.Add(p + "embed_tokens.weight", {c.vocab_size, c.hidden});
    b.Add(p + "embed_positions.weight", {c.max_positions + 2, c.hidden});
    for (int i = 0; i < c.layers; ++i) {
      const std::string l = fmt::format("{}layers.{}.", p, i);
      for (const char* proj : {"q_proj", "k_proj", "v_proj", "out_proj"})
        b.Linear(l + "self_attn." + proj, c.hidden, c.hidden);
      b.Norm(l + "self_attn_layer_norm", c.hidden);
      b.Linear(l + "fc1", c.hidden, c.intermediate);
      b.Linear(l + "fc2", c.intermediate, c.hidden);
      b.Norm(l + "final_layer_norm", c.hidden);
    }
    b.Norm(p + "final_layer_norm", c.hidden);
    return;
  }
  const std::string p = "language_model.model.";
  const int head_dim = c.hidden / c.heads, kv = c.kv_heads == 0 ? c.heads : c.kv_heads;
  b.Add(p + "embed_tokens.weight", {c.vocab_size, c.hidden});
  for (int i = 0; i < c.layers; ++i) {
    const std::string l = fmt::format("{}layers.{}.", p, i);
    b.Linear(l + "self_attn.q_proj", c.hidden, c.heads * head_dim, false);
    b.Linear(l + "self_attn.k_proj", c.hidden, kv * head_dim, false);
    b.Linear(l + "self_attn.v_proj", c.hidden, kv * head_dim, false);
    b.Linear(l + "self_attn.o_proj", c.heads * head_dim, c.hidden, false);
    b.Linear(l + "mlp.gate_proj", c.hidden, c.intermediate, false);
    b.Linear(l + "mlp.up_proj", c.hidden, c.intermediate, false);
    b.Linear(l + "mlp.down_proj", c.intermediate, c.hidden, false);
    b.Norm(l + "input_layernorm", c.hidden, false);
    b.Norm(l + "post_attention_layernorm", c.hidden, false);
  }
  b.Norm(p + "norm", c.hidden, false);
  if (!c.tie_embeddings) b.Linear("language_model.lm_head", c.hidden, c.vocab_size, false);
}

}  // namespace

std::vector<ParameterShape> ModelParameters(const ModelConfig& config) {
  Builder b;
  Vision(b, config.vision);
  if (config.use_qformer) QFormer(b, config.qformer, config.vision.hidden);
  Projector(b, config);
  Llm(b, config.llm);
  std::sort(b.out.begin(), b.out.end(), [](const ParameterShape& x, const ParameterShape& y) { return x.name < y.name; });
  return std::move(b.out);
}

bool HasModule(const ModelConfig& config, const std::string& module) {
  if (module == "qformer" || module == "query_tokens") return config.use_qformer;
  return module == "vision_model" || module == "language_projection" || module == "language_model";
}

}  // namespace vlorch
