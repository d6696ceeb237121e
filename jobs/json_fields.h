// Checked reads of the small JSON files that come back from disk: checkpoint manifests,
// trainer states, the run-directory lock. Internal to the checkpoint layout (jobs/) and its
// writer (worker/checkpoint/).
//
// Nothing here throws. nlohmann::json's get<T>() and value() throw type_error on a value of
// the wrong type, so every accessor checks the type and range first and returns Corruption
// naming the file and the field ("<path>: field \"files[2].bytes\" is -5, expected an
// integer from 0 to ..."). Values read from disk are never echoed back into messages, only
// their JSON type or, for numbers, the number.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include <nlohmann/json.hpp>

#include "common/status.h"

namespace vlorch::checkpoint::internal {

// The bytes of a regular file of at most `max_bytes`. NotFound when it does not exist;
// Corruption when it is a directory, FIFO or device (refused without blocking) or larger;
// IOError when the OS refuses the read.
StatusOr<std::string> ReadSmallFile(const std::string& path, size_t max_bytes);

// `text` (read from `path`) as one JSON object. Corruption when it is not: truncated,
// invalid UTF-8, trailing bytes, or another JSON type.
StatusOr<nlohmann::json> ParseObject(const std::string& path, const std::string& text);

// The fields of one JSON object read from `path`; `prefix` names where the object sits
// ("files[2].") in messages. Keeps references: `object` and `path` outlive it.
class Fields {
 public:
  Fields(const nlohmann::json& object, const std::string& path, std::string prefix = "")
      : object_(object), path_(path), prefix_(std::move(prefix)) {}

  bool Has(const std::string& key) const { return object_.contains(key); }
  // An integer in [min, max] (JSON floats such as 4.0 or 1e30 are refused).
  StatusOr<int64_t> Int(const std::string& key, int64_t min, int64_t max) const;
  // An unsigned integer of at most `max`.
  StatusOr<uint64_t> Uint(const std::string& key, uint64_t max) const;
  // A number; null (how nlohmann writes NaN and infinities) reads as NaN.
  StatusOr<double> Number(const std::string& key) const;
  // A string of at most `max_bytes` bytes (valid UTF-8: the parser checked it).
  StatusOr<std::string> String(const std::string& key, size_t max_bytes) const;
  // An array of at most `max_items` elements.
  StatusOr<const nlohmann::json*> Array(const std::string& key, size_t max_items) const;

  // Corruption "<path>: field \"<prefix><key>\" <what>".
  Status Error(const std::string& key, const std::string& what) const;

 private:
  StatusOr<const nlohmann::json*> Find(const std::string& key) const;

  const nlohmann::json& object_;
  const std::string& path_;
  std::string prefix_;
};

}  // namespace vlorch::checkpoint::internal
