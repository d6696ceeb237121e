#include "worker/models/vl_model.h"

#include <ATen/CPUGeneratorImpl.h>
#include <fmt/format.h>

namespace vlorch::models {

VLModel::VLModel(const ModelConfig& c) : config_(c) {
  vision_ = register_module("vision_model", VisionModel(c.vision));
  int vpg_out = c.vision.hidden;
  if (c.use_qformer) {
    query_tokens_ = register_parameter("query_tokens", torch::zeros({1, c.qformer.num_queries, c.qformer.hidden}));
    qformer_ = register_module("qformer", QFormerModel(c.qformer, c.vision.hidden));
    vpg_out = c.qformer.hidden;
  }
  const int out = c.llm.hidden, inner = c.projector.hidden > 0 ? c.projector.hidden : c.llm.hidden;
  switch (c.projector.kind) {
    case ProjectorKind::kLinear: {
      auto lin = register_module("language_projection", torch::nn::Linear(vpg_out, out));
      projection_ = [lin](const torch::Tensor& x) { return lin->forward(x); };
      break;
    }
    case ProjectorKind::kMlp: {
      auto seq = register_module("language_projection",
                                 torch::nn::Sequential(torch::nn::Linear(vpg_out, inner), torch::nn::GELU(),
                                                       torch::nn::Linear(inner, out)));
      projection_ = [seq](const torch::Tensor& x) { return seq->forward(x); };
      break;
    }
    case ProjectorKind::kTwoLinear: {
      auto seq = register_module("language_projection",
                                 torch::nn::Sequential(torch::nn::Linear(vpg_out, inner), torch::nn::Linear(inner, out)));
      projection_ = [seq](const torch::Tensor& x) { return seq->forward(x); };
      break;
    }
  }
  llm_ = register_module("language_model", MakeLanguageModel(c.llm));
}

StatusOr<std::shared_ptr<VLModel>> VLModel::Create(const ModelConfig& config, uint64_t seed) {
  RETURN_IF_ERROR(config.Validate());
  std::shared_ptr<VLModel> m;
  try {
    m.reset(new VLModel(config));
    torch::NoGradGuard no_grad;
    at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(seed);
    for (auto& [name, p] : m->SortedParameters()) {
      const bool is_norm = name.find("norm") != std::string::npos || name.find("LayerNorm") != std::string::npos;
      if (p.dim() == 1) {
        p.fill_(is_norm && name.size() > 7 && name.compare(name.size() - 7, 7, ".weight") == 0 ? 1.0 : 0.0);
      } else {
        p.normal_(0.0, 0.02, gen);
      }
    }
  } catch (const c10::Error& e) {
    return InternalError(fmt::format("building the model failed: {}", e.what_without_backtrace()));
  }
  return m;
}

std::vector<std::pair<std::string, torch::Tensor>> VLModel::SortedParameters() const {
  std::vector<std::pair<std::string, torch::Tensor>> out;
  for (const auto& item : named_parameters(/*recurse=*/true)) out.emplace_back(item.key(), item.value());
  std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
  return out;
}

torch::Tensor VLModel::VisualTokens(const torch::Tensor& images) {
  torch::Tensor features = vision_->forward(images);
  if (qformer_) features = qformer_->forward(query_tokens_.expand({images.size(0), -1, -1}), features);
  return projection_(features);
}

ModelOutput VLModel::Forward(const dataflow::Batch& batch) {
  torch::Tensor embeds = llm_->Embed(batch.input_ids);  // [B, L, D]
  if (batch.images.defined() && batch.images.size(0) > 0) {
    torch::Tensor vis = VisualTokens(batch.images).to(embeds.scalar_type());  // [N, T, D]
    const int64_t n = vis.size(0), t = vis.size(1), d = vis.size(2);
    TORCH_CHECK(batch.image_positions.size(0) == n, "image_positions has ", batch.image_positions.size(0),
                " rows for ", n, " images");
    torch::Tensor rows = batch.image_positions.select(1, 0).repeat_interleave(t);
    torch::Tensor cols = (batch.image_positions.select(1, 1).unsqueeze(1) +
                          torch::arange(t, batch.image_positions.options()).unsqueeze(0))
                             .reshape({-1});
    TORCH_CHECK(cols.max().item<int64_t>() < embeds.size(1), "an image's ", t,
                " visual tokens run past the sequence end; the template reserved fewer slots than the model makes");
    embeds = embeds.index_put({rows, cols}, vis.reshape({n * t, d}));
  }
  // Position p predicts label p + 1: only positions whose next label counts need logits.
  torch::Tensor next = batch.labels.slice(1, 1);           // [B, L - 1]
  torch::Tensor counted = next.ne(dataflow::kIgnoreIndex);  // [B, L - 1]
  torch::Tensor at = counted.nonzero();                     // [M, 2] (row, position), row-major
  torch::Tensor outputs = at.select(1, 0) * batch.labels.size(1) + at.select(1, 1);
  torch::Tensor logits = llm_->Logits(embeds, batch.attention_mask, outputs);  // [M, V]
  ModelOutput out;
  out.loss_sum = torch::nn::functional::cross_entropy(
      logits.to(torch::kFloat32), next.masked_select(counted),
      torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kSum));
  out.label_tokens = outputs.size(0);
  return out;
}

}  // namespace vlorch::models
