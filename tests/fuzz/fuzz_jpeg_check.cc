// The ingest's JPEG validation: any bytes give ok or a reason from the documented list, never
// a crash, a hang on a scan bomb or an allocation past the limits (libFuzzer's -rss_limit_mb).
#include <cstdint>
#include <string_view>

#include "sharding/jpeg_check.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  vlorch::sharding::JpegLimits limits;
  limits.max_side = 4096;  // keep each run's decode small; the check is what is fuzzed
  limits.max_pixels = 1 << 22;
  const auto c = vlorch::sharding::CheckJpeg(std::string_view(reinterpret_cast<const char*>(data), size), limits);
  if (!c.ok && c.reason != "zero_byte_image" && c.reason != "undecodable_image" && c.reason != "image_too_large" &&
      c.reason != "too_many_scans")
    __builtin_trap();
  if (c.ok && (c.width > limits.max_side || c.height > limits.max_side)) __builtin_trap();
  return 0;
}
