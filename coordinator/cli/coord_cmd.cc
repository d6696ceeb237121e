#include "coordinator/cli/coord_cmd.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <csignal>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <optional>
#include <thread>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "common/logging.h"
#include "coordinator/cli/cli_util.h"
#include "coordinator/coordinator.h"
#include "coordinator/http_server.h"
#include "coordinator/launcher.h"
#include "jobs/job_spec.h"

namespace vlorch::cli {
namespace {
namespace fs = std::filesystem;
using nlohmann::json;

constexpr int kExitNoCoordinator = 3;
constexpr const char* kDefaultAddress = "127.0.0.1:7010";

struct Client {
  std::string address = kDefaultAddress;
  std::string token;
  bool json = false;
};

std::string DefaultAddress() {
  const char* env = std::getenv("VLORCH_COORDINATOR");
  return env != nullptr && *env ? env : kDefaultAddress;
}

std::string DefaultToken() {
  const char* env = std::getenv("VLORCH_TOKEN");
  return env != nullptr ? env : "";
}

std::string DefaultStateDir() {
  if (const char* home = std::getenv("VLORCH_HOME"); home != nullptr && *home) return (fs::path(home) / "coordinator").string();
  const char* home = std::getenv("HOME");
  return (fs::path(home != nullptr ? home : ".") / ".vlorch" / "coordinator").string();
}

bool Tty() { return ::isatty(STDOUT_FILENO) == 1; }

std::string Color(const std::string& s, const char* code) { return Tty() ? fmt::format("\033[{}m{}\033[0m", code, s) : s; }

const char* StateColor(const std::string& state) {
  if (state == "succeeded") return "32";
  if (state == "failed" || state == "cancelled") return "31";
  if (state == "restarting") return "33";
  return "36";
}

// A request to the coordinator. Unreachable: prints how to start one and returns exit 3.
StatusOr<json> Call(const Client& c, const std::string& method, const std::string& target, const json& body = nullptr,
                    int* rc = nullptr) {
  std::string host;
  int port = 0;
  RETURN_IF_ERROR(coord::SplitHostPort(c.address, &host, &port));
  auto r = coord::HttpCall(host, port, method, target, body.is_null() ? "" : body.dump(), c.token, 30);
  if (!r.ok()) {
    if (rc) *rc = kExitNoCoordinator;
    return UnavailableError(fmt::format("no coordinator at {} — start one with `vlorch coordinator start`, or use "
                                        "`vlorch launch` which runs one itself (--coordinator / VLORCH_COORDINATOR "
                                        "pick another address)",
                                        c.address));
  }
  auto j = json::parse(r->body, nullptr, false);
  if (r->status >= 400) {
    std::string msg = !j.is_discarded() && j.is_object() && j.contains("error") ? j["error"].get<std::string>() : r->body;
    if (r->status == 404) return NotFoundError(msg);
    if (r->status == 400) return InvalidArgumentError(msg);
    if (r->status == 409) return FailedPreconditionError(msg);
    return UnavailableError(fmt::format("coordinator answered {}: {}", r->status, msg));
  }
  if (j.is_discarded()) return InternalError(fmt::format("coordinator sent a reply that is not JSON: {}", r->body.substr(0, 200)));
  return j;
}

int FailWith(const Status& s, int rc);

// Call(), printing the error and setting *rc when it fails.
std::optional<json> CallOrFail(const Client& c, const std::string& method, const std::string& target, int* rc) {
  int code = 0;
  auto r = Call(c, method, target, nullptr, &code);
  if (r.ok()) return std::move(*r);
  *rc = FailWith(r.status(), code);
  return std::nullopt;
}

int FailWith(const Status& s, int rc) {
  Fail(s);
  return rc != 0 ? rc : (s.code() == StatusCode::kInvalidArgument || s.code() == StatusCode::kNotFound ? kExitBadInput : kExitFailed);
}

std::string Duration(double s) {
  if (s < 0) return "?";
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
                       j["loss"].get<double>(), j["samples_per_second"].get<double>(),
                       Duration(j.value("eta_seconds", -1.0)));
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
                         r["host"].get<std::string>(), r["pid"].get<int64_t>(), r["heartbeat_age_s"].get<double>(),
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

std::atomic<bool> g_interrupted{false};

// Prints events and a status line until the job ends; 0 when it succeeded.
int Follow(const Client& c, const std::string& id, coord::Coordinator* embedded) {
  int64_t after = -1;
  std::string last_line;
  auto last_print = std::chrono::steady_clock::now() - std::chrono::hours(1);
  for (;;) {
    int rc = 0;
    auto events = Call(c, "GET", fmt::format("/api/jobs/{}/events?after={}", id, after), nullptr, &rc);
    if (!events.ok()) return FailWith(events.status(), rc);
    for (const auto& e : *events) {
      if (Tty() && !last_line.empty()) std::printf("\r\033[K");
      std::printf("%s\n", FormatEvent(e).c_str());
      after = e["seq"];
      last_line.clear();
    }
    auto job = Call(c, "GET", "/api/jobs/" + id, nullptr, &rc);
    if (!job.ok()) return FailWith(job.status(), rc);
    const std::string state = (*job)["state"];
    const bool terminal = state == "succeeded" || state == "failed" || state == "cancelled";
    const int cur = (*job)["current_stage"];
    const auto& stages = (*job)["stages"];
    if (cur >= 0 && cur < static_cast<int>(stages.size()) && state == "running") {
      const auto& s = stages[cur];
      const std::string line = fmt::format("  {} '{}' {} step {}/{} loss {:.4f} {:.1f} samples/s ETA {}", state,
                                           s["name"].get<std::string>(), Bar(s["step"], s["total_steps"]),
                                           s["step"].get<int64_t>(), s["total_steps"].get<int64_t>(),
                                           (*job)["loss"].get<double>(), (*job)["samples_per_second"].get<double>(),
                                           Duration((*job).value("eta_seconds", -1.0)));
      const auto now = std::chrono::steady_clock::now();
      if (Tty()) {
        std::printf("\r\033[K%s", line.c_str());
        last_line = line;
      } else if (line != last_line && now - last_print > std::chrono::seconds(2)) {
        std::printf("%s\n", line.c_str());
        last_line = line;
        last_print = now;
      }
      std::fflush(stdout);
    }
    if (terminal) {
      if (Tty() && !last_line.empty()) std::printf("\n");
      std::printf("%s", FormatStatus(*job).c_str());
      return state == "succeeded" ? 0 : kExitFailed;
    }
    if (g_interrupted) {
      if (Tty() && !last_line.empty()) std::printf("\n");
      if (embedded == nullptr) {
        std::printf("detached; job %s keeps running (`vlorch status %s`, `vlorch cancel %s`)\n", id.c_str(), id.c_str(),
                    id.c_str());
        return 0;
      }
      std::printf("interrupted: cancelling %s (its ranks commit a checkpoint; `vlorch launch` again resumes)\n", id.c_str());
      (void)embedded->Cancel(id);
      g_interrupted = false;
    }
    std::fflush(stdout);
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
  }
}

void OnInterrupt(int) { g_interrupted = true; }

StatusOr<json> SubmitBody(const std::string& spec, int np, const std::string& hostfile, int restart_budget) {
  std::error_code ec;
  const fs::path abs = fs::absolute(spec, ec);
  if (ec || !fs::exists(abs)) return NotFoundError(fmt::format("job spec {} does not exist", spec));
  ASSIGN_OR_RETURN(JobSpec parsed, LoadJobSpec(abs.string()));  // errors with file:line before anything is sent
  json body = {{"spec_path", abs.lexically_normal().string()}, {"np", np}};
  if (!hostfile.empty()) body["hostfile"] = fs::absolute(hostfile).lexically_normal().string();
  if (restart_budget >= 0) body["restart_budget"] = restart_budget;
  json env = json::object();
  for (const char* k : {"VLORCH_FAULT", "VLORCH_LOG_LEVEL", "OMP_NUM_THREADS", "VLORCH_OVERSUBSCRIBE"}) {
    if (const char* v = std::getenv(k)) env[k] = v;
  }
  body["env"] = env;
  return body;
}

struct CoordinatorFlags {
  std::string state_dir = DefaultStateDir();
  std::string zmq = "tcp://127.0.0.1:7011";
  std::string worker;
  double heartbeat_timeout = 30, hang_timeout = 30, backoff = 1;
  int restart_budget = 3;
  bool foreground = false;
};

void AddCoordinatorFlags(CLI::App* cmd, CoordinatorFlags* f, bool with_state_dir) {
  if (with_state_dir) cmd->add_option("--state-dir", f->state_dir, "coordinator state (RocksDB)")->capture_default_str();
  cmd->add_option("--zmq", f->zmq, "ZeroMQ endpoint workers connect to")->capture_default_str();
  cmd->add_option("--worker", f->worker, "vlorch-worker binary (default: next to vlorch)");
  cmd->add_option("--heartbeat-timeout", f->heartbeat_timeout, "seconds of silence before a rank is lost")->capture_default_str();
  cmd->add_option("--hang-timeout", f->hang_timeout, "seconds ranks may wait in a collective for a missing one")->capture_default_str();
  cmd->add_option("--backoff", f->backoff, "first restart delay in seconds (doubles per restart)")->capture_default_str();
  cmd->add_option("--default-restart-budget", f->restart_budget, "restarts per job unless submitted with one")->capture_default_str();
}

StatusOr<coord::CoordinatorOptions> MakeOptions(const Client& c, const CoordinatorFlags& f) {
  coord::CoordinatorOptions o;
  o.state_dir = f.state_dir;
  RETURN_IF_ERROR(coord::SplitHostPort(c.address, &o.http_address, &o.http_port));
  o.zmq_endpoint = f.zmq;
  o.token = c.token;
  o.worker_binary = f.worker;
  o.heartbeat_timeout_s = f.heartbeat_timeout;
  o.hang_timeout_s = f.hang_timeout;
  o.backoff_initial_s = f.backoff;
  o.default_restart_budget = f.restart_budget;
  return o;
}

int RunCoordinatorStart(const Client& c, const CoordinatorFlags& f) {
  auto options = MakeOptions(c, f);
  if (!options.ok()) return Fail(options.status());
  if (f.foreground) {
    auto coord = coord::Coordinator::Start(*options);
    if (!coord.ok()) return Fail(coord.status());
    std::printf("coordinator running: http://%s:%d, workers %s, state %s (pid %d)\n", options->http_address.c_str(),
                (*coord)->http_port(), (*coord)->zmq_endpoint().c_str(), options->state_dir.c_str(), ::getpid());
    std::fflush(stdout);
    std::signal(SIGTERM, OnInterrupt);
    std::signal(SIGINT, OnInterrupt);
    while (!g_interrupted && !(*coord)->WaitFor(0.2)) {
    }
    (*coord)->Stop();
    return 0;
  }
  std::error_code ec;
  fs::create_directories(options->state_dir, ec);
  const std::string log = (fs::path(options->state_dir) / "coordinator.log").string();
  const pid_t pid = ::fork();
  if (pid < 0) return Fail(ErrnoError("fork", "coordinator", errno));
  if (pid == 0) {
    ::setsid();
    const int devnull = ::open("/dev/null", O_RDONLY);
    const int out = ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    ::dup2(devnull, 0);
    ::dup2(out, 1);
    ::dup2(out, 2);
    auto coord = coord::Coordinator::Start(*options);
    if (!coord.ok()) {
      std::fprintf(stderr, "vlorch coordinator: %s\n", coord.status().message().c_str());
      std::_Exit(1);
    }
    std::signal(SIGTERM, OnInterrupt);
    while (!g_interrupted && !(*coord)->WaitFor(0.2)) {
    }
    (*coord)->Stop();
    std::_Exit(0);
  }
  for (int i = 0; i < 150; ++i) {
    int status = 0;
    if (::waitpid(pid, &status, WNOHANG) == pid) {
      std::fprintf(stderr, "vlorch: the coordinator did not start:\n%s", coord::ReadTail(log, 2000).c_str());
      return kExitFailed;
    }
    auto health = Call(c, "GET", "/api/health");
    if (health.ok() && (*health)["pid"].get<int64_t>() == pid) {
      if (c.json) {
        std::printf("%s\n", health->dump(2).c_str());
      } else {
        std::printf("coordinator started: http://%s, workers %s, state %s, log %s (pid %d)\n", c.address.c_str(),
                    (*health)["zmq"].get<std::string>().c_str(), options->state_dir.c_str(), log.c_str(), pid);
      }
      return 0;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  std::fprintf(stderr, "vlorch: the coordinator (pid %d) did not answer on %s within 15 s; see %s\n", pid, c.address.c_str(),
               log.c_str());
  return kExitFailed;
}

}  // namespace

void AddCoordinatorCommands(CLI::App& app, int* rc) {
  auto client = std::make_shared<Client>();
  client->address = DefaultAddress();
  client->token = DefaultToken();
  auto flags = std::make_shared<CoordinatorFlags>();
  auto add_client = [client](CLI::App* cmd) {
    cmd->add_option("--coordinator", client->address, "coordinator HTTP address host:port (env VLORCH_COORDINATOR)")
        ->capture_default_str();
    cmd->add_option("--token", client->token, "API token (env VLORCH_TOKEN)");
    cmd->add_flag("--json", client->json, "print JSON (fields in docs/cli.md)");
  };

  auto* coord_cmd = app.add_subcommand("coordinator", "run or query the coordinator daemon");
  coord_cmd->require_subcommand(1);
  auto* start = coord_cmd->add_subcommand("start", "start the coordinator (a daemon unless --foreground)");
  add_client(start);
  AddCoordinatorFlags(start, flags.get(), true);
  start->add_flag("--foreground", flags->foreground, "stay in the foreground (systemd, containers, tests)");
  start->callback([client, flags, rc] { *rc = RunCoordinatorStart(*client, *flags); });
  auto* stop = coord_cmd->add_subcommand("stop", "stop the coordinator (running jobs keep running; a restarted coordinator adopts them)");
  add_client(stop);
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
  add_client(cstatus);
  cstatus->callback([client, rc] {
    auto r = CallOrFail(*client, "GET", "/api/health", rc);
    if (!r) return;
    if (client->json) {
      std::printf("%s\n", r->dump(2).c_str());
      return;
    }
    std::printf("coordinator at http://%s: pid %lld, workers %s, state %s, up %s, %llu messages\n", client->address.c_str(),
                static_cast<long long>((*r)["pid"].get<int64_t>()), (*r)["zmq"].get<std::string>().c_str(),
                (*r)["state_dir"].get<std::string>().c_str(), Duration((*r)["uptime_s"].get<double>()).c_str(),
                static_cast<unsigned long long>((*r)["messages"]["ok"].get<uint64_t>()));
  });

  struct SubmitArgs {
    std::string spec, hostfile;
    int np = 0, restart_budget = -1;
    bool detach = false;
  };
  auto sa = std::make_shared<SubmitArgs>();
  auto add_submit = [sa](CLI::App* cmd) {
    cmd->add_option("spec", sa->spec, "job spec (YAML)")->required();
    cmd->add_option("--np", sa->np, "ranks (default: the hostfile's slots, or the spec's layout)");
    cmd->add_option("--hostfile", sa->hostfile, "Open MPI hostfile (default: this machine)");
    cmd->add_option("--restart-budget", sa->restart_budget, "restarts after failures (default: the coordinator's)");
  };
  auto* submit = app.add_subcommand("submit", "queue a job on the coordinator");
  add_submit(submit);
  add_client(submit);
  submit->callback([client, sa, rc] {
    auto body = SubmitBody(sa->spec, sa->np, sa->hostfile, sa->restart_budget);
    if (!body.ok()) {
      *rc = Fail(body.status());
      return;
    }
    auto r = Call(*client, "POST", "/api/jobs", *body, rc);
    if (!r.ok()) {
      *rc = FailWith(r.status(), *rc);
      return;
    }
    if (client->json) std::printf("%s\n", r->dump(2).c_str());
    else std::printf("submitted %s (`vlorch status %s`)\n", (*r)["id"].get<std::string>().c_str(), (*r)["id"].get<std::string>().c_str());
  });

  auto* launch = app.add_subcommand("launch", "submit a job and follow it; runs a coordinator in this process if none answers");
  add_submit(launch);
  add_client(launch);
  AddCoordinatorFlags(launch, flags.get(), false);
  launch->add_flag("--detach", sa->detach, "return once submitted");
  launch->callback([client, sa, flags, rc] {
    auto body = SubmitBody(sa->spec, sa->np, sa->hostfile, sa->restart_budget);
    if (!body.ok()) {
      *rc = Fail(body.status());
      return;
    }
    std::unique_ptr<coord::Coordinator> embedded;
    if (!Call(*client, "GET", "/api/health").ok()) {
      auto spec = LoadJobSpec((*body)["spec_path"].get<std::string>());
      if (!spec.ok()) {
        *rc = Fail(spec.status());
        return;
      }
      CoordinatorFlags f = *flags;
      f.state_dir = (fs::path(spec->run_dir) / "coordinator").string();
      auto options = MakeOptions(*client, f);
      if (!options.ok()) {
        *rc = Fail(options.status());
        return;
      }
      // Its events are what Follow prints; the log lines would repeat them.
      LogOptions quiet;
      quiet.min_level = LogLevel::kWarning;
      InitLogging(quiet);
      auto started = coord::Coordinator::Start(*options);
      if (!started.ok()) {
        *rc = Fail(started.status());
        return;
      }
      embedded = std::move(*started);
      std::printf("no coordinator at %s: running one in this process (state in %s; `vlorch status` works from another "
                  "terminal)\n",
                  client->address.c_str(), f.state_dir.c_str());
    }
    auto r = Call(*client, "POST", "/api/jobs", *body, rc);
    if (!r.ok()) {
      *rc = FailWith(r.status(), *rc);
      return;
    }
    const std::string id = (*r)["id"];
    std::printf("submitted %s\n", id.c_str());
    std::fflush(stdout);
    if (sa->detach && !embedded) return;
    std::signal(SIGINT, OnInterrupt);
    *rc = Follow(*client, id, embedded.get());
    if (embedded) embedded->Stop();
  });

  auto* jobs = app.add_subcommand("jobs", "list the coordinator's jobs");
  add_client(jobs);
  jobs->callback([client, rc] {
    auto r = CallOrFail(*client, "GET", "/api/jobs", rc);
    if (!r) return;
    if (client->json) {
      std::printf("%s\n", r->dump(2).c_str());
      return;
    }
    std::printf("%-28s %-11s %-20s %-12s %-9s %s\n", "JOB", "STATE", "STAGE", "STEP", "RESTARTS", "LOSS");
    for (const auto& j : *r) {
      const std::string state = j["state"];
      std::printf("%-28s %-11s %-20s %-12s %-9d %.4f\n", j["id"].get<std::string>().c_str(),
                  Color(fmt::format("{:<11}", state), StateColor(state)).c_str(),
                  fmt::format("{} ({}/{})", j["stage"].get<std::string>(), j["stage_index"].get<int>() + 1,
                              j["stages"].get<int>()).c_str(),
                  fmt::format("{}/{}", j["step"].get<int64_t>(), j["total_steps"].get<int64_t>()).c_str(),
                  j["restarts"].get<int>(), j["loss"].get<double>());
    }
  });

  auto job_id = std::make_shared<std::string>();
  auto* status = app.add_subcommand("status", "a job's stage, progress, loss, ETA, checkpoints, restarts and ranks");
  status->add_option("job", *job_id, "job id")->required();
  add_client(status);
  status->callback([client, job_id, rc] {
    auto r = CallOrFail(*client, "GET", "/api/jobs/" + *job_id, rc);
    if (!r) return;
    if (client->json) std::printf("%s\n", r->dump(2).c_str());
    else std::printf("%s", FormatStatus(*r).c_str());
  });

  auto* events = app.add_subcommand("events", "a job's event log (submitted, launched, checkpoints, failures, restarts)");
  events->add_option("job", *job_id, "job id")->required();
  add_client(events);
  events->callback([client, job_id, rc] {
    auto r = CallOrFail(*client, "GET", fmt::format("/api/jobs/{}/events", *job_id), rc);
    if (!r) return;
    if (client->json) std::printf("%s\n", r->dump(2).c_str());
    else for (const auto& e : *r) std::printf("%s\n", FormatEvent(e).c_str());
  });

  for (const char* verb : {"cancel", "resume"}) {
    const std::string v = verb;
    auto* cmd = app.add_subcommand(verb, v == "cancel" ? "stop a job (its ranks commit a checkpoint first)"
                                                       : "requeue a failed or cancelled job from its last committed checkpoint");
    cmd->add_option("job", *job_id, "job id")->required();
    add_client(cmd);
    cmd->callback([client, job_id, rc, v] {
      auto r = CallOrFail(*client, "POST", fmt::format("/api/jobs/{}/{}", *job_id, v), rc);
      if (!r) return;
      if (client->json) std::printf("%s\n", r->dump(2).c_str());
      else std::printf("%s %s\n", v == "cancel" ? "cancelled" : "resumed", job_id->c_str());
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
  add_client(logs);
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
}

}  // namespace vlorch::cli
