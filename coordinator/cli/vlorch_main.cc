// vlorch: the command-line front end (launch, track, resume; shard store; job tools).
//
// Exit codes: 0 success, 1 the command failed (or the launched job did not succeed), 2 bad
// usage or bad input, 3 no coordinator answered.
#include <cstdio>
#include <string>

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include "coordinator/cli/coord_cmd.h"
#include "coordinator/cli/job_cmd.h"
#include "coordinator/cli/shards_cmd.h"
#include "common/logging.h"
#include "jobs/parallel_layout.h"

namespace {

// `vlorch layout --np N [--tp T] [--dp D] [--ep E]`: shows how ranks split into groups, or
// says what to change when the layout does not fit.
int RunLayout(int np, const vlorch::ParallelLayout& layout) {
  auto resolved = layout.Resolve(np);
  if (!resolved.ok()) {
    std::fprintf(stderr, "vlorch layout: %s\n", resolved.status().message().c_str());
    return 2;
  }
  const vlorch::ParallelLayout& l = *resolved;
  std::printf("%s over %d ranks (tp fastest; ep folded over dp x tp)\n", l.ToString().c_str(), np);
  const vlorch::MeshDim dims[] = {vlorch::MeshDim::kDp, vlorch::MeshDim::kTp, vlorch::MeshDim::kEp,
                                  vlorch::MeshDim::kEdp};
  for (auto dim : dims) {
    std::string line;
    for (int r = 0; r < np; ++r) {
      auto members = vlorch::GroupMembers(l, dim, r);
      if (members.front() != r) continue;  // print each group once, at its first rank
      line += " {";
      for (size_t i = 0; i < members.size(); ++i) line += (i ? "," : "") + std::to_string(members[i]);
      line += "}";
    }
    std::printf("  %-4s groups:%s\n", vlorch::MeshDimName(dim), line.c_str());
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  vlorch::InitLogging({});
  CLI::App app{"vlorch: train vision-language models on clusters"};
  app.require_subcommand(1);

  app.add_subcommand("version", "print the version")->callback([] { std::printf("vlorch 0.1.0\n"); });

  int np = 0;
  vlorch::ParallelLayout layout;
  int layout_rc = 0;
  auto* lay = app.add_subcommand("layout", "show the dp/tp/ep groups of a layout over N ranks");
  lay->add_option("--np", np, "number of ranks")->required();
  lay->add_option("--dp", layout.dp, "data-parallel size (default: np / tp)");
  lay->add_option("--tp", layout.tp, "tensor-parallel size")->capture_default_str();
  lay->add_option("--ep", layout.ep, "expert-parallel size")->capture_default_str();
  lay->callback([&] { layout_rc = RunLayout(np, layout); });

  int shards_rc = 0;
  vlorch::cli::AddShardsCommands(app, &shards_rc);
  int job_rc = 0;
  vlorch::cli::AddJobCommands(app, &job_rc);
  int coord_rc = 0;
  vlorch::cli::AddCoordinatorCommands(app, &coord_rc);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : 2;
  }
  for (int rc : {layout_rc, shards_rc, job_rc, coord_rc})
    if (rc != 0) return rc;
  return 0;
}
