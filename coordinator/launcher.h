// Starting and watching `mpirun`: hostfiles, the command line, the process, its exit.
//
// The command is an argument vector (no shell is involved, so paths with spaces or quotes
// cannot break it); the environment every rank needs is forwarded with `-x`.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "common/status.h"

namespace vlorch::coord {

struct HostSlots {
  std::string host;
  int slots = 1;
};

// Open MPI hostfile: one host per line, optional `slots=N` (default 1) and `max_slots=M`,
// `#` comments. Errors name the file and line. A regular file of at most kMaxHostfileBytes;
// a host is a name or address (letters, digits, '.', '-', '_', ':'; not starting with '-', so
// it cannot read as an mpirun option); N and M at most kMaxHostfileSlots, and so is the total.
inline constexpr size_t kMaxHostfileBytes = 1 << 20;
inline constexpr int64_t kMaxHostfileSlots = 65536;
StatusOr<std::vector<HostSlots>> ParseHostfile(const std::string& path);

// The sum of the hosts' slots (64-bit: a parsed hostfile keeps it <= kMaxHostfileSlots).
int64_t TotalSlots(const std::vector<HostSlots>& hosts);

struct LaunchCommand {
  std::string mpirun = "mpirun";
  int np = 1;
  std::string hostfile;                     // empty: this machine
  bool oversubscribe = false;               // more ranks than cores (tests, one-machine demos)
  std::string output_dir;                   // per-rank stdout/stderr (--output-filename)
  std::map<std::string, std::string> env;   // set for mpirun and forwarded to ranks with -x
  std::vector<std::string> program;         // vlorch-worker and its arguments
};

// The argument vector for execvp.
std::vector<std::string> ComposeMpirun(const LaunchCommand& command);

// The environment every launch forwards when set in the coordinator's environment (and the
// malloc thresholds of ops/env.sh, with their defaults when unset).
std::map<std::string, std::string> DefaultForwardedEnv();

struct Process {
  pid_t pid = 0;
  int64_t start_ticks = 0;  // /proc/PID/stat starttime, to tell a reused pid apart
};

// Starts argv[0] (looked up in PATH) in a new process group, stdout and stderr appended to
// `log_path`, with `env` added to this process's environment.
StatusOr<Process> Spawn(const std::vector<std::string>& argv, const std::map<std::string, std::string>& env,
                        const std::string& log_path);

// The fields of /proc/PID/stat from field 3 (state) on, so field k is at index k - 3; empty
// when the process is gone. proc(5) numbers them.
std::vector<std::string> ProcStatFields(pid_t pid);
// /proc/PID/stat starttime; 0 when the process is gone.
int64_t ProcessStartTicks(pid_t pid);
// Whether pid still runs and is the process started at start_ticks.
bool StillRunning(pid_t pid, int64_t start_ticks);
// Whether `pid` is `ancestor` or one of its descendants now (the parent chain in /proc,
// at most 64 levels).
bool IsDescendantOf(pid_t pid, pid_t ancestor);

struct ExitStatus {
  int code = 0;    // exit code when it exited
  int signal = 0;  // the signal that killed it, or 0
  std::string ToString() const;
};
// waitpid(WNOHANG) on a child of this process: nullopt while it runs.
std::optional<ExitStatus> Reap(pid_t pid);

// Signals the process group of a process started by Spawn (SIGTERM first; SIGKILL when
// `force`).
void Terminate(pid_t pid, bool force);

// What mpirun printed about the rank that ended the job ("rank 1 on node n7 exited on signal
// 9 (Killed)", "rank 0 exited with code 3"), from the tail of its output; empty if nothing.
std::string MpirunCulprit(const std::string& output);

// The last `max_bytes` of a file (empty if unreadable).
std::string ReadTail(const std::string& path, size_t max_bytes);

}  // namespace vlorch::coord
