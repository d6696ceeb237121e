// OPT and LLaMA decoders, following Hugging Face's OPTForCausalLM and LlamaForCausalLM
// operation for operation (pre-norm blocks, OPT's position offset of 2, LLaMA's rotate-half
// rotary embedding, grouped-query attention). Dropout is not implemented: vision-language
// recipes train the LLM frozen or with dropout 0, and leaving it out keeps steps bitwise
// reproducible.
//
// Padding-free: the projections, norms and feed-forward blocks run on the real tokens only
// ([N, D] rows, N = the mask's ones), and the last layer computes queries, attention output
// and feed-forward only for the positions whose logits are asked for (the loss's); keys and
// values of every real token are still computed there. Only attention itself runs on the
// padded [B, L] grid, with the same causal and padding bias as before. Every returned logit is
// the one the dense computation gives for that position (rows not computed are rows no
// returned value depends on). On ops/bench/train's caption batches (padded to the longest, BOS
// and 16 image slots before each caption) that is about a sixth of the decoder's matrix work.
#include <cmath>

#include "worker/models/modules.h"

namespace vlorch::models {
namespace {

// Position of every token among the real tokens of its row (0-based); padding gets -1.
torch::Tensor PositionsFromMask(const torch::Tensor& attention_mask) {
  return (attention_mask.cumsum(1) * attention_mask) - 1;
}

// Rows of token vectors and the padded [B, L] grid attention runs on. Positions are flat
// indices b * L + p.
struct TokenGrid {
  int64_t batch = 0, length = 0;
  torch::Tensor real;  // [N] the real tokens' positions, ascending

  explicit TokenGrid(const torch::Tensor& attention_mask)
      : batch(attention_mask.size(0)), length(attention_mask.size(1)),
        real(attention_mask.reshape({-1}).nonzero().reshape({-1})) {}

