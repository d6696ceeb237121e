#include "jobs/control_protocol.h"

#include <limits>
#include <type_traits>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

namespace vlorch {
namespace {

using nlohmann::json;

constexpr const char* kTypeNames[] = {"register", "heartbeat", "progress", "checkpoint", "stage_done", "error"};

// Field readers: InvalidArgument naming the field when it is missing (and required) or of
// the wrong JSON type.
class Reader {
 public:
  explicit Reader(const json& j) : j_(j) {}

  template <typename T>
  Status Get(const char* key, T* out, bool required) {
    auto it = j_.find(key);
    if (it == j_.end()) {
      if (required) return InvalidArgumentError(fmt::format("field '{}' is missing", key));
      return Status::OK();
    }
    if constexpr (std::is_same_v<T, std::string>) {
      if (!it->is_string()) return Wrong(key, "a string");
      if (it->get_ref<const std::string&>().size() > 4096) return InvalidArgumentError(fmt::format("field '{}' is longer than 4096 bytes", key));
    } else if constexpr (std::is_same_v<T, bool>) {
      if (!it->is_boolean()) return Wrong(key, "true or false");
    } else if constexpr (std::is_floating_point_v<T>) {
      if (it->is_null()) {  // JSON has no NaN/inf: a diverged loss travels as null
        *out = std::numeric_limits<T>::quiet_NaN();
        return Status::OK();
      }
      if (!it->is_number()) return Wrong(key, "a number");
    } else if constexpr (std::is_unsigned_v<T>) {
      if (!it->is_number_unsigned()) return Wrong(key, "a non-negative integer");
    } else {
      if (!it->is_number_integer()) return Wrong(key, "an integer");
      const int64_t v = it->get<int64_t>();
      if (v < std::numeric_limits<T>::min() || v > std::numeric_limits<T>::max())
        return InvalidArgumentError(fmt::format("field '{}' is out of range", key));
    }
    *out = it->get<T>();
    return Status::OK();
  }

