// A job as the coordinator knows it, and the lifecycle it goes through.
//
//                    submit                      resume
//                      │                  ┌─────────────────────┐
//                      ▼                  │                     │
//   ┌────────────► queued ──► launching ──► running ──► succeeded
//   │ preempted       │          │  ▲        │  │ │
//   │ (SIGTERM:       │          │  │ next   │  │ └──────────► failed ◄─┐
//   │  checkpoint,    │          │  └─stage──┘  │  bad input /          │
//   │  requeue)       │          │              │  budget spent         │
//   │                 │          ▼              ▼                       │
//   └─────────────────┼──── restarting ◄── rank died / hang / lost ─────┘
//                     │    (back-off, then launching; restarts += 1)
//                     ▼
//                 cancelled  (from any state but succeeded; resume → queued)
//
// `running` also covers checkpointing: a committed checkpoint is an event, not a state, so
// a job never looks stopped while its ranks write.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "common/status.h"

namespace vlorch::coord {

enum class JobState { kQueued, kLaunching, kRunning, kRestarting, kSucceeded, kFailed, kCancelled };
const char* JobStateName(JobState state);
StatusOr<JobState> ParseJobState(const std::string& name);
bool IsTerminal(JobState state);  // succeeded, failed, cancelled
// The edges of the diagram above.
bool CanTransition(JobState from, JobState to);

// One rank of the current incarnation, as its messages describe it.
struct RankInfo {
  int rank = 0;
  std::string host;
  int64_t pid = 0;
  // /proc/PID/stat starttime read when the rank registered from this host (0: another host or
  // gone): with the launcher's ancestry, the proof a pid is this rank's before it is signalled.
  int64_t pid_start_ticks = 0;
  int64_t incarnation = -1;
  double registered_at = 0;    // unix seconds
  double last_heartbeat = 0;   // unix seconds
  std::string stage;
  int64_t step = 0;
  double loss = 0;
  double samples_per_second = 0;
  double data_wait_seconds = 0;
  // Hang detection: the communicator call entered last.
  std::string coll_group, coll_op;
  uint64_t coll_seq = 0;
  bool coll_inside = false;
  double coll_since = 0;       // unix seconds when entered (inside) or left
  int coll_group_size = 0;
};

struct StageRecord {
  std::string name;
  std::string status = "pending";  // pending, running, done
  int64_t step = 0;
  int64_t total_steps = 0;
  std::string last_checkpoint;     // last committed checkpoint reported or found
  int64_t last_checkpoint_step = -1;
};

struct JobRecord {
  std::string id;
  // The current incarnation's control-plane public key (Z85; jobs/control_keys.h): the ZAP
  // handler admits ranks that hold its secret half, for this job and incarnation only.
  std::string curve_public;
  std::string name;          // the spec's job name
  std::string spec_path;     // absolute
  std::string spec_yaml;     // the text submitted, kept for the record
  std::string run_dir;
  int np = 0;
  std::string hostfile;      // empty: this machine
  std::map<std::string, std::string> env;  // forwarded to every rank with mpirun -x
  bool attached = false;     // started outside the coordinator (attach mode): tracked only
  JobState state = JobState::kQueued;
  std::vector<StageRecord> stages;
  int current_stage = 0;
  int restarts = 0;
  int restart_budget = 3;
  int64_t incarnation = 0;   // bumped at every launch; older messages are ignored
  double submitted_at = 0, started_at = 0, finished_at = 0, next_launch_at = 0;
  int64_t launcher_pid = 0;  // mpirun, while launching/running
  int64_t launcher_start_ticks = 0;  // its start time (/proc/PID/stat), against pid reuse
  std::string log_dir;       // the current incarnation's logs
  std::vector<std::string> failure_causes;
  std::string pending_cause;  // why the coordinator is stopping the current incarnation
  // Latest progress (from rank 0).
  double loss = 0, samples_per_second = 0;
  double steps_per_second = 0;       // smoothed, for the ETA
  double last_progress_at = 0;       // unix seconds
  int64_t last_progress_step = -1;
  std::map<int, RankInfo> ranks;  // not persisted with the job (see StateStore::PutRanks)
};

// The job without its ranks (those are stored and served separately, see AppendJson).
nlohmann::json ToJson(const JobRecord& job);
StatusOr<JobRecord> JobFromJson(const nlohmann::json& j);
RankInfo RankFromJson(const nlohmann::json& j);
// Appends a rank as compact JSON text — {rank, host, pid, incarnation, registered_at,
// last_heartbeat, stage, step, loss, samples_per_second, data_wait_seconds, collective{group,
// op, seq, inside, since, group_size}}, non-finite numbers as null — plus "heartbeat_age_s" =
// now - last_heartbeat when `now` is given. The only rank encoder (RankFromJson reads it back):
// written directly rather than through a json tree, because GET /api/jobs/ID and the rank flush
// do this for thousands of ranks, where the tree cost ~10 us a rank.
void AppendJson(const RankInfo& rank, std::string* out, std::optional<double> now = std::nullopt);

// Unix time in seconds.
double Now();

}  // namespace vlorch::coord
