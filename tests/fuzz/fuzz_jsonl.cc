// Text JSONL sources: every line gives a record or a quarantine reason; the reader never
// throws, and never returns more records than lines.
#include <cstdint>

#include "sharding/readers.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  vlorch::sharding::ReadLimits limits;
  limits.max_record_bytes = 4096;
  const std::string path = vlorch::fuzz::WriteScratch("in.jsonl", data, size);
  auto reader = vlorch::sharding::OpenJsonl(path, limits);
  if (!reader.ok()) return 0;
  size_t lines = 1;
  for (size_t i = 0; i < size; ++i) lines += data[i] == '\n';
  vlorch::sharding::RawRecord r;
  size_t n = 0;
  for (;;) {
    auto more = (*reader)->Next(&r);
    if (!more.ok() || !*more) break;
    if (++n > lines) __builtin_trap();
    if (r.reject_reason.empty() && r.text.size() > limits.max_record_bytes) __builtin_trap();
  }
  return 0;
}
