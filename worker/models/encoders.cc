// Vision encoder and Q-Former, following Hugging Face's Blip2VisionModel and
// Blip2QFormerModel (query path) operation for operation.
#include <cmath>

#include "worker/models/modules.h"

namespace vlorch::models {

namespace F = torch::nn::functional;

torch::Tensor CausalPaddingBias(const torch::Tensor& attention_mask, torch::ScalarType dtype) {
  const int64_t L = attention_mask.size(1);
  auto opts = torch::TensorOptions().dtype(torch::kBool).device(attention_mask.device());
  torch::Tensor causal = torch::ones({L, L}, opts).tril();                        // [L, L]
  torch::Tensor keys = attention_mask.to(torch::kBool).unsqueeze(1).unsqueeze(1);  // [B,1,1,L]
  torch::Tensor allowed = causal.unsqueeze(0).unsqueeze(0) & keys;                // [B,1,L,L]
  const double lowest = dtype == torch::kFloat64 ? std::numeric_limits<double>::lowest()
                                                 : std::numeric_limits<float>::lowest();
  return torch::zeros(allowed.sizes(), torch::TensorOptions().dtype(dtype).device(attention_mask.device()))
      .masked_fill(allowed.logical_not(), lowest);
}

torch::Tensor Attend(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v, double scale,
                     const torch::Tensor& bias) {
  torch::Tensor scores = torch::matmul(q, k.transpose(-1, -2)) * scale;
  if (bias.defined()) scores = scores + bias;
  return torch::matmul(torch::softmax(scores, -1), v);
}

torch::Tensor SplitHeads(const torch::Tensor& x, int heads) {
  return x.view({x.size(0), x.size(1), heads, x.size(2) / heads}).transpose(1, 2);
}

torch::Tensor MergeHeads(const torch::Tensor& x) {
  return x.transpose(1, 2).contiguous().view({x.size(0), x.size(2), x.size(1) * x.size(3)});
}

// ---- vision ----

VisionEmbeddingsImpl::VisionEmbeddingsImpl(const VisionConfig& c) {
  class_embedding = register_parameter("class_embedding", torch::zeros({1, 1, c.hidden}));
  patch_embedding = register_module(
      "patch_embedding",
      torch::nn::Conv2d(torch::nn::Conv2dOptions(3, c.hidden, c.patch_size).stride(c.patch_size).bias(true)));
  position_embedding = register_parameter("position_embedding", torch::zeros({1, c.num_patches() + 1, c.hidden}));
}

torch::Tensor VisionEmbeddingsImpl::forward(const torch::Tensor& images) {
  torch::Tensor patches = patch_embedding->forward(images.to(class_embedding.scalar_type()));  // [N, D, g, g]
  patches = patches.flatten(2).transpose(1, 2);                                                 // [N, P, D]
  torch::Tensor cls = class_embedding.expand({images.size(0), 1, class_embedding.size(2)});
  return torch::cat({cls, patches}, 1) + position_embedding;
}

VisionAttentionImpl::VisionAttentionImpl(int hidden, int heads_) : heads(heads_) {
  qkv = register_module("qkv", torch::nn::Linear(torch::nn::LinearOptions(hidden, 3 * hidden).bias(false)));
  q_bias = register_parameter("q_bias", torch::zeros({hidden}));
  v_bias = register_parameter("v_bias", torch::zeros({hidden}));
  projection = register_module("projection", torch::nn::Linear(hidden, hidden));
}

torch::Tensor VisionAttentionImpl::forward(const torch::Tensor& x) {
  const int64_t N = x.size(0), L = x.size(1), D = x.size(2), d = D / heads;
  torch::Tensor bias = torch::cat({q_bias, torch::zeros_like(v_bias), v_bias});
  torch::Tensor mixed = F::linear(x, qkv->weight, bias).view({N, L, 3, heads, d}).permute({2, 0, 3, 1, 4});
  torch::Tensor ctx = Attend(mixed[0], mixed[1], mixed[2], 1.0 / std::sqrt(static_cast<double>(d)), {});
  return projection->forward(MergeHeads(ctx));
}

VisionMlpImpl::VisionMlpImpl(int hidden, int intermediate, bool quick) : quick_gelu(quick) {
  fc1 = register_module("fc1", torch::nn::Linear(hidden, intermediate));
  fc2 = register_module("fc2", torch::nn::Linear(intermediate, hidden));
}

torch::Tensor VisionMlpImpl::forward(const torch::Tensor& x) {
  torch::Tensor h = fc1->forward(x);
  h = quick_gelu ? h * torch::sigmoid(1.702 * h) : torch::gelu(h);
  return fc2->forward(h);
}

VisionLayerImpl::VisionLayerImpl(const VisionConfig& c) {
  auto ln = [&] { return torch::nn::LayerNorm(torch::nn::LayerNormOptions({c.hidden}).eps(c.layer_norm_eps)); };
  self_attn = register_module("self_attn", VisionAttention(c.hidden, c.heads));
  layer_norm1 = register_module("layer_norm1", ln());
  mlp = register_module("mlp", VisionMlp(c.hidden, c.intermediate, c.quick_gelu));
  layer_norm2 = register_module("layer_norm2", ln());
}

torch::Tensor VisionLayerImpl::forward(const torch::Tensor& x) {
  torch::Tensor h = x + self_attn->forward(layer_norm1->forward(x));
  return h + mlp->forward(layer_norm2->forward(h));
}

VisionEncoderImpl::VisionEncoderImpl(const VisionConfig& c) {
  layers = register_module("layers", torch::nn::ModuleList());
  for (int i = 0; i < c.layers; ++i) layers->push_back(VisionLayer(c));
}

VisionModelImpl::VisionModelImpl(const VisionConfig& c) : config(c) {
  embeddings = register_module("embeddings", VisionEmbeddings(c));
  encoder = register_module("encoder", VisionEncoder(c));
  post_layernorm =
      register_module("post_layernorm", torch::nn::LayerNorm(torch::nn::LayerNormOptions({c.hidden}).eps(c.layer_norm_eps)));
}

torch::Tensor VisionModelImpl::forward(const torch::Tensor& images) {
  torch::Tensor h = embeddings->forward(images);
  // feature_layer -1: all blocks then post_layernorm; -k: stop after block (layers - k + 1).
  const int last = config.feature_layer == -1 ? config.layers : config.layers + config.feature_layer + 1;
  for (int i = 0; i < last; ++i) h = encoder->layers[i]->as<VisionLayer>()->forward(h);
  if (config.feature_layer == -1) h = post_layernorm->forward(h);
  if (config.drop_cls) h = h.slice(1, 1);
  return h;
}

// ---- Q-Former ----

QFormerSelfAttentionImpl::QFormerSelfAttentionImpl(int hidden, int heads_, int kv_in) : heads(heads_) {
  query = register_module("query", torch::nn::Linear(hidden, hidden));
  key = register_module("key", torch::nn::Linear(kv_in, hidden));
  value = register_module("value", torch::nn::Linear(kv_in, hidden));
}

torch::Tensor QFormerSelfAttentionImpl::forward(const torch::Tensor& x, const torch::Tensor& kv) {
  const int64_t d = x.size(2) / heads;
  torch::Tensor ctx = Attend(SplitHeads(query->forward(x), heads), SplitHeads(key->forward(kv), heads),
                             SplitHeads(value->forward(kv), heads), 1.0 / std::sqrt(static_cast<double>(d)), {});
  return MergeHeads(ctx);
}

QFormerOutputImpl::QFormerOutputImpl(int in, int hidden, double eps) {
  dense = register_module("dense", torch::nn::Linear(in, hidden));
  LayerNorm = register_module("LayerNorm", torch::nn::LayerNorm(torch::nn::LayerNormOptions({hidden}).eps(eps)));
}

torch::Tensor QFormerOutputImpl::forward(const torch::Tensor& x, const torch::Tensor& residual) {
  return LayerNorm->forward(dense->forward(x) + residual);
}

QFormerAttentionImpl::QFormerAttentionImpl(const QFormerConfig& c, int kv_in) {
  attention = register_module("attention", QFormerSelfAttention(c.hidden, c.heads, kv_in));
  output = register_module("output", QFormerOutput(c.hidden, c.hidden, c.layer_norm_eps));
}

torch::Tensor QFormerAttentionImpl::forward(const torch::Tensor& x, const torch::Tensor& kv) {
  return output->forward(attention->forward(x, kv), x);
}

QFormerIntermediateImpl::QFormerIntermediateImpl(int hidden, int intermediate) {
  dense = register_module("dense", torch::nn::Linear(hidden, intermediate));
}

torch::Tensor QFormerIntermediateImpl::forward(const torch::Tensor& x) { return torch::gelu(dense->forward(x)); }

QFormerLayerImpl::QFormerLayerImpl(const QFormerConfig& c, int vision_hidden, bool cross) {
  attention = register_module("attention", QFormerAttention(c, c.hidden));
  if (cross) crossattention = register_module("crossattention", QFormerAttention(c, vision_hidden));
  intermediate_query = register_module("intermediate_query", QFormerIntermediate(c.hidden, c.intermediate));
  output_query = register_module("output_query", QFormerOutput(c.intermediate, c.hidden, c.layer_norm_eps));
}

torch::Tensor QFormerLayerImpl::forward(const torch::Tensor& x, const torch::Tensor& image_features) {
  torch::Tensor h = attention->forward(x, x);
  if (crossattention) h = crossattention->forward(h, image_features);
  return output_query->forward(intermediate_query->forward(h), h);
}

QFormerEncoderImpl::QFormerEncoderImpl(const QFormerConfig& c, int vision_hidden) {
  layer = register_module("layer", torch::nn::ModuleList());
  for (int i = 0; i < c.layers; ++i)
    layer->push_back(QFormerLayer(c, vision_hidden, i % c.cross_attention_frequency == 0));
}

QFormerModelImpl::QFormerModelImpl(const QFormerConfig& c, int vision_hidden) {
  layernorm = register_module("layernorm", torch::nn::LayerNorm(torch::nn::LayerNormOptions({c.hidden}).eps(c.layer_norm_eps)));
  encoder = register_module("encoder", QFormerEncoder(c, vision_hidden));
}

torch::Tensor QFormerModelImpl::forward(const torch::Tensor& queries, const torch::Tensor& image_features) {
  torch::Tensor h = layernorm->forward(queries);
  for (const auto& l : *encoder->layer) h = l->as<QFormerLayer>()->forward(h, image_features);
  return h;
}

}  // namespace vlorch::models
