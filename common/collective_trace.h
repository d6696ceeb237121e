// The communicator call this process entered last, for hang detection: the worker's agent
// reports it with every heartbeat, and the coordinator names the rank that has not entered
// collective #n while every other member of the group waits in it.
//
// Cheap enough for every call (one mutex, no allocation once a name is set); no LibTorch,
// no MPI.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

namespace vlorch {

struct CollectiveTraceEntry {
  std::string group;
  std::string op;
  uint64_t seq = 0;
  int group_size = 0;
  bool inside = false;
  bool any = false;  // false until the first call
  std::chrono::steady_clock::time_point since;  // entered (inside) or left (not inside)
};

// Marks the call entered on construction and left on destruction.
class TracedCollective {
 public:
  TracedCollective(const std::string& group, const char* op, uint64_t seq, int group_size);
  ~TracedCollective();
  TracedCollective(const TracedCollective&) = delete;
  TracedCollective& operator=(const TracedCollective&) = delete;
};

CollectiveTraceEntry CurrentCollective();

}  // namespace vlorch
