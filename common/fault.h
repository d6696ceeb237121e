// Named kill points for crash tests, compiled in and off unless VLORCH_FAULT is set.
//
//   VLORCH_FAULT=kill:ingest-batch=2          SIGKILL after the 2nd committed ingest batch
//   VLORCH_FAULT=kill:rank=2:step=37          (worker) rank 2 at step 37
//
// A point fires when every key=value of the spec equals a value the code reports there;
// keys the spec names that the point does not report make it not match. The process then
// kills itself with SIGKILL, exactly like `kill -9` from outside, at a deterministic place.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace vlorch {

// Calls raise(SIGKILL) when VLORCH_FAULT names this point.
void MaybeKill(const std::vector<std::pair<std::string, int64_t>>& point);

}  // namespace vlorch
