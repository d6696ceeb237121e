#include "jobs/json_fields.h"

#include "common/durable_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <limits>

#include <fmt/format.h>

namespace vlorch::checkpoint::internal {

StatusOr<std::string> ReadSmallFile(const std::string& path, size_t max_bytes) {
  return ReadMetadataFile(path, max_bytes);
}

StatusOr<nlohmann::json> ParseObject(const std::string& path, const std::string& text) {
  nlohmann::json j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded())
    return CorruptionError(fmt::format("{}: not valid JSON (truncated, damaged, or not UTF-8)", path));
  if (!j.is_object()) return CorruptionError(fmt::format("{}: a JSON {}, not an object", path, j.type_name()));
  return j;
}

Status Fields::Error(const std::string& key, const std::string& what) const {
  return CorruptionError(fmt::format("{}: field \"{}{}\" {}", path_, prefix_, key, what));
}

StatusOr<const nlohmann::json*> Fields::Find(const std::string& key) const {
  auto it = object_.find(key);
  if (it == object_.end()) return Error(key, "is missing");
  return &*it;
}

StatusOr<int64_t> Fields::Int(const std::string& key, int64_t min, int64_t max) const {
  ASSIGN_OR_RETURN(const nlohmann::json* v, Find(key));
  auto range = [&](const std::string& shown) {
    return Error(key, fmt::format("is {}, expected an integer from {} to {}", shown, min, max));
  };
  if (v->is_number_unsigned()) {
    const uint64_t u = v->get<uint64_t>();
    // nlohmann stores every non-negative integer as unsigned, so `min` applies here too.
    if (max < 0 || u > static_cast<uint64_t>(max) || (min > 0 && u < static_cast<uint64_t>(min)))
      return range(std::to_string(u));
    return static_cast<int64_t>(u);
  }
  if (v->is_number_integer()) {
    const int64_t i = v->get<int64_t>();
    if (i < min || i > max) return range(std::to_string(i));
    return i;
  }
  if (v->is_number_float()) return range(fmt::format("{:g}", v->get<double>()));
  return Error(key, fmt::format("is a JSON {}, expected an integer", v->type_name()));
}

StatusOr<uint64_t> Fields::Uint(const std::string& key, uint64_t max) const {
  ASSIGN_OR_RETURN(const nlohmann::json* v, Find(key));
  auto range = [&](const std::string& shown) {
    return Error(key, fmt::format("is {}, expected an integer from 0 to {}", shown, max));
  };
  if (v->is_number_unsigned()) {
    const uint64_t u = v->get<uint64_t>();
    if (u > max) return range(std::to_string(u));
    return u;
  }
  if (v->is_number_integer()) return range(std::to_string(v->get<int64_t>()));  // negative
  if (v->is_number_float()) return range(fmt::format("{:g}", v->get<double>()));
  return Error(key, fmt::format("is a JSON {}, expected an integer", v->type_name()));
}

StatusOr<double> Fields::Number(const std::string& key) const {
  ASSIGN_OR_RETURN(const nlohmann::json* v, Find(key));
  if (v->is_null()) return std::numeric_limits<double>::quiet_NaN();
  if (!v->is_number()) return Error(key, fmt::format("is a JSON {}, expected a number", v->type_name()));
  return v->get<double>();
}

StatusOr<std::string> Fields::String(const std::string& key, size_t max_bytes) const {
  ASSIGN_OR_RETURN(const nlohmann::json* v, Find(key));
  if (!v->is_string()) return Error(key, fmt::format("is a JSON {}, expected a string", v->type_name()));
  const std::string& s = v->get_ref<const std::string&>();
  if (s.size() > max_bytes) return Error(key, fmt::format("has {} bytes, more than {}", s.size(), max_bytes));
  return s;
}

StatusOr<const nlohmann::json*> Fields::Array(const std::string& key, size_t max_items) const {
  ASSIGN_OR_RETURN(const nlohmann::json* v, Find(key));
  if (!v->is_array()) return Error(key, fmt::format("is a JSON {}, expected an array", v->type_name()));
  if (v->size() > max_items) return Error(key, fmt::format("has {} entries, more than {}", v->size(), max_items));
  return v;
}

}  // namespace vlorch::checkpoint::internal
