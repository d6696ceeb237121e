// vlorch: the command users type. It runs the coordinator queries itself (`status`, `jobs`,
// `events`, `logs`, `cancel`, `resume`, `coordinator stop|status`), linking only the HTTP
// client, so that a status poll costs a few milliseconds even on a loaded machine; every
// other command (and --help) it hands to `vlorch-full` next to it, with the same arguments.
#include <limits.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <string>

#include <CLI/CLI.hpp>

#include "coordinator/cli/client_cmd.h"

namespace {

std::string FullCliPath() {
  char buf[PATH_MAX];
  const ssize_t n = ::readlink("/proc/self/exe", buf, sizeof(buf) - 1);
  if (n <= 0) return "vlorch-full";  // PATH lookup
  std::string self(buf, static_cast<size_t>(n));
  return self.substr(0, self.rfind('/') + 1) + "vlorch-full";
}

}  // namespace

int main(int argc, char** argv) {
  if (!vlorch::cli::IsClientCommand(argc, argv)) {
    const std::string full = FullCliPath();
    ::execvp(full.c_str(), argv);
    std::fprintf(stderr,
                 "vlorch: cannot run %s (%s); it is built and installed next to vlorch and runs every command but the "
                 "coordinator queries\n",
                 full.c_str(), std::strerror(errno));
    return vlorch::cli::kExitFailed;
  }
  CLI::App app{"vlorch: train vision-language models on clusters"};
  app.require_subcommand(1);
  int rc = 0;
  vlorch::cli::AddClientCommands(app, &rc);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : vlorch::cli::kExitBadInput;
  }
  return rc;
}
