#include "common/fault.h"

#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <sstream>
#include <thread>

namespace vlorch {
namespace {

// The signal a matching point raises; 0 for "hang".
int& Action() {
  static int signal = SIGKILL;
  return signal;
}

std::vector<FaultKey>& Context() {
  static std::vector<FaultKey> keys;
  return keys;
}

// Parsed once: "kill:a=1:b=2" -> {a:1, b:2}; empty when unset or not a kill spec.
const std::map<std::string, std::string>& Spec() {
  static const std::map<std::string, std::string> spec = [] {
    std::map<std::string, std::string> out;
    const char* env = std::getenv("VLORCH_FAULT");
    if (env == nullptr) return out;
    std::string s(env);
    if (s.rfind("kill:", 0) != 0 && s.rfind("term:", 0) != 0 && s.rfind("hang:", 0) != 0) {
      std::fprintf(stderr, "vlorch: ignoring VLORCH_FAULT=%s (expected kill|term|hang:key=value[:key=value...])\n", env);
      return out;
    }
    Action() = s[0] == 'k' ? SIGKILL : s[0] == 't' ? SIGTERM : 0;
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

void SetFaultContext(const std::string& key, int64_t value) {
  for (auto& k : Context()) {
    if (k.key == key) {
      k.value = std::to_string(value);
      return;
    }
  }
  Context().emplace_back(key, value);
}

void MaybeKill(const std::vector<FaultKey>& point) {
  const auto& spec = Spec();
  if (spec.empty()) return;
  size_t matched = 0;
  std::vector<FaultKey> all = point;
  all.insert(all.end(), Context().begin(), Context().end());
  for (const auto& p : all) {
    auto it = spec.find(p.key);
    if (it == spec.end()) continue;
    if (it->second != p.value) return;
    ++matched;
  }
  if (matched != spec.size()) return;
  if (Action() == 0) {
    std::fprintf(stderr, "vlorch: VLORCH_FAULT point reached, hanging here\n");
    std::fflush(stderr);
    for (;;) std::this_thread::sleep_for(std::chrono::hours(1));
  }
  std::fprintf(stderr, "vlorch: VLORCH_FAULT point reached, sending %s to self\n",
               Action() == SIGKILL ? "SIGKILL" : "SIGTERM");
  std::fflush(stderr);
  std::raise(Action());
}

}  // namespace vlorch
