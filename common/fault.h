// Named kill points for crash tests, compiled in and off unless VLORCH_FAULT is set.
//
//   VLORCH_FAULT=kill:ingest-batch=2          SIGKILL after the 2nd committed ingest batch
//   VLORCH_FAULT=kill:rank=2:step=37          (worker) rank 2 after step 37's update
//   VLORCH_FAULT=kill:rank=0:step=6:during=checkpoint-write
//                                             (worker) rank 0 halfway through writing the
//                                             checkpoint of step 6
//   VLORCH_FAULT=term:rank=0:step=3           SIGTERM instead (a preemption notice), once
//   VLORCH_FAULT=hang:rank=1:step=3:incarnation=0
//                                             (worker) rank 1 sleeps forever after step 3, in
//                                             the first launch only (a rank stuck before a
//                                             collective, for hang detection)
//
// A point fires when every key=value of the spec equals a value the code reports there;
// keys the spec names that the point does not report make it not match. The process then
// kills itself with SIGKILL, exactly like `kill -9` from outside, at a deterministic place
// ("kill:"), or sends itself SIGTERM as Slurm does before preemption ("term:").
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace vlorch {

// One key=value a kill point reports; values compare as text.
struct FaultKey {
  FaultKey(std::string k, int64_t v) : key(std::move(k)), value(std::to_string(v)) {}
  FaultKey(std::string k, const char* v) : key(std::move(k)), value(v) {}
  std::string key, value;
};

// Calls raise(SIGKILL) when VLORCH_FAULT names this point.
void MaybeKill(const std::vector<FaultKey>& point);

// A key every point of this process reports from now on (e.g. the worker's incarnation).
void SetFaultContext(const std::string& key, int64_t value);

}  // namespace vlorch
