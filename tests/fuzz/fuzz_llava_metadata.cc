// LLaVA CC595K's metadata.json (joined to chat.json by id): any bytes give records with or
// without metadata, or an error; never a crash, whatever its nesting or size.
#include <cstdint>
#include <filesystem>
#include <fstream>

#include "sharding/readers.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  namespace fs = std::filesystem;
  const fs::path dir = vlorch::fuzz::ScratchDir() / "llava-meta";
  static const bool made = [&] {
    fs::create_directories(dir / "images");
    std::ofstream(dir / "images" / "a.jpg") << "not really a jpeg";
    std::ofstream(dir / "chat.json")
        << R"([{"id":"a","image":"a.jpg","conversations":[{"from":"human","value":"<image>"},{"from":"gpt","value":"x"}]},)"
        << R"({"id":"b","image":"a.jpg","conversations":[{"from":"human","value":"<image>"},{"from":"gpt","value":"y"}]}])";
    return true;
  }();
  (void)made;
  vlorch::fuzz::WriteScratch("llava-meta/metadata.json", data, size);
  vlorch::sharding::ReadLimits limits;
  limits.max_record_bytes = 1 << 16;
  auto reader = vlorch::sharding::OpenLlava(dir.string(), limits);
  if (!reader.ok()) return 0;
  vlorch::sharding::RawRecord r;
  for (int i = 0; i < 10; ++i) {
    auto more = (*reader)->Next(&r);
    if (!more.ok() || !*more) break;
    // An entry over the limit is skipped; one within it is re-serialised, which can lengthen
    // numbers ("1e9" -> "1000000000.0") but not without bound.
    if (r.metadata_json.size() > 16 * limits.max_record_bytes) __builtin_trap();
  }
  return 0;
}
