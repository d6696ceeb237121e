// Shared by the `vlorch` subcommands: exit codes (client_cmd.h) and read-only store opening.
#pragma once

#include <memory>
#include <string>

#include "common/status.h"
#include "coordinator/cli/client_cmd.h"
#include "sharding/shard_store.h"

namespace vlorch::cli {

inline StatusOr<std::unique_ptr<sharding::ShardStore>> OpenReadOnly(const std::string& dir) {
  sharding::ShardStoreOptions o;
  o.read_only = true;
  return sharding::ShardStore::Open(dir, o);
}

}  // namespace vlorch::cli
