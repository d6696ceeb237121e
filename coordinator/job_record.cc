#include "coordinator/job_record.h"

#include <chrono>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

namespace vlorch::coord {
namespace {

constexpr const char* kStateNames[] = {"queued", "launching", "running", "restarting", "succeeded", "failed", "cancelled"};

}  // namespace

const char* JobStateName(JobState state) { return kStateNames[static_cast<int>(state)]; }

StatusOr<JobState> ParseJobState(const std::string& name) {
  for (int i = 0; i < 7; ++i)
    if (name == kStateNames[i]) return static_cast<JobState>(i);
  return InvalidArgumentError(fmt::format("unknown job state '{}'", name));
}

bool IsTerminal(JobState s) { return s == JobState::kSucceeded || s == JobState::kFailed || s == JobState::kCancelled; }

bool CanTransition(JobState from, JobState to) {
  using S = JobState;
  if (to == S::kCancelled) return from != S::kSucceeded && from != S::kCancelled;
  switch (from) {
    case S::kQueued: return to == S::kLaunching;
    case S::kLaunching: return to == S::kRunning || to == S::kRestarting || to == S::kFailed || to == S::kQueued;
    case S::kRunning:
      return to == S::kLaunching || to == S::kSucceeded || to == S::kFailed || to == S::kRestarting ||
             to == S::kQueued;
    case S::kRestarting: return to == S::kLaunching || to == S::kFailed;
    case S::kFailed: return to == S::kQueued;
    case S::kCancelled: return to == S::kQueued;
    case S::kSucceeded: return false;
  }
  return false;
}

double Now() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

nlohmann::json ToJson(const RankInfo& r) {
  return {{"rank", r.rank},
          {"host", r.host},
          {"pid", r.pid},
          {"incarnation", r.incarnation},
          {"registered_at", r.registered_at},
          {"last_heartbeat", r.last_heartbeat},
          {"stage", r.stage},
          {"step", r.step},
          {"loss", r.loss},
          {"samples_per_second", r.samples_per_second},
          {"data_wait_seconds", r.data_wait_seconds},
          {"collective",
           {{"group", r.coll_group},
            {"op", r.coll_op},
            {"seq", r.coll_seq},
            {"inside", r.coll_inside},
            {"since", r.coll_since},
            {"group_size", r.coll_group_size}}}};
}

RankInfo RankFromJson(const nlohmann::json& j) {
  RankInfo r;
  r.rank = j.value("rank", 0);
  r.host = j.value("host", "");
  r.pid = j.value("pid", int64_t{0});
  r.incarnation = j.value("incarnation", int64_t{-1});
  r.registered_at = j.value("registered_at", 0.0);
  r.last_heartbeat = j.value("last_heartbeat", 0.0);
  r.stage = j.value("stage", "");
  r.step = j.value("step", int64_t{0});
  r.loss = j.value("loss", 0.0);
  r.samples_per_second = j.value("samples_per_second", 0.0);
  r.data_wait_seconds = j.value("data_wait_seconds", 0.0);
  if (j.contains("collective") && j["collective"].is_object()) {
    const auto& c = j["collective"];
    r.coll_group = c.value("group", "");
    r.coll_op = c.value("op", "");
    r.coll_seq = c.value("seq", uint64_t{0});
    r.coll_inside = c.value("inside", false);
    r.coll_since = c.value("since", 0.0);
    r.coll_group_size = c.value("group_size", 0);
  }
  return r;
}

nlohmann::json ToJson(const JobRecord& job, bool with_ranks) {
  nlohmann::json stages = nlohmann::json::array();
  for (const auto& s : job.stages) {
    stages.push_back({{"name", s.name},
                      {"status", s.status},
                      {"step", s.step},
                      {"total_steps", s.total_steps},
                      {"last_checkpoint", s.last_checkpoint},
                      {"last_checkpoint_step", s.last_checkpoint_step}});
  }
  nlohmann::json j = {{"id", job.id},
                      {"name", job.name},
                      {"spec_path", job.spec_path},
                      {"spec_yaml", job.spec_yaml},
                      {"run_dir", job.run_dir},
                      {"np", job.np},
                      {"hostfile", job.hostfile},
                      {"env", job.env},
                      {"attached", job.attached},
                      {"state", JobStateName(job.state)},
                      {"stages", stages},
                      {"current_stage", job.current_stage},
                      {"restarts", job.restarts},
                      {"restart_budget", job.restart_budget},
                      {"incarnation", job.incarnation},
                      {"submitted_at", job.submitted_at},
                      {"started_at", job.started_at},
                      {"finished_at", job.finished_at},
                      {"next_launch_at", job.next_launch_at},
                      {"launcher_pid", job.launcher_pid},
                      {"launcher_start_ticks", job.launcher_start_ticks},
                      {"log_dir", job.log_dir},
                      {"failure_causes", job.failure_causes},
                      {"pending_cause", job.pending_cause},
                      {"loss", job.loss},
                      {"samples_per_second", job.samples_per_second},
                      {"steps_per_second", job.steps_per_second},
                      {"last_progress_at", job.last_progress_at},
                      {"last_progress_step", job.last_progress_step}};
  if (with_ranks) {
    nlohmann::json ranks = nlohmann::json::array();
    for (const auto& [r, info] : job.ranks) ranks.push_back(ToJson(info));
    j["ranks"] = ranks;
  }
  return j;
}

StatusOr<JobRecord> JobFromJson(const nlohmann::json& j) {
  try {
    JobRecord job;
    job.id = j.at("id").get<std::string>();
    job.name = j.value("name", "");
    job.spec_path = j.value("spec_path", "");
    job.spec_yaml = j.value("spec_yaml", "");
    job.run_dir = j.value("run_dir", "");
    job.np = j.value("np", 0);
    job.hostfile = j.value("hostfile", "");
    job.env = j.value("env", std::map<std::string, std::string>{});
    job.attached = j.value("attached", false);
    ASSIGN_OR_RETURN(job.state, ParseJobState(j.value("state", "")));
    for (const auto& s : j.value("stages", nlohmann::json::array())) {
      StageRecord st;
      st.name = s.value("name", "");
      st.status = s.value("status", "pending");
      st.step = s.value("step", int64_t{0});
      st.total_steps = s.value("total_steps", int64_t{0});
      st.last_checkpoint = s.value("last_checkpoint", "");
      st.last_checkpoint_step = s.value("last_checkpoint_step", int64_t{-1});
      job.stages.push_back(st);
    }
    job.current_stage = j.value("current_stage", 0);
    job.restarts = j.value("restarts", 0);
    job.restart_budget = j.value("restart_budget", 3);
    job.incarnation = j.value("incarnation", int64_t{0});
    job.submitted_at = j.value("submitted_at", 0.0);
    job.started_at = j.value("started_at", 0.0);
    job.finished_at = j.value("finished_at", 0.0);
    job.next_launch_at = j.value("next_launch_at", 0.0);
    job.launcher_pid = j.value("launcher_pid", int64_t{0});
    job.launcher_start_ticks = j.value("launcher_start_ticks", int64_t{0});
    job.log_dir = j.value("log_dir", "");
    job.failure_causes = j.value("failure_causes", std::vector<std::string>{});
    job.pending_cause = j.value("pending_cause", "");
    job.loss = j.value("loss", 0.0);
    job.samples_per_second = j.value("samples_per_second", 0.0);
    job.steps_per_second = j.value("steps_per_second", 0.0);
    job.last_progress_at = j.value("last_progress_at", 0.0);
    job.last_progress_step = j.value("last_progress_step", int64_t{-1});
    return job;
  } catch (const nlohmann::json::exception& e) {
    return CorruptionError(fmt::format("job record: {}", e.what()));
  }
}

}  // namespace vlorch::coord
