#include "coordinator/job_record.h"

#include <chrono>
#include <cmath>
#include <iterator>
#include <limits>
#include <string_view>

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

namespace {

void AppendString(std::string_view s, std::string* out) {
  for (unsigned char c : s) {
    if (c >= 0x80) {  // non-ASCII: nlohmann's rules (invalid UTF-8 replaced), as Dump() does
      *out += nlohmann::json(std::string(s)).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
      return;
    }
  }
  out->push_back('"');
  for (unsigned char c : s) {
    switch (c) {
      case '"': *out += "\\\""; break;
      case '\\': *out += "\\\\"; break;
      case '\n': *out += "\\n"; break;
      case '\r': *out += "\\r"; break;
      case '\t': *out += "\\t"; break;
      case '\b': *out += "\\b"; break;
      case '\f': *out += "\\f"; break;
      default:
        if (c < 0x20) fmt::format_to(std::back_inserter(*out), "\\u{:04x}", c);
        else out->push_back(static_cast<char>(c));
    }
  }
  out->push_back('"');
}

// j[key] as a double: `dflt` when absent, NaN when null (how JSON carries non-finite numbers).
double Number(const nlohmann::json& j, const char* key, double dflt) {
  auto it = j.find(key);
  if (it == j.end()) return dflt;
  return it->is_null() ? std::numeric_limits<double>::quiet_NaN() : it->get<double>();
}

void AppendNumber(double v, std::string* out) {
  if (std::isfinite(v)) fmt::format_to(std::back_inserter(*out), "{}", v);
  else *out += "null";
}

}  // namespace

void AppendJson(const RankInfo& r, std::string* out, std::optional<double> now) {
  auto key = [out](const char* k) {
    *out += '"';
    *out += k;
    *out += "\":";
  };
  fmt::format_to(std::back_inserter(*out), "{{\"rank\":{},\"host\":", r.rank);
  AppendString(r.host, out);
  fmt::format_to(std::back_inserter(*out), ",\"pid\":{},\"pid_start_ticks\":{},\"incarnation\":{},", r.pid,
                 r.pid_start_ticks, r.incarnation);
  key("registered_at");
  AppendNumber(r.registered_at, out);
  *out += ',';
  key("last_heartbeat");
  AppendNumber(r.last_heartbeat, out);
  if (now) {
    *out += ',';
    key("heartbeat_age_s");
    AppendNumber(*now - r.last_heartbeat, out);
  }
  *out += ',';
  key("stage");
  AppendString(r.stage, out);
  fmt::format_to(std::back_inserter(*out), ",\"step\":{},", r.step);
  key("loss");
  AppendNumber(r.loss, out);
  *out += ',';
  key("samples_per_second");
  AppendNumber(r.samples_per_second, out);
  *out += ',';
  key("data_wait_seconds");
  AppendNumber(r.data_wait_seconds, out);
  *out += ",\"collective\":{\"group\":";
  AppendString(r.coll_group, out);
  *out += ",\"op\":";
  AppendString(r.coll_op, out);
  fmt::format_to(std::back_inserter(*out), ",\"seq\":{},\"inside\":{},", r.coll_seq, r.coll_inside);
  key("since");
  AppendNumber(r.coll_since, out);
  fmt::format_to(std::back_inserter(*out), ",\"group_size\":{}}}}}", r.coll_group_size);
}

RankInfo RankFromJson(const nlohmann::json& j) {
  RankInfo r;
  r.rank = j.value("rank", 0);
  r.host = j.value("host", "");
  r.pid = j.value("pid", int64_t{0});
  r.pid_start_ticks = j.value("pid_start_ticks", int64_t{0});
  r.incarnation = j.value("incarnation", int64_t{-1});
  r.registered_at = Number(j, "registered_at", 0.0);
  r.last_heartbeat = Number(j, "last_heartbeat", 0.0);
  r.stage = j.value("stage", "");
  r.step = j.value("step", int64_t{0});
  r.loss = Number(j, "loss", 0.0);
  r.samples_per_second = Number(j, "samples_per_second", 0.0);
  r.data_wait_seconds = Number(j, "data_wait_seconds", 0.0);
  if (j.contains("collective") && j["collective"].is_object()) {
    const auto& c = j["collective"];
    r.coll_group = c.value("group", "");
    r.coll_op = c.value("op", "");
    r.coll_seq = c.value("seq", uint64_t{0});
    r.coll_inside = c.value("inside", false);
    r.coll_since = Number(c, "since", 0.0);
    r.coll_group_size = c.value("group_size", 0);
  }
  return r;
}

nlohmann::json ToJson(const JobRecord& job) {
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
                      {"curve_public", job.curve_public},
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
    job.curve_public = j.value("curve_public", "");
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
    job.submitted_at = Number(j, "submitted_at", 0.0);
    job.started_at = Number(j, "started_at", 0.0);
    job.finished_at = Number(j, "finished_at", 0.0);
    job.next_launch_at = Number(j, "next_launch_at", 0.0);
    job.launcher_pid = j.value("launcher_pid", int64_t{0});
    job.launcher_start_ticks = j.value("launcher_start_ticks", int64_t{0});
    job.log_dir = j.value("log_dir", "");
    job.failure_causes = j.value("failure_causes", std::vector<std::string>{});
    job.pending_cause = j.value("pending_cause", "");
    job.loss = Number(j, "loss", 0.0);
    job.samples_per_second = Number(j, "samples_per_second", 0.0);
    job.steps_per_second = Number(j, "steps_per_second", 0.0);
    job.last_progress_at = Number(j, "last_progress_at", 0.0);
    job.last_progress_step = j.value("last_progress_step", int64_t{-1});
    return job;
  } catch (const nlohmann::json::exception& e) {
    return CorruptionError(fmt::format("job record: {}", e.what()));
  }
}

}  // namespace vlorch::coord
