#include "coordinator/cli/client_cmd.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <cstring>
#include <limits>
#include <thread>

#include <fmt/format.h>

#include "coordinator/http_client.h"

namespace vlorch::cli {
namespace {
using nlohmann::json;

constexpr const char* kDefaultAddress = "127.0.0.1:7010";

std::string DefaultAddress() {
  const char* env = std::getenv("VLORCH_COORDINATOR");
  return env != nullptr && *env ? env : kDefaultAddress;
}

std::string DefaultToken() {
  const char* env = std::getenv("VLORCH_TOKEN");
  return env != nullptr ? env : "";
}

}  // namespace

bool Tty() { return ::isatty(STDOUT_FILENO) == 1; }

namespace {

std::string Color(const std::string& s, const char* code) { return Tty() ? fmt::format("\033[{}m{}\033[0m", code, s) : s; }

const char* StateColor(const std::string& state) {
  if (state == "succeeded") return "32";
  if (state == "failed" || state == "cancelled") return "31";
  if (state == "restarting") return "33";
  return "36";
}

}  // namespace

StatusOr<std::string> CallBody(const Client& c, const std::string& method, const std::string& target,
                               const json& body, int* rc) {
  std::string host;
  int port = 0;
  RETURN_IF_ERROR(coord::SplitHostPort(c.address, &host, &port));
  // No token given: the one a coordinator of this user on this machine published.
  const std::string token = c.token.empty() ? coord::DiscoverToken(host, port) : c.token;
  auto r = coord::HttpCall(host, port, method, target, body.is_null() ? "" : body.dump(), token, 30);
  if (!r.ok()) {
    if (rc) *rc = kExitNoCoordinator;
    return UnavailableError(fmt::format("no coordinator at {} — start one with `vlorch coordinator start`, or use "
                                        "`vlorch launch` which runs one itself (--coordinator / VLORCH_COORDINATOR "
                                        "pick another address)",
                                        c.address));
  }
  if (r->status >= 400) {
    auto j = json::parse(r->body, nullptr, false);
    std::string msg = !j.is_discarded() && j.is_object() && j.contains("error") && j["error"].is_string()
                          ? j["error"].get<std::string>()
                          : r->body;
    if (r->status == 404) return NotFoundError(msg);
    if (r->status == 400) return InvalidArgumentError(msg);
    if (r->status == 409) return FailedPreconditionError(msg);
    return UnavailableError(fmt::format("coordinator answered {}: {}", r->status, msg));
  }
  return std::move(r->body);
}

StatusOr<json> Call(const Client& c, const std::string& method, const std::string& target, const json& body, int* rc) {
  ASSIGN_OR_RETURN(std::string reply, CallBody(c, method, target, body, rc));
  auto j = json::parse(reply, nullptr, false);
  if (j.is_discarded()) return InternalError(fmt::format("coordinator sent a reply that is not JSON: {}", reply.substr(0, 200)));
  return j;
}

// Call(), printing the error and setting *rc when it fails.
std::optional<json> CallOrFail(const Client& c, const std::string& method, const std::string& target, int* rc) {
  int code = 0;
  auto r = Call(c, method, target, nullptr, &code);
  if (r.ok()) return std::move(*r);
  *rc = FailWith(r.status(), code);
  return std::nullopt;
}

void Show(const Client& c, const std::string& method, const std::string& target, int* rc,
          const std::function<void(const json&)>& human) {
  if (!c.json) {
    auto r = CallOrFail(c, method, target, rc);
    if (!r) return;
    try {
      human(*r);
    } catch (const nlohmann::json::exception& e) {  // a coordinator of another version
      *rc = Fail(InternalError(fmt::format("the coordinator's reply to {} {} lacks what this vlorch expects ({}); "
                                           "--json prints it as it came",
                                           method, target, e.what())));
    }
    return;
  }
  // The API's JSON as it came: parsing and re-printing a job with thousands of ranks would
  // cost more than the request.
  int code = 0;
  auto body = CallBody(c, method, target, nullptr, &code);
  if (!body.ok()) {
    *rc = FailWith(body.status(), code);
    return;
  }
  std::fwrite(body->data(), 1, body->size(), stdout);
  std::fputc('\n', stdout);
}

int FailWith(const Status& s, int rc) {
  Fail(s);
  return rc != 0 ? rc : (s.code() == StatusCode::kInvalidArgument || s.code() == StatusCode::kNotFound ? kExitBadInput : kExitFailed);
}

double Number(const json& j, const char* key) {
  auto it = j.find(key);
  return it != j.end() && it->is_number() ? it->get<double>() : std::numeric_limits<double>::quiet_NaN();
}

std::string Duration(double s) {
  if (!(s >= 0)) return "?";
  const int64_t t = static_cast<int64_t>(s + 0.5);
  return t >= 3600 ? fmt::format("{}:{:02d}:{:02d}", t / 3600, (t / 60) % 60, t % 60) : fmt::format("{}:{:02d}", t / 60, t % 60);
}

std::string Bar(int64_t step, int64_t total) {
  if (total <= 0) return "";
  const double f = std::clamp(static_cast<double>(step) / static_cast<double>(total), 0.0, 1.0);
  if (!Tty()) return fmt::format("{:.0f}%", f * 100);
  const int width = 24, filled = static_cast<int>(f * width + 0.5);
  return fmt::format("[{}{}] {:.0f}%", std::string(filled, '#'), std::string(width - filled, '-'), f * 100);
}

// The human view of one job (GET /api/jobs/ID).
std::string FormatStatus(const json& j) {
  std::string out;
  const std::string state = j["state"];
  out += fmt::format("job {} ({})  {}  incarnation {}, restarts {}/{}{}\n", j["id"].get<std::string>(),
                     j["name"].get<std::string>(), Color(state, StateColor(state)), j["incarnation"].get<int64_t>(),
                     j["restarts"].get<int>(), j["restart_budget"].get<int>(), j["attached"].get<bool>() ? ", attached" : "");
  const auto& stages = j["stages"];
  const int cur = j["current_stage"];
  if (cur >= 0 && cur < static_cast<int>(stages.size())) {
    const auto& s = stages[cur];
    const int64_t step = s["step"], total = s["total_steps"];
    out += fmt::format("stage {}/{} '{}'  {}  step {}/{}  loss {:.4f}  {:.1f} samples/s  ETA {}\n", cur + 1, stages.size(),
                       s["name"].get<std::string>(), Bar(step, total), step, total > 0 ? std::to_string(total) : "?",
                       Number(j, "loss"), Number(j, "samples_per_second"),
                       Duration(Number(j, "eta_seconds")));
  } else if (j.value("last_progress_step", int64_t{-1}) >= 0) {  // attached: no stages, progress all the same
    out += fmt::format("step {}  loss {:.4f}  {:.1f} samples/s\n", j["last_progress_step"].get<int64_t>(),
                       Number(j, "loss"), Number(j, "samples_per_second"));
  }
  for (const auto& s : stages) {
    if (s["last_checkpoint"].get<std::string>().empty()) continue;
    out += fmt::format("  {:<18} {:<8} last committed step {}: {}\n", s["name"].get<std::string>(), s["status"].get<std::string>(),
                       s["last_checkpoint_step"].get<int64_t>(), s["last_checkpoint"].get<std::string>());
  }
  if (j.contains("ranks") && !j["ranks"].empty() && state != "succeeded") {
    out += "ranks:\n";
    for (const auto& r : j["ranks"]) {
      const auto& c = r["collective"];
      out += fmt::format("  rank {:<3} host {}  pid {}  heartbeat {:.1f} s ago  step {}{}\n", r["rank"].get<int>(),
                         r["host"].get<std::string>(), r["pid"].get<int64_t>(), Number(r, "heartbeat_age_s"),
                         r["step"].get<int64_t>(),
                         c["inside"].get<bool>() ? fmt::format("  in {} #{} on '{}'", c["op"].get<std::string>(),
                                                               c["seq"].get<uint64_t>(), c["group"].get<std::string>())
                                                 : "");
    }
  }
  const auto& causes = j["failure_causes"];
  if (!causes.empty()) {
    out += "failures:\n";
    int i = 0;
    for (const auto& c : causes) out += fmt::format("  #{} {}\n", ++i, c.get<std::string>());
  }
  return out;
}

std::string FormatEvent(const json& e) {
  const double t = e["time"];
  const time_t secs = static_cast<time_t>(t);
  char buf[32];
  std::tm tm{};
  localtime_r(&secs, &tm);
  std::strftime(buf, sizeof(buf), "%H:%M:%S", &tm);
  return fmt::format("{} {:<16} {}", buf, e["kind"].get<std::string>(), e["message"].get<std::string>());
}

int Fail(const Status& s) {
  std::fprintf(stderr, "vlorch: %s\n", s.message().c_str());
  return s.code() == StatusCode::kInvalidArgument || s.code() == StatusCode::kNotFound ? kExitBadInput : kExitFailed;
}

void AddClientFlags(CLI::App* cmd, Client* client) {
  cmd->add_option("--coordinator", client->address, "coordinator HTTP address host:port (env VLORCH_COORDINATOR)")
      ->capture_default_str();
  cmd->add_option("--token", client->token, "API token (env VLORCH_TOKEN)");
  cmd->add_flag("--json", client->json, "print JSON (fields in docs/cli.md)");
}

bool IsClientCommand(int argc, char** argv) {
  if (argc < 2) return false;
  for (const char* c : {"jobs", "status", "events", "cancel", "resume", "logs", "attach"})
    if (std::strcmp(argv[1], c) == 0) return true;
  return argc >= 3 && std::strcmp(argv[1], "coordinator") == 0 &&
         (std::strcmp(argv[2], "stop") == 0 || std::strcmp(argv[2], "status") == 0);
}

std::shared_ptr<Client> AddClientCommands(CLI::App& app, int* rc) {
  auto client = std::make_shared<Client>();
  client->address = DefaultAddress();
  client->token = DefaultToken();

  auto* coord_cmd = app.add_subcommand("coordinator", "run or query the coordinator daemon");
  coord_cmd->require_subcommand(1);
  auto* stop = coord_cmd->add_subcommand("stop", "stop the coordinator (running jobs keep running; a restarted coordinator adopts them)");
  AddClientFlags(stop, client.get());
  stop->callback([client, rc] {
    auto r = CallOrFail(*client, "POST", "/api/shutdown", rc);
    if (!r) return;
    for (int i = 0; i < 100; ++i) {
      if (!Call(*client, "GET", "/api/health").ok()) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    std::printf("coordinator at %s stopped\n", client->address.c_str());
  });
  auto* cstatus = coord_cmd->add_subcommand("status", "is a coordinator running, and where");
  AddClientFlags(cstatus, client.get());
  cstatus->callback([client, rc] {
    Show(*client, "GET", "/api/health", rc, [&](const json& r) {
      if (!r.value("authenticated", true)) {
        std::printf("coordinator at http://%s answers, but without its token it shows nothing more: run as its user "
                    "on its machine, or pass --token / VLORCH_TOKEN\n",
                    client->address.c_str());
        return;
      }
      std::printf("coordinator at http://%s: pid %lld, workers %s, state %s, up %s, %llu messages\n",
                  client->address.c_str(), static_cast<long long>(r["pid"].get<int64_t>()), r["zmq"].get<std::string>().c_str(),
                  r["state_dir"].get<std::string>().c_str(), Duration(r["uptime_s"].get<double>()).c_str(),
                  static_cast<unsigned long long>(r["messages"]["ok"].get<uint64_t>()));
    });
  });

  auto* jobs = app.add_subcommand("jobs", "list the coordinator's jobs");
  AddClientFlags(jobs, client.get());
  jobs->callback([client, rc] {
    Show(*client, "GET", "/api/jobs", rc, [](const json& r) {
      std::printf("%-28s %-11s %-20s %-12s %-9s %s\n", "JOB", "STATE", "STAGE", "STEP", "RESTARTS", "LOSS");
      for (const auto& j : r) {
      const std::string state = j["state"];
      std::printf("%-28s %-11s %-20s %-12s %-9d %.4f\n", j["id"].get<std::string>().c_str(),
                  Color(fmt::format("{:<11}", state), StateColor(state)).c_str(),
                  fmt::format("{} ({}/{})", j["stage"].get<std::string>(), j["stage_index"].get<int>() + 1,
                              j["stages"].get<int>()).c_str(),
                  fmt::format("{}/{}", j["step"].get<int64_t>(), j["total_steps"].get<int64_t>()).c_str(),
                  j["restarts"].get<int>(), Number(j, "loss"));
      }
    });
  });

  auto job_id = std::make_shared<std::string>();
  auto* status = app.add_subcommand("status", "a job's stage, progress, loss, ETA, checkpoints, restarts and ranks");
  status->add_option("job", *job_id, "job id")->required();
  AddClientFlags(status, client.get());
  status->callback([client, job_id, rc] {
    Show(*client, "GET", "/api/jobs/" + *job_id, rc, [](const json& r) { std::printf("%s", FormatStatus(r).c_str()); });
  });

  auto* events = app.add_subcommand("events", "a job's event log (submitted, launched, checkpoints, failures, restarts)");
  events->add_option("job", *job_id, "job id")->required();
  AddClientFlags(events, client.get());
  events->callback([client, job_id, rc] {
    Show(*client, "GET", fmt::format("/api/jobs/{}/events", *job_id), rc, [](const json& r) {
      for (const auto& e : r) std::printf("%s\n", FormatEvent(e).c_str());
    });
  });

  auto* attach = app.add_subcommand("attach", "register a job name for attach mode: ranks of your own mpirun "
                                              "(vlorch-worker --coordinator) may then report a job of that name");
  attach->add_option("name", *job_id, "the job's name (its spec's `name:`)")->required();
  AddClientFlags(attach, client.get());
  attach->callback([client, job_id, rc] {
    Show(*client, "POST", fmt::format("/api/attach/{}", *job_id), rc,
         [&](const json&) { std::printf("registered %s for attach mode\n", job_id->c_str()); });
  });

  for (const char* verb : {"cancel", "resume"}) {
    const std::string v = verb;
    auto* cmd = app.add_subcommand(verb, v == "cancel" ? "stop a job (its ranks commit a checkpoint first)"
                                                       : "requeue a failed or cancelled job from its last committed checkpoint");
    cmd->add_option("job", *job_id, "job id")->required();
    AddClientFlags(cmd, client.get());
    cmd->callback([client, job_id, rc, v] {
      Show(*client, "POST", fmt::format("/api/jobs/{}/{}", *job_id, v), rc,
           [&](const json&) { std::printf("%s %s\n", v == "cancel" ? "cancelled" : "resumed", job_id->c_str()); });
    });
  }

  struct LogArgs {
    int rank = -1;
    int64_t incarnation = -1;
    std::string stream = "stdout";
    bool follow = false;
  };
  auto la = std::make_shared<LogArgs>();
  auto* logs = app.add_subcommand("logs", "mpirun's output of a job, or one rank's stdout/stderr");
  logs->add_option("job", *job_id, "job id")->required();
  logs->add_option("--rank", la->rank, "one rank's output (default: mpirun's, all ranks interleaved)");
  logs->add_option("--stream", la->stream, "stdout or stderr (with --rank)")->capture_default_str();
  logs->add_option("--incarnation", la->incarnation, "an earlier launch (default: the latest)");
  logs->add_flag("-f,--follow", la->follow, "keep printing as the log grows, until the job ends");
  AddClientFlags(logs, client.get());
  logs->callback([client, job_id, la, rc] {
    int64_t offset = 0;
    for (;;) {
      auto r = Call(*client, "GET",
                    fmt::format("/api/jobs/{}/logs?rank={}&stream={}&incarnation={}&offset={}", *job_id, la->rank,
                                la->stream, la->incarnation, offset),
                    nullptr, rc);
      if (!r.ok()) {
        *rc = FailWith(r.status(), *rc);
        return;
      }
      if (client->json) {
        std::printf("%s\n", r->dump(2).c_str());
        return;
      }
      const std::string data = (*r)["data"];
      std::fwrite(data.data(), 1, data.size(), stdout);
      std::fflush(stdout);
      offset = (*r)["next_offset"];
      if (offset < (*r)["size"].get<int64_t>()) continue;
      if (!la->follow) return;
      auto job = CallOrFail(*client, "GET", "/api/jobs/" + *job_id, rc);
      if (!job) return;
      const std::string state = (*job)["state"];
      if (state == "succeeded" || state == "failed" || state == "cancelled") return;
      std::this_thread::sleep_for(std::chrono::milliseconds(500));
    }
  });
  return client;
}

}  // namespace vlorch::cli
