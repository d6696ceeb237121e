#include "common/logging.h"

#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <mutex>

#include "common/host.h"

namespace vlorch {

std::string HostName(const char* fallback) {
  char buf[256] = {0};
  if (gethostname(buf, sizeof(buf) - 1) != 0) return fallback;
  return buf;
}
namespace {

struct LogState {
  std::mutex mu;
  std::string tag = "r?@?";
  std::atomic<int> min_level{static_cast<int>(LogLevel::kInfo)};
};

LogState& State() {
  static LogState* state = new LogState();  // never destroyed: logging works during exit
  return *state;
}

char LevelChar(LogLevel level) {
  switch (level) {
    case LogLevel::kDebug: return 'D';
    case LogLevel::kInfo: return 'I';
    case LogLevel::kWarning: return 'W';
    case LogLevel::kError: return 'E';
  }
  return '?';
}

bool ParseLevel(const char* s, LogLevel* out) {
  std::string v(s);
  if (v == "debug") *out = LogLevel::kDebug;
  else if (v == "info") *out = LogLevel::kInfo;
  else if (v == "warning" || v == "warn") *out = LogLevel::kWarning;
  else if (v == "error") *out = LogLevel::kError;
  else return false;
  return true;
}

}  // namespace

void InitLogging(const LogOptions& options) {
  LogState& s = State();
  std::string host = options.host.empty() ? HostName("?") : options.host;
  LogLevel level = options.min_level;
  if (const char* env = std::getenv("VLORCH_LOG_LEVEL")) {
    if (!ParseLevel(env, &level)) {
      std::fprintf(stderr, "vlorch: ignoring VLORCH_LOG_LEVEL=%s (use debug|info|warning|error)\n",
                   env);
    }
  }
  std::lock_guard<std::mutex> lock(s.mu);
  s.tag = (options.rank >= 0 ? "r" + std::to_string(options.rank) : std::string("r?")) + "@" + host;
  s.min_level = static_cast<int>(level);
}

bool LogEnabled(LogLevel level) { return static_cast<int>(level) >= State().min_level.load(); }

std::string RankTag() {
  LogState& s = State();
  std::lock_guard<std::mutex> lock(s.mu);
  return s.tag;
}

void LogLine(LogLevel level, const std::string& message) {
  using namespace std::chrono;
  auto now = system_clock::now();
  std::time_t t = system_clock::to_time_t(now);
  int ms = static_cast<int>(duration_cast<milliseconds>(now.time_since_epoch()).count() % 1000);
  std::tm tm;
  localtime_r(&t, &tm);
  LogState& s = State();
  std::lock_guard<std::mutex> lock(s.mu);
  std::fprintf(stderr, "%c %02d:%02d:%02d.%03d %s] %s\n", LevelChar(level), tm.tm_hour, tm.tm_min,
               tm.tm_sec, ms, s.tag.c_str(), message.c_str());
  std::fflush(stderr);
}

namespace internal {
CheckFailure::CheckFailure(const char* file, int line, const char* expr) {
  stream_ << file << ":" << line << ": CHECK failed: " << expr << " ";
}
CheckFailure::~CheckFailure() {
  LogLine(LogLevel::kError, stream_.str());
  std::abort();
}
}  // namespace internal

}  // namespace vlorch
