#include "coordinator/cli/job_cmd.h"

#include <cstdio>
#include <filesystem>
#include <memory>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "jobs/job_plan.h"
#include "jobs/job_spec.h"
#include "jobs/job_state.h"
#include "coordinator/cli/cli_util.h"

namespace vlorch::cli {
namespace {

StatusOr<int64_t> CountSamples(const std::string& dir) {
  if (!std::filesystem::exists(std::filesystem::path(dir) / "CURRENT"))
    return NotFoundError(fmt::format("store {} does not exist yet (steps per epoch known at run time)", dir));
  ASSIGN_OR_RETURN(auto store, OpenReadOnly(dir));
  return static_cast<int64_t>(store->num_samples());
}

}  // namespace

void AddJobCommands(CLI::App& app, int* rc) {
  auto* job = app.add_subcommand("job", "job specs: validate, plan, status");
  job->require_subcommand(1);
  struct Args {
    std::string spec, run_dir;
    int np = 1;
    bool json = false;
  };
  auto a = std::make_shared<Args>();

  auto* validate = job->add_subcommand("validate", "check a job spec; errors name file, line and field");
  validate->add_option("spec", a->spec, "job spec (YAML)")->required();
  validate->callback([a, rc] {
    auto spec = LoadJobSpec(a->spec);
    if (!spec.ok()) return void(*rc = Fail(spec.status()));
    std::printf("%s: valid: job '%s', %zu models, %zu stages\n", a->spec.c_str(), spec->name.c_str(),
                spec->models.size(), spec->stages.size());
    *rc = 0;
  });

  auto* plan = job->add_subcommand("plan", "what each stage trains, how long, on what data, over N ranks");
  plan->add_option("spec", a->spec, "job spec (YAML)")->required();
  plan->add_option("--np", a->np, "number of ranks")->capture_default_str();
  plan->add_flag("--json", a->json, "machine-readable output");
  plan->callback([a, rc] {
    auto spec = LoadJobSpec(a->spec);
    if (!spec.ok()) return void(*rc = Fail(spec.status()));
    auto p = PlanJob(*spec, a->np, CountSamples);
    if (!p.ok()) return void(*rc = Fail(p.status()));
    if (!a->json) {
      std::printf("%s", FormatPlan(*spec, *p).c_str());
    } else {
      nlohmann::json j;
      j["job"] = spec->name;
      j["np"] = p->np;
      j["layout"] = {{"dp", p->layout.dp}, {"tp", p->layout.tp}, {"ep", p->layout.ep}};
      for (const auto& s : p->stages)
        j["stages"].push_back({{"name", s.name}, {"kind", s.kind}, {"model", s.model}, {"init", s.init},
                               {"trainable", s.trainable}, {"frozen", s.frozen}, {"trained_by_module", s.trained_by_module},
                               {"steps", s.steps}, {"samples_per_step", s.samples_per_step},
                               {"samples_per_epoch", s.samples_per_epoch}, {"data", s.data}, {"notes", s.notes}});
      std::printf("%s\n", j.dump(2).c_str());
    }
    *rc = 0;
  });

  auto* status = job->add_subcommand("status", "which stages are sealed, in progress or pending (from the run directory)");
  status->add_option("spec", a->spec, "job spec (YAML)")->required();
  status->add_option("--run-dir", a->run_dir, "run directory (default: the spec's run_dir)");
  status->callback([a, rc] {
    auto spec = LoadJobSpec(a->spec);
    if (!spec.ok()) return void(*rc = Fail(spec.status()));
    const std::string run = a->run_dir.empty() ? spec->run_dir : a->run_dir;
    auto progress = ReadJobProgress(*spec, run);
    if (!progress.ok()) return void(*rc = Fail(progress.status()));
    std::printf("job %s, run directory %s\n", spec->name.c_str(), run.c_str());
    for (const auto& p : *progress) {
      std::string detail;
      if (p.seal) {
        Status v = VerifySealedCheckpoint(*p.seal);
        detail = fmt::format("{} steps, checkpoint {}, manifest crc32c {:08x}{}", p.seal->steps, p.seal->checkpoint,
                             p.seal->manifest_crc32c, v.ok() ? "" : " — " + v.message());
      } else if (p.latest_step >= 0) {
        detail = fmt::format("last committed checkpoint at step {}", p.latest_step);
      }
      std::printf("  %-20s %-12s %s\n", p.stage.c_str(), StageStatusName(p.status), detail.c_str());
    }
    *rc = 0;
  });
}

}  // namespace vlorch::cli
