// VLModel: vision encoder -> visual prompt generator (Q-Former) -> projector -> LLM, as one
// LibTorch module whose parameter names are Hugging Face's (BLIP-2 layout):
//
//   vision_model.*          Blip2VisionModel (embeddings, encoder.layers.{i}, post_layernorm)
//   query_tokens            [1, Q, H] learnable queries      (only with a Q-Former)
//   qformer.*               Blip2QFormerModel                (only with a Q-Former)
//   language_projection.*   linear: .weight/.bias; mlp: .0/.2; two_linear: .0/.1
//   language_model.*        the LLM exactly as in its own checkpoint (OPTForCausalLM's
//                           model.decoder.*, or LlamaForCausalLM's model.* and lm_head)
//
// Each image becomes config.visual_tokens() embeddings written over the placeholder slots the
// prompt template reserved (Batch::image_positions), so "prepended" and "at the <image> tag"
// are the same operation.
//
// Thread safety: one training thread per model.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <torch/torch.h>

#include "common/status.h"
#include "dataflow/collate.h"
#include "jobs/model_config.h"
#include "worker/models/modules.h"

namespace vlorch::models {

struct ModelOutput {
  torch::Tensor loss_sum;  // scalar: cross-entropy summed over the batch's label tokens
  int64_t label_tokens = 0;
};

class VLModel : public torch::nn::Module {
 public:
  // Builds the model with deterministic initial weights: every parameter drawn, in name
  // order, from one generator seeded with `seed` (normal(0, 0.02) for matrices and embeddings,
  // 1 for norm weights, 0 for biases). InvalidArgument for an invalid config.
  static StatusOr<std::shared_ptr<VLModel>> Create(const ModelConfig& config, uint64_t seed);

  // Next-token loss of the batch (labels shifted by one inside). Throws c10::Error on shape
  // errors; the trainer turns those into Status.
  ModelOutput Forward(const dataflow::Batch& batch);

  // The projector alone: VPG (or vision) features [..., in] -> LLM embeddings [..., hidden].
  torch::Tensor Project(const torch::Tensor& features) { return projection_(features); }

  const ModelConfig& config() const { return config_; }
  // Every parameter by name, in name order (the order of checkpoints and buckets).
  std::vector<std::pair<std::string, torch::Tensor>> SortedParameters() const;

 private:
  explicit VLModel(const ModelConfig& config);
  torch::Tensor VisualTokens(const torch::Tensor& images);

  ModelConfig config_;
  VisionModel vision_{nullptr};
  QFormerModel qformer_{nullptr};
  torch::Tensor query_tokens_;
  std::function<torch::Tensor(const torch::Tensor&)> projection_;
  std::shared_ptr<LanguageModel> llm_;
};

}  // namespace vlorch::models
