// `vlorch coordinator start|stop|status`, `submit`, `launch`, `jobs`, `status`, `logs`,
// `cancel`, `resume`, `events`: the coordinator's client commands (docs/cli.md).
#pragma once

#include <CLI/CLI.hpp>

namespace vlorch::cli {

// Registers the subcommands on `app`; the one that runs stores its exit code in *rc.
void AddCoordinatorCommands(CLI::App& app, int* rc);

}  // namespace vlorch::cli
