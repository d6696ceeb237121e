// LLaVA CC595K chat.json (streamed element by element, with images/ beside it): any bytes
// give records, quarantined records or an error; an image path never leaves images/ (the
// only file outside it, secret.txt, must never be read into a record).
#include <cstdint>
#include <filesystem>
#include <fstream>

#include "sharding/readers.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  namespace fs = std::filesystem;
  const fs::path dir = vlorch::fuzz::ScratchDir() / "llava";
  static const bool made = [&] {
    fs::create_directories(dir / "images" / "sub");
    std::ofstream(dir / "secret.txt") << "SECRET-OUTSIDE-IMAGES";
    std::ofstream(dir / "images" / "a.jpg") << "not really a jpeg";
    std::ofstream(dir / "images" / "sub" / "b.jpg") << "neither";
    return true;
  }();
  (void)made;
  vlorch::fuzz::WriteScratch("llava/chat.json", data, size);
  vlorch::sharding::ReadLimits limits;
  limits.max_record_bytes = 1 << 16;
  auto reader = vlorch::sharding::OpenLlava(dir.string(), limits);
  if (!reader.ok()) return 0;
  vlorch::sharding::RawRecord r;
  for (int i = 0; i < 10000; ++i) {
    auto more = (*reader)->Next(&r);
    if (!more.ok() || !*more) break;
    if (r.image.find("SECRET-OUTSIDE-IMAGES") != std::string::npos) __builtin_trap();
  }
  return 0;
}
