// The architecture of a vision-language model as plain values (no LibTorch): vision encoder
// -> visual prompt generator (Q-Former, optional) -> projector -> LLM. jobs/job_spec.cc reads
// it from YAML; worker/models builds the modules from it. docs/models.md lists every field.
#pragma once

#include <cstdint>
#include <string>

#include "common/status.h"

namespace vlorch {

// A ViT in the CLIP / EVA / BLIP-2 style: patch embedding, class token, learned positions,
// pre-norm blocks. Hugging Face names under `vision_model.` (BLIP-2's Blip2VisionModel).
struct VisionConfig {
  int image_size = 224;
  int patch_size = 14;
  int hidden = 1024;
  int layers = 24;
  int heads = 16;
  int intermediate = 4096;
  // quick-GELU (x * sigmoid(1.702 x), CLIP) instead of exact GELU (BLIP-2/EVA). Default false.
  bool quick_gelu = false;
  // Features from this block: -1 (default) the last block followed by post_layernorm (BLIP-2);
  // -2 the penultimate block's raw output (LLaVA), and so on.
  int feature_layer = -1;
  // Drop the class token from the features (LLaVA's "patch" selection). Default false.
  bool drop_cls = false;
  double layer_norm_eps = 1e-6;

  int num_patches() const { return (image_size / patch_size) * (image_size / patch_size); }
  int num_features() const { return num_patches() + (drop_cls ? 0 : 1); }
  Status Validate() const;
};

// BLIP-2's Q-Former: learnable queries, self-attention over them, cross-attention to the
// image features in every `cross_attention_frequency`-th layer, a query FFN, post-LayerNorm
// (BERT). Names under `qformer.` plus `query_tokens`.
struct QFormerConfig {
  int num_queries = 32;
  int hidden = 768;
  int layers = 12;
  int heads = 12;
  int intermediate = 3072;
  int cross_attention_frequency = 2;
  double layer_norm_eps = 1e-12;
  Status Validate() const;
};

// From VPG (or vision) features to the LLM's embedding width. Names `language_projection.*`.
//   linear      one Linear (BLIP-2, VPGTrans)
//   mlp         Linear -> GELU -> Linear (LLaVA-1.5 / CuMo "mlp2x_gelu")
//   two_linear  Linear -> Linear, no activation (TinyGPT-V's chain)
enum class ProjectorKind { kLinear, kMlp, kTwoLinear };
const char* ProjectorKindName(ProjectorKind kind);

struct ProjectorConfig {
  ProjectorKind kind = ProjectorKind::kLinear;
  int hidden = 0;  // mlp / two_linear: inner width; 0 means the LLM's hidden size
};

// OPT: learned positions with offset 2, LayerNorm, ReLU FFN, tied LM head.
// LLaMA: RMSNorm, rotary positions, SwiGLU FFN, grouped-query attention, optional untied head.
// Names under `language_model.` exactly as in the model's own Hugging Face checkpoint.
enum class LlmKind { kOpt, kLlama };
const char* LlmKindName(LlmKind kind);

struct LlmConfig {
  LlmKind kind = LlmKind::kOpt;
  int vocab_size = 50272;
  int hidden = 768;
  int layers = 12;
  int heads = 12;
  int kv_heads = 0;  // LLaMA grouped-query attention; 0 means `heads`
  int intermediate = 3072;
  int max_positions = 2048;
  double rope_theta = 10000.0;
  double norm_eps = 1e-5;
  // OPT always ties; LLaMA-family models choose. Default true (OPT).
  bool tie_embeddings = true;
  Status Validate() const;
};

struct ModelConfig {
  VisionConfig vision;
  bool use_qformer = true;  // false: the projector reads the vision features (LLaVA)
  QFormerConfig qformer;
  ProjectorConfig projector;
  LlmConfig llm;

  // Visual tokens each image becomes in the LLM's sequence.
  int visual_tokens() const { return use_qformer ? qformer.num_queries : vision.num_features(); }
  Status Validate() const;
};

}  // namespace vlorch