  // [R, C] rows for the positions `where` -> [B, L, C], zeros elsewhere.
  torch::Tensor Scatter(const torch::Tensor& rows, const torch::Tensor& where) const {
    return torch::zeros({batch * length, rows.size(1)}, rows.options())
        .index_copy(0, where, rows)
        .view({batch, length, rows.size(1)});
  }
  // [B, L, C] -> [R, C] rows at the positions `where`.
  torch::Tensor Gather(const torch::Tensor& grid, const torch::Tensor& where) const {
    return grid.reshape({batch * length, grid.size(2)}).index_select(0, where);
  }
  // The rows of `real` that hold the positions `outputs`; each must be a real token.
  torch::Tensor RowsOf(const torch::Tensor& outputs) const {
    torch::Tensor row = torch::full({batch * length}, -1, real.options());
    row.index_copy_(0, real, torch::arange(real.size(0), real.options()));
    torch::Tensor rows = row.index_select(0, outputs);
    TORCH_CHECK(rows.numel() == 0 || rows.min().item<int64_t>() >= 0,
                "logits were asked for a padding position (attention_mask 0)");
    return rows;
  }
};

// The queries one layer computes: every real token (rows undefined), or in the last layer the
// positions `where` at rows `rows` of its input.
struct Queries {
  torch::Tensor where, rows;
  torch::Tensor Select(const torch::Tensor& x) const { return rows.defined() ? x.index_select(0, rows) : x; }
};

// ---- OPT ----

struct OptAttentionImpl : torch::nn::Module {
  explicit OptAttentionImpl(const LlmConfig& c) : heads(c.heads) {
    q_proj = register_module("q_proj", torch::nn::Linear(c.hidden, c.hidden));
    k_proj = register_module("k_proj", torch::nn::Linear(c.hidden, c.hidden));
    v_proj = register_module("v_proj", torch::nn::Linear(c.hidden, c.hidden));
    out_proj = register_module("out_proj", torch::nn::Linear(c.hidden, c.hidden));
  }
  // y: [N, D] normalised real tokens -> [Q, D] attention outputs for the queries q.
  torch::Tensor forward(const torch::Tensor& y, const torch::Tensor& bias, const TokenGrid& g, const Queries& q) {
    const double scale = 1.0 / std::sqrt(static_cast<double>(y.size(1) / heads));
    auto grid = [&](const torch::Tensor& rows, const torch::Tensor& where) {
      return SplitHeads(g.Scatter(rows, where), heads);
    };
    // OPT scales q after the projection (bias included); equivalent to scaling the scores.
    torch::Tensor ctx = Attend(grid(q_proj->forward(q.Select(y)), q.where), grid(k_proj->forward(y), g.real),
                               grid(v_proj->forward(y), g.real), scale, bias);
    return out_proj->forward(g.Gather(MergeHeads(ctx), q.where));
  }
  int heads;
  torch::nn::Linear q_proj{nullptr}, k_proj{nullptr}, v_proj{nullptr}, out_proj{nullptr};
};
TORCH_MODULE(OptAttention);

struct OptLayerImpl : torch::nn::Module {
  explicit OptLayerImpl(const LlmConfig& c) {
    auto ln = [&] { return torch::nn::LayerNorm(torch::nn::LayerNormOptions({c.hidden}).eps(c.norm_eps)); };
    self_attn = register_module("self_attn", OptAttention(c));
    self_attn_layer_norm = register_module("self_attn_layer_norm", ln());
    fc1 = register_module("fc1", torch::nn::Linear(c.hidden, c.intermediate));
    fc2 = register_module("fc2", torch::nn::Linear(c.intermediate, c.hidden));
    final_layer_norm = register_module("final_layer_norm", ln());
  }
  // x: [N, D] real tokens -> [Q, D] for the queries q.
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& bias, const TokenGrid& g, const Queries& q) {
    torch::Tensor h = q.Select(x) + self_attn->forward(self_attn_layer_norm->forward(x), bias, g, q);
    return h + fc2->forward(torch::relu(fc1->forward(final_layer_norm->forward(h))));
  }
  OptAttention self_attn{nullptr};
  torch::nn::LayerNorm self_attn_layer_norm{nullptr}, final_layer_norm{nullptr};
  torch::nn::Linear fc1{nullptr}, fc2{nullptr};
};
TORCH_MODULE(OptLayer);

struct OptDecoderImpl : torch::nn::Module {
  static constexpr int64_t kPositionOffset = 2;  // OPTLearnedPositionalEmbedding's offset
  explicit OptDecoderImpl(const LlmConfig& c) {
    embed_tokens = register_module("embed_tokens", torch::nn::Embedding(c.vocab_size, c.hidden));
    embed_positions =
        register_module("embed_positions", torch::nn::Embedding(c.max_positions + kPositionOffset, c.hidden));
    layers = register_module("layers", torch::nn::ModuleList());
    for (int i = 0; i < c.layers; ++i) layers->push_back(OptLayer(c));
    final_layer_norm =
        register_module("final_layer_norm", torch::nn::LayerNorm(torch::nn::LayerNormOptions({c.hidden}).eps(c.norm_eps)));
  }
  torch::nn::Embedding embed_tokens{nullptr}, embed_positions{nullptr};
  torch::nn::ModuleList layers{nullptr};
  torch::nn::LayerNorm final_layer_norm{nullptr};
};
TORCH_MODULE(OptDecoder);

struct OptModelImpl : torch::nn::Module {
  explicit OptModelImpl(const LlmConfig& c) { decoder = register_module("decoder", OptDecoder(c)); }
  OptDecoder decoder{nullptr};
};
TORCH_MODULE(OptModel);

class OptForCausalLM : public LanguageModel {
 public:
  explicit OptForCausalLM(const LlmConfig& c) { model = register_module("model", OptModel(c)); }

  torch::Tensor Embed(const torch::Tensor& input_ids) override {
    return model->decoder->embed_tokens->forward(input_ids);
  }

  torch::Tensor Logits(const torch::Tensor& embeds, const torch::Tensor& attention_mask,
                       const torch::Tensor& outputs) override {
    auto& d = model->decoder;
    const TokenGrid g(attention_mask);
    torch::Tensor positions = PositionsFromMask(attention_mask).reshape({-1}).index_select(0, g.real);
    torch::Tensor h = g.Gather(embeds, g.real) + d->embed_positions->forward(positions + OptDecoderImpl::kPositionOffset);
    torch::Tensor bias = CausalPaddingBias(attention_mask, h.scalar_type());
    const Queries all{g.real, {}}, last{outputs, g.RowsOf(outputs)};
    const size_t n = d->layers->size();
    for (size_t i = 0; i < n; ++i) h = d->layers[i]->as<OptLayer>()->forward(h, bias, g, i + 1 == n ? last : all);
    if (n == 0) h = last.Select(h);
    h = d->final_layer_norm->forward(h);
    return torch::matmul(h, d->embed_tokens->weight.t());  // tied LM head
  }

