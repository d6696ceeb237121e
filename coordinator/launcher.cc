#include "coordinator/launcher.h"

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <fstream>
#include <regex>
#include <sstream>

#include <fmt/format.h>

#include "common/durable_file.h"
#include "common/utf8.h"

extern char** environ;

namespace vlorch::coord {

StatusOr<std::vector<HostSlots>> ParseHostfile(const std::string& path) {
  auto text = ReadRegularFile(path, kMaxHostfileBytes);
  if (!text.ok()) {
    if (text.status().code() == StatusCode::kNotFound) return NotFoundError(fmt::format("hostfile {} cannot be read", path));
    return InvalidArgumentError(fmt::format("hostfile: {}", text.status().message()));
  }
  std::istringstream in(*text);
  std::vector<HostSlots> out;
  std::string line;
  int n = 0;
  int64_t total = 0;
  while (std::getline(in, line)) {
    ++n;
    if (auto hash = line.find('#'); hash != std::string::npos) line.resize(hash);
    std::istringstream ss(line);
    std::string host, word;
    if (!(ss >> host)) continue;
    const bool plain = host[0] != '-' && std::all_of(host.begin(), host.end(), [](char ch) {
      return std::isalnum(static_cast<unsigned char>(ch)) || ch == '.' || ch == '-' || ch == '_' || ch == ':';
    });
    if (!plain || host.size() > 255)
      return InvalidArgumentError(fmt::format("{}:{}: '{}' is not a host name or address (letters, digits, '.', '-', "
                                              "'_', ':'; at most 255)",
                                              path, n, SanitizeUtf8(host, 80)));
    HostSlots h;
    h.host = host;
    while (ss >> word) {
      auto eq = word.find('=');
      const std::string key = word.substr(0, eq);
      if (eq == std::string::npos || (key != "slots" && key != "max_slots" && key != "max-slots"))
        return InvalidArgumentError(fmt::format("{}:{}: '{}' is not slots=N or max_slots=N (Open MPI hostfile format: "
                                                "`host slots=N`)",
                                                path, n, SanitizeUtf8(word, 80)));
      const std::string value = word.substr(eq + 1);
      int64_t v = -1;
      if (!value.empty() && value.size() <= 9 && std::all_of(value.begin(), value.end(), ::isdigit))
        v = std::stoll(value);
      if (v <= 0 || v > kMaxHostfileSlots)
        return InvalidArgumentError(fmt::format("{}:{}: {} must be an integer in [1, {}]", path, n, key, kMaxHostfileSlots));
      if (key == "slots") h.slots = static_cast<int>(v);
    }
    total += h.slots;
    if (total > kMaxHostfileSlots)
      return InvalidArgumentError(fmt::format("{}:{}: the hostfile's slots add up to more than {}", path, n, kMaxHostfileSlots));
    out.push_back(h);
  }
  if (out.empty()) return InvalidArgumentError(fmt::format("hostfile {} lists no hosts", path));
  return out;
}

int64_t TotalSlots(const std::vector<HostSlots>& hosts) {
  int64_t total = 0;
  for (const auto& h : hosts) total += h.slots;
  return total;
}

std::vector<std::string> ComposeMpirun(const LaunchCommand& c) {
  std::vector<std::string> argv = {c.mpirun, "-np", std::to_string(c.np)};
  if (!c.hostfile.empty()) argv.insert(argv.end(), {"--hostfile", c.hostfile});
  if (c.oversubscribe) argv.insert(argv.end(), {"--oversubscribe", "--bind-to", "none"});
  if (!c.output_dir.empty()) argv.insert(argv.end(), {"--output-filename", c.output_dir});
  for (const auto& [k, v] : c.env) {
    if (k.rfind("OMPI_", 0) == 0) continue;  // for mpirun itself, not the ranks
    argv.insert(argv.end(), {"-x", k});
  }
  argv.insert(argv.end(), c.program.begin(), c.program.end());
  return argv;
}

std::map<std::string, std::string> DefaultForwardedEnv() {
  std::map<std::string, std::string> env = {{"MALLOC_MMAP_THRESHOLD_", "1073741824"},
                                            {"MALLOC_TRIM_THRESHOLD_", "4294967296"}};
  for (const char* k : {"MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "VLORCH_LOG_LEVEL", "OMP_NUM_THREADS",
                        "VLORCH_FAULT"}) {
    if (const char* v = std::getenv(k)) env[k] = v;
  }
  if (::geteuid() == 0) env["OMPI_ALLOW_RUN_AS_ROOT"] = "1", env["OMPI_ALLOW_RUN_AS_ROOT_CONFIRM"] = "1";
  return env;
}

StatusOr<Process> Spawn(const std::vector<std::string>& argv, const std::map<std::string, std::string>& env,
                        const std::string& log_path) {
  std::vector<std::string> env_strings;
  for (char** e = environ; *e != nullptr; ++e) {
    std::string s(*e);
    const std::string key = s.substr(0, s.find('='));
    if (env.count(key) == 0) env_strings.push_back(s);
  }
  for (const auto& [k, v] : env) env_strings.push_back(k + "=" + v);
  std::vector<char*> envp, args;
  for (auto& s : env_strings) envp.push_back(s.data());
  envp.push_back(nullptr);
  std::vector<std::string> argv_copy = argv;
  for (auto& s : argv_copy) args.push_back(s.data());
  args.push_back(nullptr);

  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 1, log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
  posix_spawn_file_actions_adddup2(&fa, 1, 2);
  posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
  // The coordinator's listening sockets must not live on in mpirun (a restarted coordinator
  // could not bind its ports while the job runs).
  posix_spawn_file_actions_addclosefrom_np(&fa, 3);
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
  posix_spawnattr_setpgroup(&attr, 0);
  sigset_t none, all;
  sigemptyset(&none);
  sigfillset(&all);
  posix_spawnattr_setsigmask(&attr, &none);
  posix_spawnattr_setsigdefault(&attr, &all);
  pid_t pid = 0;
  const int rc = posix_spawnp(&pid, args[0], &fa, &attr, args.data(), envp.data());
  posix_spawn_file_actions_destroy(&fa);
  posix_spawnattr_destroy(&attr);
  if (rc != 0)
    return UnavailableError(fmt::format("cannot start {}: {} (is Open MPI installed? ops/install-deps.sh installs it)",
                                        argv[0], std::strerror(rc)));
  Process p;
  p.pid = pid;
  p.start_ticks = ProcessStartTicks(pid);
  return p;
}

std::vector<std::string> ProcStatFields(pid_t pid) {
  std::ifstream in(fmt::format("/proc/{}/stat", pid));
  std::string s;
  if (!std::getline(in, s)) return {};
  // Field 2 (comm) may hold spaces and parentheses; the fields after its last ')' do not.
  const auto close = s.rfind(')');
  if (close == std::string::npos || close + 2 > s.size()) return {};
  std::istringstream ss(s.substr(close + 2));
  std::vector<std::string> fields;
  for (std::string f; ss >> f;) fields.push_back(f);
  return fields;
}

int64_t ProcessStartTicks(pid_t pid) {
  const auto f = ProcStatFields(pid);
  if (f.size() < 20 || f[0] == "Z") return 0;  // a zombie has finished
  return std::stoll(f[22 - 3]);
}

bool StillRunning(pid_t pid, int64_t start_ticks) {
  if (pid <= 0) return false;
  const int64_t t = ProcessStartTicks(pid);
  return t != 0 && (start_ticks == 0 || t == start_ticks);
}

bool IsDescendantOf(pid_t pid, pid_t ancestor) {
  if (pid <= 0 || ancestor <= 0) return false;
  for (int depth = 0; depth < 64 && pid > 1; ++depth) {
    if (pid == ancestor) return true;
    const auto f = ProcStatFields(pid);
    if (f.size() < 2) return false;
    try {
      pid = static_cast<pid_t>(std::stol(f[4 - 3]));  // field 4: ppid
    } catch (...) {
      return false;
    }
  }
  return pid == ancestor;
}

std::string ExitStatus::ToString() const {
  if (signal != 0) return fmt::format("killed by signal {} ({})", signal, strsignal(signal));
  return fmt::format("exited with code {}", code);
}

std::optional<ExitStatus> Reap(pid_t pid) {
  int status = 0;
  const pid_t r = ::waitpid(pid, &status, WNOHANG);
  if (r == 0) return std::nullopt;
  ExitStatus e;
  if (r < 0) {
    e.code = -1;  // not our child (adopted after a coordinator restart) or already reaped
    return e;
  }
  if (WIFEXITED(status)) e.code = WEXITSTATUS(status);
  if (WIFSIGNALED(status)) e.signal = WTERMSIG(status);
  return e;
}

void Terminate(pid_t pid, bool force) {
  if (pid <= 0) return;
  const int sig = force ? SIGKILL : SIGTERM;
  if (::kill(-pid, sig) != 0) ::kill(pid, sig);
}

std::string MpirunCulprit(const std::string& output) {
  static const std::regex signal_re(R"(process rank (\d+) with PID \d+ on node (\S+) exited on signal (\d+) \(([^)]*)\))");
  static const std::regex exit_re(R"(Process name: \[\[\d+,\d+\],(\d+)\]\s*\n\s*Exit code:\s*(\d+))");
  std::smatch m;
  if (std::regex_search(output, m, signal_re))
    return fmt::format("rank {} on {} exited on signal {} ({})", m[1].str(), m[2].str(), m[3].str(), m[4].str());
  if (std::regex_search(output, m, exit_re)) return fmt::format("rank {} exited with code {}", m[1].str(), m[2].str());
  return "";
}

std::string ReadTail(const std::string& path, size_t max_bytes) {
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  if (!in) return "";
  const std::streamoff size = in.tellg();
  const std::streamoff start = size > static_cast<std::streamoff>(max_bytes) ? size - static_cast<std::streamoff>(max_bytes) : 0;
  in.seekg(start);
  std::string out(static_cast<size_t>(size - start), '\0');
  in.read(out.data(), static_cast<std::streamsize>(out.size()));
  return out;
}

}  // namespace vlorch::coord
