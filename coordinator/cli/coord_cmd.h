// `vlorch coordinator start`, `submit`, `launch` (docs/cli.md), on top of the client commands
// of client_cmd.h: the coordinator commands of the full CLI.
#pragma once

#include <CLI/CLI.hpp>

namespace vlorch::cli {

// Registers these and the client commands on `app`; the one that runs stores its exit code in *rc.
void AddCoordinatorCommands(CLI::App& app, int* rc);

}  // namespace vlorch::cli