 private:
  static Status Wrong(const char* key, const char* what) {
    return InvalidArgumentError(fmt::format("field '{}' must be {}", key, what));
  }
  const json& j_;
};

}  // namespace

const char* MessageTypeName(MessageType type) { return kTypeNames[static_cast<int>(type)]; }

bool IsJobIdChar(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-';
}

bool IsValidJobId(std::string_view id) {
  if (id.empty() || id.size() > 64 || id[0] == '.') return false;
  for (char c : id)
    if (!IsJobIdChar(c)) return false;
  return true;
}

std::string EncodeMessage(const ControlMessage& m) {
  json j;
  j["v"] = m.version;
  j["type"] = MessageTypeName(m.type);
  j["job"] = m.job;
  j["rank"] = m.rank;
  j["incarnation"] = m.incarnation;
  switch (m.type) {
    case MessageType::kRegister:
      j["world"] = m.world;
      j["host"] = m.host;
      j["pid"] = m.pid;
      j["stage"] = m.stage;
      j["spec"] = m.spec;
      j["run_dir"] = m.run_dir;
      j["attach"] = m.attach;
      break;
    case MessageType::kHeartbeat:
      if (m.collective) {
        const auto& c = *m.collective;
        j["collective"] = {{"group", c.group}, {"op", c.op},           {"seq", c.seq},
                           {"inside", c.inside}, {"seconds", c.seconds}, {"group_size", c.group_size}};
      }
      break;
    case MessageType::kProgress:
      j["stage"] = m.stage;
      j["step"] = m.step;
      j["total_steps"] = m.total_steps;
      j["loss"] = m.loss;
      j["samples_per_second"] = m.samples_per_second;
      j["data_wait_seconds"] = m.data_wait_seconds;
      break;
    case MessageType::kCheckpoint:
    case MessageType::kStageDone:
      j["stage"] = m.stage;
      j["step"] = m.step;
      j["checkpoint"] = m.checkpoint;
      break;
    case MessageType::kError:
      j["stage"] = m.stage;
      j["cause"] = m.cause;
      break;
  }
  return j.dump(-1, ' ', false, json::error_handler_t::replace);  // a cause cut mid-character stays sendable
}

StatusOr<ControlMessage> DecodeMessage(std::string_view bytes) {
  if (bytes.size() > kMaxMessageBytes)
    return InvalidArgumentError(fmt::format("message of {} bytes is over the {} byte limit", bytes.size(), kMaxMessageBytes));
  json j = json::parse(bytes.begin(), bytes.end(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return InvalidArgumentError("message is not valid JSON");
  if (!j.is_object()) return InvalidArgumentError("message is not a JSON object");
  ControlMessage m;
  Reader r(j);
  RETURN_IF_ERROR(r.Get("v", &m.version, true));
  if (m.version != kProtocolVersion)
    return InvalidArgumentError(fmt::format("protocol version {} is not supported (this coordinator speaks {}); run "
                                            "workers and coordinator from the same vlorch release",
                                            m.version, kProtocolVersion));
  std::string type;
  RETURN_IF_ERROR(r.Get("type", &type, true));
  bool known = false;
  for (int i = 0; i < 6; ++i) {
    if (type == kTypeNames[i]) m.type = static_cast<MessageType>(i), known = true;
  }
  if (!known) return InvalidArgumentError(fmt::format("unknown message type '{}'", type.substr(0, 64)));
  RETURN_IF_ERROR(r.Get("job", &m.job, true));
  if (!IsValidJobId(m.job)) return InvalidArgumentError("field 'job' is not a valid job id ([A-Za-z0-9._-], 1-64 chars)");
  RETURN_IF_ERROR(r.Get("rank", &m.rank, true));
  if (m.rank < 0 || m.rank >= (1 << 20)) return InvalidArgumentError("field 'rank' is out of range");
  RETURN_IF_ERROR(r.Get("incarnation", &m.incarnation, true));
  if (m.incarnation < 0) return InvalidArgumentError("field 'incarnation' is negative");
  switch (m.type) {
    case MessageType::kRegister:
      RETURN_IF_ERROR(r.Get("world", &m.world, true));
      if (m.world <= 0 || m.rank >= m.world) return InvalidArgumentError("field 'world' must be > rank");
      RETURN_IF_ERROR(r.Get("host", &m.host, true));
      RETURN_IF_ERROR(r.Get("pid", &m.pid, true));
      RETURN_IF_ERROR(r.Get("stage", &m.stage, false));
      RETURN_IF_ERROR(r.Get("spec", &m.spec, false));
      RETURN_IF_ERROR(r.Get("run_dir", &m.run_dir, false));
      RETURN_IF_ERROR(r.Get("attach", &m.attach, false));
      break;
    case MessageType::kHeartbeat: {
      auto it = j.find("collective");
      if (it != j.end() && !it->is_null()) {
        if (!it->is_object()) return InvalidArgumentError("field 'collective' must be an object");
        CollectiveState c;
        Reader cr(*it);
        RETURN_IF_ERROR(cr.Get("group", &c.group, true));
        RETURN_IF_ERROR(cr.Get("op", &c.op, true));
        RETURN_IF_ERROR(cr.Get("seq", &c.seq, true));
        RETURN_IF_ERROR(cr.Get("inside", &c.inside, true));
        RETURN_IF_ERROR(cr.Get("seconds", &c.seconds, true));
        RETURN_IF_ERROR(cr.Get("group_size", &c.group_size, false));
        m.collective = std::move(c);
      }
      break;
    }
    case MessageType::kProgress:
      RETURN_IF_ERROR(r.Get("stage", &m.stage, true));
      RETURN_IF_ERROR(r.Get("step", &m.step, true));
      RETURN_IF_ERROR(r.Get("total_steps", &m.total_steps, false));
      RETURN_IF_ERROR(r.Get("loss", &m.loss, false));
      RETURN_IF_ERROR(r.Get("samples_per_second", &m.samples_per_second, false));
      RETURN_IF_ERROR(r.Get("data_wait_seconds", &m.data_wait_seconds, false));
      break;
    case MessageType::kCheckpoint:
    case MessageType::kStageDone:
      RETURN_IF_ERROR(r.Get("stage", &m.stage, true));
      RETURN_IF_ERROR(r.Get("step", &m.step, true));
      RETURN_IF_ERROR(r.Get("checkpoint", &m.checkpoint, true));
      break;
    case MessageType::kError:
      RETURN_IF_ERROR(r.Get("stage", &m.stage, false));
      RETURN_IF_ERROR(r.Get("cause", &m.cause, true));
      break;
  }
  return m;
}

}  // namespace vlorch