  OptModel model{nullptr};
};

// ---- LLaMA ----

struct RmsNormImpl : torch::nn::Module {
  RmsNormImpl(int hidden, double eps_) : eps(eps_) { weight = register_parameter("weight", torch::ones({hidden})); }
  torch::Tensor forward(const torch::Tensor& x) {
    torch::Tensor xf = x.to(torch::kFloat32);
    xf = xf * torch::rsqrt(xf.pow(2).mean(-1, /*keepdim=*/true) + eps);
    return weight * xf.to(x.scalar_type());
  }
  double eps;
  torch::Tensor weight;
};
TORCH_MODULE(RmsNorm);

torch::Tensor RotateHalf(const torch::Tensor& x) {
  const int64_t h = x.size(-1) / 2;
  return torch::cat({-x.slice(-1, h), x.slice(-1, 0, h)}, -1);
}

struct LlamaAttentionImpl : torch::nn::Module {
  explicit LlamaAttentionImpl(const LlmConfig& c)
      : heads(c.heads), kv_heads(c.kv_heads == 0 ? c.heads : c.kv_heads), head_dim(c.hidden / c.heads) {
    auto lin = [](int in, int out) { return torch::nn::Linear(torch::nn::LinearOptions(in, out).bias(false)); };
    q_proj = register_module("q_proj", lin(c.hidden, heads * head_dim));
    k_proj = register_module("k_proj", lin(c.hidden, kv_heads * head_dim));
    v_proj = register_module("v_proj", lin(c.hidden, kv_heads * head_dim));
    o_proj = register_module("o_proj", lin(heads * head_dim, c.hidden));
  }
  // y: [N, D] normalised real tokens -> [Q, D] attention outputs for the queries q.
  torch::Tensor forward(const torch::Tensor& y, const torch::Tensor& cos, const torch::Tensor& sin,
                        const torch::Tensor& bias, const TokenGrid& g, const Queries& qs) {
    torch::Tensor q = SplitHeads(g.Scatter(q_proj->forward(qs.Select(y)), qs.where), heads);
    torch::Tensor k = SplitHeads(g.Scatter(k_proj->forward(y), g.real), kv_heads);
    torch::Tensor v = SplitHeads(g.Scatter(v_proj->forward(y), g.real), kv_heads);
    q = q * cos + RotateHalf(q) * sin;
    k = k * cos + RotateHalf(k) * sin;
    if (kv_heads != heads) {
      k = k.repeat_interleave(heads / kv_heads, 1);
      v = v.repeat_interleave(heads / kv_heads, 1);
    }
    torch::Tensor ctx = Attend(q, k, v, 1.0 / std::sqrt(static_cast<double>(head_dim)), bias);
    return o_proj->forward(g.Gather(MergeHeads(ctx), qs.where));
  }
  int heads, kv_heads, head_dim;
  torch::nn::Linear q_proj{nullptr}, k_proj{nullptr}, v_proj{nullptr}, o_proj{nullptr};
};
TORCH_MODULE(LlamaAttention);

struct LlamaMlpImpl : torch::nn::Module {
  explicit LlamaMlpImpl(const LlmConfig& c) {
    auto lin = [](int in, int out) { return torch::nn::Linear(torch::nn::LinearOptions(in, out).bias(false)); };
    gate_proj = register_module("gate_proj", lin(c.hidden, c.intermediate));
    up_proj = register_module("up_proj", lin(c.hidden, c.intermediate));
    down_proj = register_module("down_proj", lin(c.intermediate, c.hidden));
  }
  torch::Tensor forward(const torch::Tensor& x) {
    return down_proj->forward(torch::silu(gate_proj->forward(x)) * up_proj->forward(x));
  }
  torch::nn::Linear gate_proj{nullptr}, up_proj{nullptr}, down_proj{nullptr};
};
TORCH_MODULE(LlamaMlp);

struct LlamaLayerImpl : torch::nn::Module {
  explicit LlamaLayerImpl(const LlmConfig& c) {
    self_attn = register_module("self_attn", LlamaAttention(c));
    mlp = register_module("mlp", LlamaMlp(c));
    input_layernorm = register_module("input_layernorm", RmsNorm(c.hidden, c.norm_eps));
    post_attention_layernorm = register_module("post_attention_layernorm", RmsNorm(c.hidden, c.norm_eps));
  }
  // x: [N, D] real tokens -> [Q, D] for the queries q.
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin,
                        const torch::Tensor& bias, const TokenGrid& g, const Queries& q) {
    torch::Tensor h = q.Select(x) + self_attn->forward(input_layernorm->forward(x), cos, sin, bias, g, q);
    return h + mlp->forward(post_attention_layernorm->forward(h));
  }
  LlamaAttention self_attn{nullptr};
  LlamaMlp mlp{nullptr};
  RmsNorm input_layernorm{nullptr}, post_attention_layernorm{nullptr};
};
TORCH_MODULE(LlamaLayer);

