// Shared by the `vlorch` subcommands: exit codes from a Status, and read-only store opening.
#pragma once

#include <cstdio>
#include <memory>
#include <string>

#include "common/status.h"
#include "sharding/shard_store.h"

namespace vlorch::cli {

constexpr int kExitFailed = 1;
constexpr int kExitBadInput = 2;

// Prints the error; 2 for bad input (invalid or missing), 1 for everything else.
inline int Fail(const Status& s) {
  std::fprintf(stderr, "vlorch: %s\n", s.message().c_str());
  return s.code() == StatusCode::kInvalidArgument || s.code() == StatusCode::kNotFound ? kExitBadInput : kExitFailed;
}

inline StatusOr<std::unique_ptr<sharding::ShardStore>> OpenReadOnly(const std::string& dir) {
  sharding::ShardStoreOptions o;
  o.read_only = true;
  return sharding::ShardStore::Open(dir, o);
}

}  // namespace vlorch::cli
