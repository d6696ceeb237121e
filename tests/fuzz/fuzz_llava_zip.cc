// LLaVA CC595K with its images in images.zip (read without unpacking): any bytes as the zip
// give records, quarantined records or an error naming images.zip; no image read into a
// record is larger than the limit, whatever the zip's directory declares.
#include <cstdint>
#include <filesystem>
#include <fstream>

#include "sharding/readers.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  namespace fs = std::filesystem;
  const fs::path dir = vlorch::fuzz::ScratchDir() / "llava-zip";
  static const bool made = [&] {
    fs::create_directories(dir);
    std::ofstream(dir / "chat.json")
        << R"([{"id":"a","image":"a.jpg","conversations":[{"from":"human","value":"<image>"},{"from":"gpt","value":"x"}]},)"
        << R"({"id":"b","image":"sub/b.jpg","conversations":[{"from":"human","value":"<image>"},{"from":"gpt","value":"y"}]},)"
        << R"({"id":"c","image":"../c.jpg","conversations":[{"from":"human","value":"<image>"},{"from":"gpt","value":"z"}]}])";
    return true;
  }();
  (void)made;
  vlorch::fuzz::WriteScratch("llava-zip/images.zip", data, size);
  vlorch::sharding::ReadLimits limits;
  limits.max_record_bytes = 1 << 16;
  limits.max_image_bytes = 1 << 16;
  auto reader = vlorch::sharding::OpenLlava(dir.string(), limits);
  if (!reader.ok()) return 0;
  vlorch::sharding::RawRecord r;
  for (int i = 0; i < 100; ++i) {
    auto more = (*reader)->Next(&r);
    if (!more.ok() || !*more) break;
    if (r.image.size() > limits.max_image_bytes) __builtin_trap();
  }
  return 0;
}
