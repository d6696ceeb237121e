// The building blocks of VLModel, laid out so that named_parameters() yields Hugging Face's
// names: a module registered as "self_attn" holding a Linear registered as "q_proj" gives
// "...self_attn.q_proj.weight". Nothing outside worker/models includes this header.
#pragma once

#include <torch/torch.h>

#include "jobs/model_config.h"

namespace vlorch::models {

// Additive attention bias [B, 1, L, L]: 0 where query i may see key j (j <= i and j is a real
// token), the dtype's lowest value elsewhere.
torch::Tensor CausalPaddingBias(const torch::Tensor& attention_mask, torch::ScalarType dtype);

// [N, L, H*d] <-> [N, H, L, d]
torch::Tensor SplitHeads(const torch::Tensor& x, int heads);
torch::Tensor MergeHeads(const torch::Tensor& x);

// softmax(q k^T * scale + bias) v over [B, H, L, d] tensors; bias may be undefined.
torch::Tensor Attend(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v, double scale,
                     const torch::Tensor& bias);

// ---- Vision encoder (BLIP-2's Blip2VisionModel / CLIP's vision tower) ----

struct VisionEmbeddingsImpl : torch::nn::Module {
  explicit VisionEmbeddingsImpl(const VisionConfig& c);
  torch::Tensor forward(const torch::Tensor& images);  // [N,3,S,S] -> [N, 1+P, D]
  torch::Tensor class_embedding, position_embedding;
  torch::nn::Conv2d patch_embedding{nullptr};
};
TORCH_MODULE(VisionEmbeddings);

struct VisionAttentionImpl : torch::nn::Module {
  VisionAttentionImpl(int hidden, int heads);
  torch::Tensor forward(const torch::Tensor& x);
  int heads;
  torch::nn::Linear qkv{nullptr}, projection{nullptr};
  torch::Tensor q_bias, v_bias;  // BLIP-2: qkv bias = (q_bias, 0, v_bias)
};
TORCH_MODULE(VisionAttention);

struct VisionMlpImpl : torch::nn::Module {
  VisionMlpImpl(int hidden, int intermediate, bool quick_gelu);
  torch::Tensor forward(const torch::Tensor& x);
  bool quick_gelu;
  torch::nn::Linear fc1{nullptr}, fc2{nullptr};
};
TORCH_MODULE(VisionMlp);

struct VisionLayerImpl : torch::nn::Module {
  explicit VisionLayerImpl(const VisionConfig& c);
  torch::Tensor forward(const torch::Tensor& x);
  VisionAttention self_attn{nullptr};
  torch::nn::LayerNorm layer_norm1{nullptr}, layer_norm2{nullptr};
  VisionMlp mlp{nullptr};
};
TORCH_MODULE(VisionLayer);

struct VisionEncoderImpl : torch::nn::Module {
  explicit VisionEncoderImpl(const VisionConfig& c);
  torch::nn::ModuleList layers{nullptr};
};
TORCH_MODULE(VisionEncoder);

struct VisionModelImpl : torch::nn::Module {
  explicit VisionModelImpl(const VisionConfig& c);
  torch::Tensor forward(const torch::Tensor& images);  // -> features [N, F, D]
  VisionConfig config;
  VisionEmbeddings embeddings{nullptr};
  VisionEncoder encoder{nullptr};
  torch::nn::LayerNorm post_layernorm{nullptr};
};
TORCH_MODULE(VisionModel);

// ---- Q-Former (BLIP-2's Blip2QFormerModel, query path) ----

struct QFormerSelfAttentionImpl : torch::nn::Module {
  QFormerSelfAttentionImpl(int hidden, int heads, int kv_in);
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& kv);
  int heads;
  torch::nn::Linear query{nullptr}, key{nullptr}, value{nullptr};
};
TORCH_MODULE(QFormerSelfAttention);

// dense + residual + LayerNorm (BERT's post-norm output block).
struct QFormerOutputImpl : torch::nn::Module {
  QFormerOutputImpl(int in, int hidden, double eps);
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& residual);
  torch::nn::Linear dense{nullptr};
  torch::nn::LayerNorm LayerNorm{nullptr};
};
TORCH_MODULE(QFormerOutput);

struct QFormerAttentionImpl : torch::nn::Module {
  QFormerAttentionImpl(const QFormerConfig& c, int kv_in);
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& kv);
  QFormerSelfAttention attention{nullptr};
  QFormerOutput output{nullptr};
};
TORCH_MODULE(QFormerAttention);

struct QFormerIntermediateImpl : torch::nn::Module {
  QFormerIntermediateImpl(int hidden, int intermediate);
  torch::Tensor forward(const torch::Tensor& x);
  torch::nn::Linear dense{nullptr};
};
TORCH_MODULE(QFormerIntermediate);

struct QFormerLayerImpl : torch::nn::Module {
  QFormerLayerImpl(const QFormerConfig& c, int vision_hidden, bool cross);
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& image_features);
  QFormerAttention attention{nullptr}, crossattention{nullptr};
  QFormerIntermediate intermediate_query{nullptr};
  QFormerOutput output_query{nullptr};
};
TORCH_MODULE(QFormerLayer);

struct QFormerEncoderImpl : torch::nn::Module {
  QFormerEncoderImpl(const QFormerConfig& c, int vision_hidden);
  torch::nn::ModuleList layer{nullptr};
};
TORCH_MODULE(QFormerEncoder);

struct QFormerModelImpl : torch::nn::Module {
  QFormerModelImpl(const QFormerConfig& c, int vision_hidden);
  torch::Tensor forward(const torch::Tensor& queries, const torch::Tensor& image_features);
  torch::nn::LayerNorm layernorm{nullptr};
  QFormerEncoder encoder{nullptr};
};
TORCH_MODULE(QFormerModel);

// ---- Language models ----

// The two LLM families behind one interface; registered as "language_model".
class LanguageModel : public torch::nn::Module {
 public:
  virtual torch::Tensor Embed(const torch::Tensor& input_ids) = 0;
  // [B, L, D] embeddings + [B, L] mask -> [M, V] logits at the M positions `outputs` (flat
  // indices b * L + p, each a real token). Padding and positions not asked for cost no
  // projection or feed-forward arithmetic (llm.cc).
  virtual torch::Tensor Logits(const torch::Tensor& embeds, const torch::Tensor& attention_mask,
                               const torch::Tensor& outputs) = 0;
};

std::shared_ptr<LanguageModel> MakeLanguageModel(const LlmConfig& c);

}  // namespace vlorch::models
