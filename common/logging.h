// Logging with a rank and host prefix, and CHECKs for bugs.
//
// Every line reads "I 12:03:04.120 r3@node07] message" so that interleaved output of many
// ranks stays attributable. Call InitLogging() once per process (after MPI tells the rank);
// before that, lines carry "r?@host".
//
//   VLOG_INFO("rank {} joined group {}", rank, name);   // fmt-style formatting
//   VLORCH_CHECK(n >= 0) << "negative count " << n;     // aborts with file:line on failure
#pragma once

#include <sstream>
#include <string>

#include <fmt/format.h>

namespace vlorch {

enum class LogLevel { kDebug = 0, kInfo = 1, kWarning = 2, kError = 3 };

struct LogOptions {
  // Rank printed in the prefix; -1 prints "r?".
  int rank = -1;
  // Host printed in the prefix; empty means gethostname().
  std::string host;
  // Lines below this level are dropped. Overridden by VLORCH_LOG_LEVEL=debug|info|warning|error.
  LogLevel min_level = LogLevel::kInfo;
};

void InitLogging(const LogOptions& options);
bool LogEnabled(LogLevel level);
void LogLine(LogLevel level, const std::string& message);
// "r3@node07", used in error messages that must name the rank.
std::string RankTag();

namespace internal {
class CheckFailure {
 public:
  CheckFailure(const char* file, int line, const char* expr);
  [[noreturn]] ~CheckFailure();
  std::ostream& stream() { return stream_; }

 private:
  std::ostringstream stream_;
};
}  // namespace internal

}  // namespace vlorch

#define VLOG_AT_(level, ...)                                            \
  do {                                                                  \
    if (::vlorch::LogEnabled(level))                                    \
      ::vlorch::LogLine(level, ::fmt::format(__VA_ARGS__));             \
  } while (0)
#define VLOG_DEBUG(...) VLOG_AT_(::vlorch::LogLevel::kDebug, __VA_ARGS__)
#define VLOG_INFO(...) VLOG_AT_(::vlorch::LogLevel::kInfo, __VA_ARGS__)
#define VLOG_WARNING(...) VLOG_AT_(::vlorch::LogLevel::kWarning, __VA_ARGS__)
#define VLOG_ERROR(...) VLOG_AT_(::vlorch::LogLevel::kError, __VA_ARGS__)

#define VLORCH_CHECK(cond) \
  if (cond) {              \
  } else                   \
    ::vlorch::internal::CheckFailure(__FILE__, __LINE__, #cond).stream()
