// img2dataset shards (NNNNN.tar): any bytes give records, quarantined records or an error
// naming the tar; a member declaring more bytes than the file holds is never allocated.
#include <cstdint>

#include "sharding/readers.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  vlorch::sharding::ReadLimits limits;
  limits.max_image_bytes = 1 << 20;
  limits.max_record_bytes = 1 << 16;
  const std::string path = vlorch::fuzz::WriteScratch("00000.tar", data, size);
  auto reader = vlorch::sharding::OpenImg2DatasetTar(path, limits);
  if (!reader.ok()) return 0;
  vlorch::sharding::RawRecord r;
  for (int i = 0; i < 10000; ++i) {
    auto more = (*reader)->Next(&r);
    if (!more.ok() || !*more) break;
    if (r.image.size() > limits.max_image_bytes) __builtin_trap();
  }
  return 0;
}
