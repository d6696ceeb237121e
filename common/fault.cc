#include "common/fault.h"

#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <sstream>

namespace vlorch {
namespace {

// The signal a matching point raises.
int& Action() {
  static int signal = SIGKILL;
  return signal;
}

// Parsed once: "kill:a=1:b=2" -> {a:1, b:2}; empty when unset or not a kill spec.
const std::map<std::string, std::string>& Spec() {
  static const std::map<std::string, std::string> spec = [] {
    std::map<std::string, std::string> out;
    const char* env = std::getenv("VLORCH_FAULT");
    if (env == nullptr) return out;
    std::string s(env);
    if (s.rfind("kill:", 0) != 0 && s.rfind("term:", 0) != 0) {
      std::fprintf(stderr, "vlorch: ignoring VLORCH_FAULT=%s (expected kill|term:key=value[:key=value...])\n", env);
      return out;
    }
    Action() = s[0] == 'k' ? SIGKILL : SIGTERM;
    std::stringstream ss(s.substr(5));
    std::string part;
    while (std::getline(ss, part, ':')) {
      auto eq = part.find('=');
      if (eq == std::string::npos) continue;
      out[part.substr(0, eq)] = part.substr(eq + 1);
    }
    return out;
  }();
  return spec;
}

}  // namespace

void MaybeKill(const std::vector<FaultKey>& point) {
  const auto& spec = Spec();
  if (spec.empty()) return;
  size_t matched = 0;
  for (const auto& p : point) {
    auto it = spec.find(p.key);
    if (it == spec.end()) continue;
    if (it->second != p.value) return;
    ++matched;
  }
  if (matched != spec.size()) return;
  std::fprintf(stderr, "vlorch: VLORCH_FAULT point reached, sending %s to self\n",
               Action() == SIGKILL ? "SIGKILL" : "SIGTERM");
  std::fflush(stderr);
  std::raise(Action());
}

}  // namespace vlorch
