#include "common/collective_trace.h"

#include <mutex>

namespace vlorch {
namespace {

std::mutex& Mu() {
  static std::mutex mu;
  return mu;
}
CollectiveTraceEntry& Entry() {
  static CollectiveTraceEntry entry;
  return entry;
}

}  // namespace

TracedCollective::TracedCollective(const std::string& group, const char* op, uint64_t seq, int group_size) {
  std::lock_guard<std::mutex> lock(Mu());
  auto& e = Entry();
  e.group.assign(group);
  e.op.assign(op);
  e.seq = seq;
  e.group_size = group_size;
  e.inside = true;
  e.any = true;
  e.since = std::chrono::steady_clock::now();
}

TracedCollective::~TracedCollective() {
  std::lock_guard<std::mutex> lock(Mu());
  Entry().inside = false;
  Entry().since = std::chrono::steady_clock::now();
}

CollectiveTraceEntry CurrentCollective() {
  std::lock_guard<std::mutex> lock(Mu());
  return Entry();
}

}  // namespace vlorch
