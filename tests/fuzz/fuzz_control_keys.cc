// The published CURVE credentials file and the UTF-8 sanitiser it shares the boundary with:
// ParseCurveFile returns valid credentials or an error; SanitizeUtf8 always returns valid
// UTF-8, within its byte bound, and leaves valid text unchanged.
#include <cstdint>
#include <string>

#include "common/utf8.h"
#include "jobs/control_keys.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  auto c = vlorch::ParseCurveFile(text, "fuzz");
  if (c.ok() && !c->Valid()) __builtin_trap();
  const std::string clean = vlorch::SanitizeUtf8(text);
  if (!vlorch::IsValidUtf8(clean)) __builtin_trap();
  if (vlorch::IsValidUtf8(text) && clean != text) __builtin_trap();
  const size_t bound = size / 2;
  const std::string cut = vlorch::SanitizeUtf8(text, bound);
  if (cut.size() > bound || !vlorch::IsValidUtf8(cut)) __builtin_trap();
  return 0;
}
