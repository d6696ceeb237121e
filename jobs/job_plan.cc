#include "jobs/job_plan.h"

#include <cmath>

#include <fmt/format.h>

#include "jobs/model_schema.h"

namespace vlorch {
namespace {

std::string Count(int64_t n) {
  if (n >= 1000000000) return fmt::format("{:.2f}B", n / 1e9);
  if (n >= 1000000) return fmt::format("{:.1f}M", n / 1e6);
  if (n >= 1000) return fmt::format("{:.1f}K", n / 1e3);
  return std::to_string(n);
}

std::string DescribeData(const DataSpec& d) {
  std::string s = fmt::format("{}", fmt::join(d.stores, ", "));
  if (!d.weights.empty()) s += fmt::format(" (weights {})", fmt::join(d.weights, ":"));
  return s + fmt::format("; template {}, tokenizer {}, max_len {}", d.template_name, d.tokenizer.kind,
                         d.max_len > 0 ? std::to_string(d.max_len) : "unlimited");
}

}  // namespace

StatusOr<JobPlan> PlanJob(const JobSpec& job, int np, const SampleCounter& count_samples) {
  JobPlan plan;
  plan.np = np;
  auto layout = job.layout.Resolve(np);
  if (!layout.ok())
    return InvalidArgumentError(fmt::format("{}: layout: {} (set `layout:` in the spec or change --np)", job.source,
                                            layout.status().message()));
  plan.layout = *layout;
  for (const StageSpec& st : job.stages) {
    StagePlan sp;
    sp.name = st.name;
    sp.model = st.model;
    const ModelConfig& model = job.ModelOf(st);
    const std::vector<ParameterShape> params = ModelParameters(model);
    std::vector<std::string> init;
    if (!st.init_stage.empty()) init.push_back("stage " + st.init_stage);
    for (const auto& w : st.init_weights)
      init.push_back(w.prefix.empty() ? w.path : fmt::format("{} (as {}*)", w.path, w.prefix));
    if (st.transform) {
      sp.kind = st.transform->kind;
      sp.steps = st.transform->steps;
      init.push_back(fmt::format("VPG + vision from stage {}", st.transform->from));
      const ModelConfig& src = job.ModelOf(*job.FindStage(st.transform->from));
      sp.notes.push_back(fmt::format("converter {} -> {} (word embeddings, 1 - cos), pairs {}, {} pairs/step",
                                     src.llm.hidden, model.llm.hidden, st.transform->pairs, st.transform->batch_size));
      for (const auto& p : params) sp.frozen += p.numel();
      sp.data = DescribeData(job.DataOf(st));
    } else {
      sp.kind = "train";
      for (const auto& p : params) {
        bool trains = false;
        for (const auto& pattern : st.trainable) trains = trains || MatchesGlob(pattern, p.name);
        if (trains) {
          sp.trainable += p.numel();
          sp.trained_by_module[p.name.substr(0, p.name.find('.'))] += p.numel();
        } else {
          sp.frozen += p.numel();
        }
      }
      const DataSpec& data = job.DataOf(st);
      sp.data = DescribeData(data);
      sp.samples_per_step = static_cast<int64_t>(plan.layout.dp) * st.batch_size * st.grad_accum;
      if (st.steps > 0) sp.steps = st.steps;
      if (count_samples) {
        int64_t samples = 0;
        bool all = true;
        for (const auto& store : data.stores) {
          auto n = count_samples(job.Resolve(store));
          if (!n.ok()) {
            sp.notes.push_back(n.status().message());
            all = false;
            continue;
          }
          samples += *n;
        }
        if (all) {
          sp.samples_per_epoch = samples;
          // As the worker counts: micro-batches per epoch rounded up, then optimizer steps.
          const int64_t per_micro = static_cast<int64_t>(plan.layout.dp) * st.batch_size;
          const int64_t micro = (samples + per_micro - 1) / per_micro;
          const int64_t per_epoch = (micro + st.grad_accum - 1) / st.grad_accum;
          if (st.epochs > 0) sp.steps = std::max<int64_t>(1, static_cast<int64_t>(std::ceil(st.epochs * per_epoch)));
        }
      }
    }
    sp.init = init.empty() ? "seeded init" : fmt::format("{}", fmt::join(init, " + "));
    plan.stages.push_back(std::move(sp));
  }
  return plan;
}

std::string FormatPlan(const JobSpec& job, const JobPlan& plan) {
  std::string out = fmt::format("job {} ({}): {} stages on {} ranks, {}\nrun directory {}\n", job.name, job.source,
                                plan.stages.size(), plan.np, plan.layout.ToString(), job.run_dir);
  for (size_t i = 0; i < plan.stages.size(); ++i) {
    const StagePlan& s = plan.stages[i];
    const StageSpec& st = job.stages[i];
    out += fmt::format("\n{}. {} [{}] model {}\n", i + 1, s.name, s.kind, s.model);
    out += fmt::format("   init:  {}\n", s.init);
    if (s.kind == "train") {
      std::vector<std::string> mods;
      for (const auto& [m, n] : s.trained_by_module) mods.push_back(fmt::format("{} {}", m, Count(n)));
      out += fmt::format("   trains {} parameters ({}), {} frozen\n", Count(s.trainable), fmt::join(mods, ", "),
                         Count(s.frozen));
      std::string lr = fmt::format("lr {:g} {}", st.optimizer.lr,
                                   st.schedule.kind == ScheduleKind::kCosine ? "cosine" : "constant");
      if (st.schedule.warmup_steps) lr += fmt::format(", warm-up {} steps", st.schedule.warmup_steps);
      if (st.schedule.kind == ScheduleKind::kCosine) lr += fmt::format(", min {:g}", st.schedule.min_lr);
      for (const auto& m : st.lr_multipliers) lr += fmt::format(", {} x{:g}", m.pattern, m.factor);
      out += fmt::format("   {}; AdamW betas ({:g}, {:g}), weight decay {:g}\n", lr, st.optimizer.beta1,
                         st.optimizer.beta2, st.optimizer.weight_decay);
      const std::string length = st.steps > 0 ? fmt::format("{} steps", st.steps) : fmt::format("{:g} epoch{}", st.epochs, st.epochs == 1 ? "" : "s");
      out += fmt::format("   {} = {} optimizer steps of {} samples ({} per rank x {} accumulation x dp {})\n", length,
                         s.steps >= 0 ? std::to_string(s.steps) : "?", s.samples_per_step, st.batch_size,
                         st.grad_accum, plan.layout.dp);
      if (s.samples_per_epoch > 0) out += fmt::format("   an epoch is {} samples\n", s.samples_per_epoch);
    } else {
      out += fmt::format("   {} steps; trains nothing ({} parameters written)\n", s.steps, Count(s.frozen));
    }
    out += fmt::format("   data:  {}\n", s.data);
    for (const auto& n : s.notes) out += fmt::format("   note:  {}\n", n);
  }
  return out;
}

}  // namespace vlorch
