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
#include "coordinator/cli/client_cmd.h"
#include "common/secret.h"
#include "coordinator/http_client.h"
#include "coordinator/launcher.h"
#include "jobs/job_spec.h"

namespace vlorch::cli {
namespace {
namespace fs = std::filesystem;
using nlohmann::json;

std::string DefaultStateDir() { return (fs::path(VlorchHomeDir()) / "coordinator").string(); }

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
                                           Number(*job, "loss"), Number(*job, "samples_per_second"),
                                           Duration(Number(*job, "eta_seconds")));
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
  bool public_read = false;
  bool open_attach = false;
  std::vector<std::string> allow_env;
  std::string run_root;
};

void AddCoordinatorFlags(CLI::App* cmd, CoordinatorFlags* f, bool with_state_dir) {
  if (with_state_dir) cmd->add_option("--state-dir", f->state_dir, "coordinator state (RocksDB)")->capture_default_str();
  cmd->add_option("--zmq", f->zmq, "ZeroMQ endpoint workers connect to")->capture_default_str();
  cmd->add_option("--worker", f->worker, "vlorch-worker binary (default: next to vlorch)");
  cmd->add_option("--heartbeat-timeout", f->heartbeat_timeout, "seconds of silence before a rank is lost")->capture_default_str();
  cmd->add_option("--hang-timeout", f->hang_timeout, "seconds ranks may wait in a collective for a missing one")->capture_default_str();
  cmd->add_option("--backoff", f->backoff, "first restart delay in seconds (doubles per restart)")->capture_default_str();
  cmd->add_option("--default-restart-budget", f->restart_budget, "restarts per job unless submitted with one")->capture_default_str();
  cmd->add_option("--allow-env", f->allow_env,
                  "job environment names (or NAME_PREFIX*) to allow beyond the built-in list; loader and MPI settings "
                  "are refused whatever this says (docs/security.md)");
  cmd->add_option("--run-root", f->run_root, "refuse jobs whose run_dir lies outside this folder");
  cmd->add_flag("--public-read", f->public_read,
                "serve the status page, /metrics and job views without a token to loopback peers");
  cmd->add_flag("--open-attach", f->open_attach,
                "let ranks holding the attach key attach a job of any name (default: only names registered with "
                "`vlorch attach NAME`)");
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
  o.allow_env = f.allow_env;
  o.public_read = f.public_read;
  o.open_attach = f.open_attach;
  o.run_root = f.run_root;
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
    if (health.ok() && health->value("pid", int64_t{-1}) == pid) {
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
  std::shared_ptr<Client> client = AddClientCommands(app, rc);
  auto flags = std::make_shared<CoordinatorFlags>();
  CLI::App* coord_cmd = app.get_subcommand("coordinator");
  auto* start = coord_cmd->add_subcommand("start", "start the coordinator (a daemon unless --foreground)");
  AddClientFlags(start, client.get());
  AddCoordinatorFlags(start, flags.get(), true);
  start->add_flag("--foreground", flags->foreground, "stay in the foreground (systemd, containers, tests)");
  start->callback([client, flags, rc] { *rc = RunCoordinatorStart(*client, *flags); });
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
  AddClientFlags(submit, client.get());
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
  AddClientFlags(launch, client.get());
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
      if (client->token.empty()) client->token = embedded->token();
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

}

}  // namespace vlorch::cli