struct LlamaModelImpl : torch::nn::Module {
  explicit LlamaModelImpl(const LlmConfig& c) {
    embed_tokens = register_module("embed_tokens", torch::nn::Embedding(c.vocab_size, c.hidden));
    layers = register_module("layers", torch::nn::ModuleList());
    for (int i = 0; i < c.layers; ++i) layers->push_back(LlamaLayer(c));
    norm = register_module("norm", RmsNorm(c.hidden, c.norm_eps));
  }
  torch::nn::Embedding embed_tokens{nullptr};
  torch::nn::ModuleList layers{nullptr};
  RmsNorm norm{nullptr};
};
TORCH_MODULE(LlamaModel);

class LlamaForCausalLM : public LanguageModel {
 public:
  explicit LlamaForCausalLM(const LlmConfig& c) : config_(c) {
    model = register_module("model", LlamaModel(c));
    if (!c.tie_embeddings)
      lm_head = register_module("lm_head", torch::nn::Linear(torch::nn::LinearOptions(c.hidden, c.vocab_size).bias(false)));
  }

  torch::Tensor Embed(const torch::Tensor& input_ids) override { return model->embed_tokens->forward(input_ids); }

  torch::Tensor Logits(const torch::Tensor& embeds, const torch::Tensor& attention_mask,
                       const torch::Tensor& outputs) override {
    const int64_t head_dim = config_.hidden / config_.heads;
    auto fopts = torch::TensorOptions().dtype(torch::kFloat32).device(embeds.device());
    torch::Tensor inv_freq =
        1.0 / torch::pow(config_.rope_theta, torch::arange(0, head_dim, 2, fopts) / static_cast<double>(head_dim));
    torch::Tensor pos = PositionsFromMask(attention_mask).clamp_min(0).to(torch::kFloat32);  // [B, L]
    torch::Tensor freqs = pos.unsqueeze(-1) * inv_freq;                                    // [B, L, d/2]
    torch::Tensor angles = torch::cat({freqs, freqs}, -1).unsqueeze(1);                    // [B, 1, L, d]
    torch::Tensor cos = angles.cos().to(embeds.scalar_type()), sin = angles.sin().to(embeds.scalar_type());
    torch::Tensor bias = CausalPaddingBias(attention_mask, embeds.scalar_type());
    const TokenGrid g(attention_mask);
    torch::Tensor h = g.Gather(embeds, g.real);
    const Queries all{g.real, {}}, last{outputs, g.RowsOf(outputs)};
    const size_t n = model->layers->size();
    for (size_t i = 0; i < n; ++i)
      h = model->layers[i]->as<LlamaLayer>()->forward(h, cos, sin, bias, g, i + 1 == n ? last : all);
    if (n == 0) h = last.Select(h);
    h = model->norm->forward(h);
    return lm_head ? lm_head->forward(h) : torch::matmul(h, model->embed_tokens->weight.t());
  }

  LlmConfig config_;
  LlamaModel model{nullptr};
  torch::nn::Linear lm_head{nullptr};
};

}  // namespace

std::shared_ptr<LanguageModel> MakeLanguageModel(const LlmConfig& c) {
  if (c.kind == LlmKind::kOpt) return std::make_shared<OptForCausalLM>(c);
  return std::make_shared<LlamaForCausalLM>(c);
}

}  // namespace vlorch::models
