// `vlorch shards ...` and `vlorch dev make-dataset`: the shard store's command line.
#pragma once

#include <CLI/CLI.hpp>

namespace vlorch::cli {

// Registers the subcommands on `app`; the one that runs stores its exit code in *rc.
void AddShardsCommands(CLI::App& app, int* rc);

}  // namespace vlorch::cli
