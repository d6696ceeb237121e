#include <cmath>

#include <gtest/gtest.h>

#include "worker/train/optimizer.h"

namespace vlorch::train {
namespace {

// vlorch's AdamW against LibTorch's torch::optim::AdamW (the C++ port of torch.optim.AdamW)
// on the same parameters and gradients, with weight decay and several steps.
TEST(AdamW, MatchesTorchOptimAdamW) {
  torch::manual_seed(0);
  torch::Tensor a = torch::randn({5, 7}), b = a.clone();
  OptimizerSpec spec;
  spec.lr = 1e-2, spec.beta1 = 0.8, spec.beta2 = 0.95, spec.eps = 1e-6, spec.weight_decay = 0.1;
  AdamW mine({OptimizedParam{"w", a, 1.0, spec.weight_decay, {}, {}}}, spec);
  b.set_requires_grad(true);
  torch::optim::AdamW ref({b}, torch::optim::AdamWOptions(spec.lr).betas({spec.beta1, spec.beta2}).eps(spec.eps)
                                   .weight_decay(spec.weight_decay));
  for (int step = 0; step < 5; ++step) {
    torch::Tensor g = torch::randn({5, 7});
    a.mutable_grad() = g.clone();
    b.mutable_grad() = g.clone();
    mine.Step(spec.lr);
    ref.step();
  }
  EXPECT_TRUE(torch::allclose(a, b.detach(), /*rtol=*/1e-6, /*atol=*/1e-7))
      << (a - b).abs().max().item<double>();
  EXPECT_EQ(mine.steps(), 5);
}

// The one-pass kernel (contiguous float32) against the same update in ATen ops (taken for a
// transposed, non-contiguous parameter), with clipping's gradient scale, odd lengths included
// (the vector loop's tail); the gradient is left as it was. Equal to float32 rounding, not
// bit for bit: ATen's own lerp_ rounds differently in its vector loop (a fused multiply-add)
// and its scalar loop.
TEST(AdamW, FusedPassEqualsTheAtenOps) {
  torch::manual_seed(3);
  OptimizerSpec spec;
  spec.lr = 3e-3, spec.beta1 = 0.9, spec.beta2 = 0.999, spec.eps = 1e-8, spec.weight_decay = 0.05;
  for (int64_t cols : {2, 7, 33, 129}) {
    torch::Tensor fused = torch::randn({9, cols});
    torch::Tensor strided = fused.t().contiguous().t();  // same values, column-major
    ASSERT_FALSE(strided.is_contiguous());
    AdamW a({OptimizedParam{"w", fused, 2.0, spec.weight_decay, {}, {}}}, spec);
    AdamW b({OptimizedParam{"w", strided, 2.0, spec.weight_decay, {}, {}}}, spec);
    for (int step = 0; step < 6; ++step) {
      torch::Tensor g = torch::randn({9, cols}) * (step + 1);
      fused.mutable_grad() = g.clone();
      strided.mutable_grad() = g.t().contiguous().t();
      const double scale = step % 2 ? 0.37 : 1.0;
      a.Step(spec.lr, scale);
      b.Step(spec.lr, scale);
      EXPECT_TRUE(torch::equal(fused.grad(), g)) << "the gradient was modified";
    }
    EXPECT_TRUE(torch::allclose(fused, strided, 1e-6, 1e-9))
        << cols << ": max diff " << (fused - strided).abs().max().item<double>();
    const auto sa = a.StateTensors(), sb = b.StateTensors();
    for (size_t i = 0; i < sa.size(); ++i)
      EXPECT_TRUE(torch::allclose(sa[i].second, sb[i].second, 1e-6, 1e-6))
          << sa[i].first << ": max diff " << (sa[i].second - sb[i].second).abs().max().item<double>();
  }
}

TEST(AdamW, MultiplierScalesTheStepAndFrozenHaveNoState) {
  torch::Tensor x = torch::zeros({4}), y = torch::zeros({4});
  OptimizerSpec spec;
  spec.weight_decay = 0;
  AdamW opt({OptimizedParam{"x", x, 1.0, 0, {}, {}}, OptimizedParam{"y", y, 5.0, 0, {}, {}}}, spec);
  x.mutable_grad() = torch::ones({4});
  y.mutable_grad() = torch::ones({4});
  opt.Step(1e-3);
  // Adam's first step moves each element by lr (m / sqrt(v) = 1): y by 5x as much.
  EXPECT_NEAR(x[0].item<double>(), -1e-3, 1e-9);
  EXPECT_NEAR(y[0].item<double>(), -5e-3, 1e-9);
  EXPECT_EQ(opt.StateTensors().size(), 4u);
}

TEST(AdamW, StateRoundTripsAndMismatchIsAnError) {
  torch::Tensor x = torch::zeros({3});
  OptimizerSpec spec;
  AdamW a({OptimizedParam{"x", x, 1.0, 0, {}, {}}}, spec);
  x.mutable_grad() = torch::tensor({1.0f, -2.0f, 3.0f});
  a.Step(1e-2);
  auto state = a.StateTensors();
  torch::Tensor x2 = x.clone();
  AdamW b({OptimizedParam{"x", x2, 1.0, 0, {}, {}}}, spec);
  ASSERT_TRUE(b.LoadState(state, a.steps()).ok());
  x.mutable_grad() = torch::tensor({0.5f, 0.5f, 0.5f});
  x2.mutable_grad() = torch::tensor({0.5f, 0.5f, 0.5f});
  a.Step(1e-2);
  b.Step(1e-2);
  EXPECT_TRUE(torch::equal(x, x2));

  AdamW c({OptimizedParam{"other", torch::zeros({3}), 1.0, 0, {}, {}}}, spec);
  Status s = c.LoadState(state, 1);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("no other.exp_avg"), std::string::npos) << s.message();
}

TEST(Schedule, WarmupThenCosineToMin) {
  ScheduleSpec s;
  s.kind = ScheduleKind::kCosine;
  s.warmup_steps = 10;
  s.warmup_init_lr = 0;
  s.min_lr = 1e-5;
  const double base = 1e-4;
  EXPECT_DOUBLE_EQ(ScheduledLr(s, base, 0, 110, 10), 0.0);
  EXPECT_DOUBLE_EQ(ScheduledLr(s, base, 5, 110, 10), 0.5e-4);
  EXPECT_DOUBLE_EQ(ScheduledLr(s, base, 10, 110, 10), base);
  EXPECT_NEAR(ScheduledLr(s, base, 60, 110, 10), (base + 1e-5) / 2, 1e-12);  // halfway
  EXPECT_NEAR(ScheduledLr(s, base, 110, 110, 10), 1e-5, 1e-12);
  s.kind = ScheduleKind::kConstant;
  EXPECT_DOUBLE_EQ(ScheduledLr(s, base, 60, 110, 10), base);
  // Per epoch: constant within an epoch.
  s.kind = ScheduleKind::kCosine;
  s.warmup_steps = 0;
  s.per_epoch = true;
  EXPECT_DOUBLE_EQ(ScheduledLr(s, base, 20, 40, 10), ScheduledLr(s, base, 29, 40, 10));
  EXPECT_LT(ScheduledLr(s, base, 30, 40, 10), ScheduledLr(s, base, 29, 40, 10));
}

TEST(Trainable, SplitByPatternsAndGroupDecay) {
  std::vector<std::pair<std::string, torch::Tensor>> named = {
      {"language_model.model.decoder.layers.0.fc1.weight", torch::zeros({4, 4})},
      {"language_projection.bias", torch::zeros({4})},
      {"language_projection.weight", torch::zeros({4, 4})},
      {"qformer.layernorm.weight", torch::zeros({4})},
      {"query_tokens", torch::zeros({1, 2, 4})}};
  auto split = SplitTrainable(named, {"language_projection.*", "qformer.*", "query_tokens"});
  ASSERT_TRUE(split.ok());
  EXPECT_EQ(split->trainable.size(), 4u);
  ASSERT_EQ(split->frozen.size(), 1u);
  EXPECT_EQ(split->frozen[0].first, "language_model.model.decoder.layers.0.fc1.weight");

  StageSpec stage;
  stage.name = "s";
  stage.optimizer.weight_decay = 0.05;
  stage.lr_multipliers = {{"language_projection.*", 5.0}};
  auto groups = MakeParamGroups(split->trainable, stage);
  ASSERT_TRUE(groups.ok());
  for (const auto& g : *groups) {
    EXPECT_EQ(g.lr_multiplier, g.name.rfind("language_projection", 0) == 0 ? 5.0 : 1.0) << g.name;
    const bool decayed = g.name == "language_projection.weight" || g.name == "query_tokens";
    EXPECT_EQ(g.weight_decay, decayed ? 0.05 : 0.0) << g.name;
  }

  auto bad = SplitTrainable(named, {"vision_model.*"});
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("'vision_model.*' matches no parameter"), std::string::npos);
  stage.lr_multipliers = {{"qformer.layer.*", 2.0}};
  EXPECT_FALSE(MakeParamGroups(split->trainable, stage).ok());
}

}  // namespace
}  // namespace vlorch::train
