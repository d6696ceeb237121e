// `vlorch job validate|plan|status`: read a job spec and its run directory, no LibTorch.
#pragma once

#include <CLI/CLI.hpp>

namespace vlorch::cli {

// Registers the subcommands on `app`; the one that runs stores its exit code in *rc.
void AddJobCommands(CLI::App& app, int* rc);

}  // namespace vlorch::cli
