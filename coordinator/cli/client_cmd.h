// The client half of `vlorch`: the commands that only ask the coordinator over HTTP
// (`coordinator stop|status`, `jobs`, `status`, `events`, `cancel`, `resume`, `logs`) and the
// helpers that `submit` and `launch` share with them. No RocksDB, ZeroMQ or LibTorch: the
// `vlorch` executable is these commands alone, starts in a few milliseconds, and hands every
// other command to `vlorch-full` (docs/cli.md).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "common/status.h"

namespace vlorch::cli {

// Exit codes of every `vlorch` command.
constexpr int kExitFailed = 1;         // the command failed, or the job it followed did not succeed
constexpr int kExitBadInput = 2;       // bad usage or bad input (invalid or missing)
constexpr int kExitNoCoordinator = 3;  // no coordinator answered

// Prints the error; kExitBadInput for InvalidArgument / NotFound, kExitFailed otherwise.
int Fail(const Status& s);
// Fail(), but `rc` wins when it is not 0 (kExitNoCoordinator from Call()).
int FailWith(const Status& s, int rc);

// Where and how the commands reach the coordinator; filled from --coordinator, --token,
// --json (defaults from VLORCH_COORDINATOR, VLORCH_TOKEN; address 127.0.0.1:7010).
struct Client {
  std::string address;
  std::string token;
  bool json = false;
};
void AddClientFlags(CLI::App* cmd, Client* client);

// One request. Unreachable: an error that says how to start a coordinator, and *rc (when
// given) = kExitNoCoordinator. 4xx replies map to NotFound / InvalidArgument /
// FailedPrecondition with the coordinator's message.
StatusOr<nlohmann::json> Call(const Client& c, const std::string& method, const std::string& target,
                              const nlohmann::json& body = nullptr, int* rc = nullptr);
// Call()'s reply unparsed.
StatusOr<std::string> CallBody(const Client& c, const std::string& method, const std::string& target,
                               const nlohmann::json& body = nullptr, int* rc = nullptr);
// Call(), printing the error and setting *rc when it fails.
std::optional<nlohmann::json> CallOrFail(const Client& c, const std::string& method, const std::string& target, int* rc);

// A request whose reply is printed: with --json the reply as the API sent it, otherwise
// human(reply). Errors printed, exit code in *rc.
void Show(const Client& c, const std::string& method, const std::string& target, int* rc,
          const std::function<void(const nlohmann::json&)>& human);

// Output helpers shared with `launch`.
bool Tty();
// j[key] as a double; NaN when missing or null (how the API carries a diverged loss).
double Number(const nlohmann::json& j, const char* key);
std::string Duration(double seconds);
std::string Bar(int64_t step, int64_t total);
std::string FormatStatus(const nlohmann::json& job);   // the human view of GET /api/jobs/ID
std::string FormatEvent(const nlohmann::json& event);  // one line of GET /api/jobs/ID/events

// Registers the client commands on `app` (including the `coordinator` subcommand, to which
// the full CLI adds `start`); the one that runs stores its exit code in *rc. Returns the
// client their flags fill.
std::shared_ptr<Client> AddClientCommands(CLI::App& app, int* rc);

// Whether argv names one of the client commands.
bool IsClientCommand(int argc, char** argv);

}  // namespace vlorch::cli
