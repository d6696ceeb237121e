// AdamW with per-parameter learning-rate multipliers and weight decay, and the learning-rate
// schedules of jobs/job_spec.h.
//
// AdamW follows torch.optim.AdamW (single-tensor path, amsgrad off) operation for operation,
// so a vlorch run and a PyTorch run from the same weights and gradients agree to rounding:
//   p *= 1 - lr*wd;  m = lerp(m, g, 1-b1);  v = b2*v + (1-b2)*g*g
//   p -= lr/(1-b1^t) * m / (sqrt(v)/sqrt(1-b2^t) + eps)
// Its state is tensors by name ("<param>.exp_avg", "<param>.exp_avg_sq") plus the step count,
// which is what checkpoints store. Frozen parameters are never given to it.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include <torch/torch.h>

#include "common/status.h"
#include "jobs/job_spec.h"

namespace vlorch::train {

struct OptimizedParam {
  std::string name;
  torch::Tensor param;
  double lr_multiplier = 1.0;
  double weight_decay = 0.0;  // 0 for biases, norms and other 1-D parameters
  torch::Tensor exp_avg, exp_avg_sq;
};

class AdamW {
 public:
  AdamW(std::vector<OptimizedParam> params, const OptimizerSpec& spec);

  // One update with base learning rate `lr` from each parameter's .grad() times grad_scale
  // (gradient clipping's coefficient; the gradients themselves are left unchanged); a
  // parameter without a gradient is skipped (as PyTorch does). Contiguous float32 CPU
  // parameters take one fused pass (adamw_kernel.h), others the same update in ATen ops.
  void Step(double lr, double grad_scale = 1.0);
  int64_t steps() const { return step_; }

  const std::vector<OptimizedParam>& params() const { return params_; }
  // "<name>.exp_avg" / "<name>.exp_avg_sq", in parameter order.
  std::vector<std::pair<std::string, torch::Tensor>> StateTensors() const;
  // Restores what StateTensors() returned. InvalidArgument naming a missing or mis-shaped
  // tensor (e.g. a checkpoint from a stage that trained other modules).
  Status LoadState(const std::vector<std::pair<std::string, torch::Tensor>>& state, int64_t steps);

 private:
  std::vector<OptimizedParam> params_;
  OptimizerSpec spec_;
  int64_t step_ = 0;
};

// Learning rate at iteration `step` (0-based) of `total_steps`; per-epoch schedules use
// epoch = step / steps_per_epoch and hold it for the epoch.
double ScheduledLr(const ScheduleSpec& s, double base_lr, int64_t step, int64_t total_steps, int64_t steps_per_epoch);

// Splits `named` (name, tensor) into trainable and frozen by glob patterns. InvalidArgument
// when a pattern matches no parameter (names the pattern and shows a few real names).
struct TrainableSplit {
  std::vector<std::pair<std::string, torch::Tensor>> trainable, frozen;
};
StatusOr<TrainableSplit> SplitTrainable(const std::vector<std::pair<std::string, torch::Tensor>>& named,
                                        const std::vector<std::string>& patterns);

// The optimizer's parameters for `trainable` with the stage's multipliers (first matching
// pattern wins; a multiplier pattern that matches no trainable parameter is InvalidArgument)
// and weight decay skipped for 1-D tensors and biases.
StatusOr<std::vector<OptimizedParam>> MakeParamGroups(
    const std::vector<std::pair<std::string, torch::Tensor>>& trainable, const StageSpec& stage);

}  // namespace vlorch::train
