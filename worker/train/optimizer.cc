#include "worker/train/optimizer.h"

#include <cmath>

#include <fmt/format.h>

#include "worker/train/adamw_kernel.h"

namespace vlorch::train {

AdamW::AdamW(std::vector<OptimizedParam> params, const OptimizerSpec& spec) : params_(std::move(params)), spec_(spec) {
  for (auto& p : params_) {
    p.exp_avg = torch::zeros_like(p.param, torch::MemoryFormat::Preserve);
    p.exp_avg_sq = torch::zeros_like(p.param, torch::MemoryFormat::Preserve);
  }
}

void AdamW::Step(double base_lr, double grad_scale) {
  torch::NoGradGuard no_grad;
  ++step_;
  const double bc1 = 1.0 - std::pow(spec_.beta1, static_cast<double>(step_));
  const double bc2 = 1.0 - std::pow(spec_.beta2, static_cast<double>(step_));
  const double bc2_sqrt = std::sqrt(bc2);
  for (auto& p : params_) {
    const torch::Tensor& g = p.param.grad();
    if (!g.defined()) continue;
    const double lr = base_lr * p.lr_multiplier;
    const double step_size = lr / bc1;
    const bool fused = p.param.device().is_cpu() && p.param.scalar_type() == torch::kFloat32 &&
                       g.scalar_type() == torch::kFloat32 && p.param.is_contiguous() && g.is_contiguous() &&
                       p.exp_avg.is_contiguous() && p.exp_avg_sq.is_contiguous();
    if (fused) {
      AdamWConstants c;
      c.decay = static_cast<float>(1.0 - lr * p.weight_decay);
      c.beta1_weight = static_cast<float>(1.0 - spec_.beta1);
      c.beta2 = static_cast<float>(spec_.beta2);
      c.one_minus_beta2 = static_cast<float>(1.0 - spec_.beta2);
      c.bias_correction2_sqrt = static_cast<float>(bc2_sqrt);
      c.eps = static_cast<float>(spec_.eps);
      c.neg_step_size = static_cast<float>(-step_size);
      c.grad_scale = static_cast<float>(grad_scale);
      AdamWUpdateF32(p.param.data_ptr<float>(), g.data_ptr<float>(), p.exp_avg.data_ptr<float>(),
                     p.exp_avg_sq.data_ptr<float>(), p.param.numel(), c);
      continue;
    }
    // Other dtypes, devices and layouts: the same update in ATen ops.
    const torch::Tensor gs = grad_scale == 1.0 ? g : g * grad_scale;
    p.param.mul_(1.0 - lr * p.weight_decay);
    p.exp_avg.lerp_(gs, 1.0 - spec_.beta1);
    p.exp_avg_sq.mul_(spec_.beta2).addcmul_(gs, gs, 1.0 - spec_.beta2);
    torch::Tensor denom = (p.exp_avg_sq.sqrt() / bc2_sqrt).add_(spec_.eps);
    p.param.addcdiv_(p.exp_avg, denom, -step_size);
  }
}

std::vector<std::pair<std::string, torch::Tensor>> AdamW::StateTensors() const {
  std::vector<std::pair<std::string, torch::Tensor>> out;
  for (const auto& p : params_) {
    out.emplace_back(p.name + ".exp_avg", p.exp_avg);
    out.emplace_back(p.name + ".exp_avg_sq", p.exp_avg_sq);
  }
  return out;
}

Status AdamW::LoadState(const std::vector<std::pair<std::string, torch::Tensor>>& state, int64_t steps) {
  std::map<std::string, torch::Tensor> by_name(state.begin(), state.end());
  std::vector<std::pair<torch::Tensor, torch::Tensor>> copies;
  for (const auto& p : params_) {
    for (const auto& [suffix, dst] : {std::make_pair(".exp_avg", p.exp_avg), std::make_pair(".exp_avg_sq", p.exp_avg_sq)}) {
      auto it = by_name.find(p.name + suffix);
      if (it == by_name.end())
        return InvalidArgumentError(fmt::format("optimizer state has no {}{}: the checkpoint trained other parameters",
                                                p.name, suffix));
      if (!it->second.sizes().equals(dst.sizes()))
        return InvalidArgumentError(fmt::format("optimizer state {}{} has shape {} but the parameter has {}", p.name,
                                                suffix, fmt::join(it->second.sizes(), "x"), fmt::join(dst.sizes(), "x")));
      copies.emplace_back(dst, it->second);
    }
  }
  if (by_name.size() != copies.size())
    return InvalidArgumentError(fmt::format("optimizer state has {} tensors, this stage's optimizer {}: the checkpoint "
                                            "trained other parameters",
                                            by_name.size(), copies.size()));
  torch::NoGradGuard no_grad;
  for (auto& [dst, src] : copies) dst.copy_(src);
  step_ = steps;
  return Status::OK();
}

double ScheduledLr(const ScheduleSpec& s, double base_lr, int64_t step, int64_t total_steps, int64_t steps_per_epoch) {
  if (s.kind == ScheduleKind::kConstant && s.warmup_steps == 0) return base_lr;
  if (step < s.warmup_steps)  // LAVIS's warmup_lr_schedule
    return s.warmup_init_lr + (base_lr - s.warmup_init_lr) * static_cast<double>(step) / static_cast<double>(s.warmup_steps);
  if (s.kind == ScheduleKind::kConstant) return base_lr;
  double progress;
  if (s.per_epoch) {
    const int64_t epochs = std::max<int64_t>(1, (total_steps + steps_per_epoch - 1) / steps_per_epoch);
    progress = static_cast<double>(step / steps_per_epoch) / static_cast<double>(epochs);
  } else {
    const int64_t span = std::max<int64_t>(1, total_steps - s.warmup_steps);
    progress = static_cast<double>(step - s.warmup_steps) / static_cast<double>(span);
  }
  progress = std::min(1.0, std::max(0.0, progress));
  return s.min_lr + 0.5 * (base_lr - s.min_lr) * (1.0 + std::cos(M_PI * progress));
}

StatusOr<TrainableSplit> SplitTrainable(const std::vector<std::pair<std::string, torch::Tensor>>& named,
                                        const std::vector<std::string>& patterns) {
  TrainableSplit out;
  std::vector<int> hits(patterns.size(), 0);
  for (const auto& [name, t] : named) {
    bool train = false;
    for (size_t i = 0; i < patterns.size(); ++i)
      if (MatchesGlob(patterns[i], name)) train = true, ++hits[i];
    (train ? out.trainable : out.frozen).emplace_back(name, t);
  }
  for (size_t i = 0; i < patterns.size(); ++i) {
    if (hits[i] == 0) {
      std::vector<std::string> examples;
      for (size_t k = 0; k < named.size() && examples.size() < 4; k += std::max<size_t>(1, named.size() / 4))
        examples.push_back(named[k].first);
      return InvalidArgumentError(fmt::format(
          "trainable pattern '{}' matches no parameter of the model (names look like {}; '*' matches any run of "
          "characters)",
          patterns[i], fmt::join(examples, ", ")));
    }
  }
  return out;
}

StatusOr<std::vector<OptimizedParam>> MakeParamGroups(
    const std::vector<std::pair<std::string, torch::Tensor>>& trainable, const StageSpec& stage) {
  std::vector<OptimizedParam> out;
  std::vector<int> hits(stage.lr_multipliers.size(), 0);
  for (const auto& [name, t] : trainable) {
    OptimizedParam p;
    p.name = name;
    p.param = t;
    for (size_t i = 0; i < stage.lr_multipliers.size(); ++i) {
      if (MatchesGlob(stage.lr_multipliers[i].pattern, name)) {
        p.lr_multiplier = stage.lr_multipliers[i].factor;
        ++hits[i];
        break;
      }
    }
    const bool is_bias = name.size() >= 5 && name.compare(name.size() - 5, 5, ".bias") == 0;
    p.weight_decay = (t.dim() < 2 || is_bias) ? 0.0 : stage.optimizer.weight_decay;
    out.push_back(std::move(p));
  }
  for (size_t i = 0; i < hits.size(); ++i)
    if (hits[i] == 0)
      return InvalidArgumentError(fmt::format("lr_multipliers pattern '{}' matches no trainable parameter of stage '{}'",
                                              stage.lr_multipliers[i].pattern, stage.name));
  return out;
}

}  // namespace vlorch::train
