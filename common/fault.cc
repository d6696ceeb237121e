#include "common/fault.h"

#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <sstream>

namespace vlorch {
namespace {

// Parsed once: "kill:a=1:b=2" -> {a:1, b:2}; empty when unset or not a kill spec.
const std::map<std::string, int64_t>& Spec() {
  static const std::map<std::string, int64_t> spec = [] {
    std::map<std::string, int64_t> out;
    const char* env = std::getenv("VLORCH_FAULT");
    if (env == nullptr) return out;
    std::string s(env);
    if (s.rfind("kill:", 0) != 0) {
      std::fprintf(stderr, "vlorch: ignoring VLORCH_FAULT=%s (expected kill:key=value[:key=value...])\n", env);
      return out;
    }
    std::stringstream ss(s.substr(5));
    std::string part;
    while (std::getline(ss, part, ':')) {
      auto eq = part.find('=');
      if (eq == std::string::npos) continue;
      out[part.substr(0, eq)] = std::strtoll(part.c_str() + eq + 1, nullptr, 10);
    }
    return out;
  }();
  return spec;
}

}  // namespace

void MaybeKill(const std::vector<std::pair<std::string, int64_t>>& point) {
  const auto& spec = Spec();
  if (spec.empty()) return;
  size_t matched = 0;
  for (const auto& [k, v] : point) {
    auto it = spec.find(k);
    if (it == spec.end()) continue;
    if (it->second != v) return;
    ++matched;
  }
  if (matched != spec.size()) return;
  std::fprintf(stderr, "vlorch: VLORCH_FAULT kill point reached, sending SIGKILL to self\n");
  std::fflush(stderr);
  std::raise(SIGKILL);
}

}  // namespace vlorch
