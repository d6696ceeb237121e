// safetensors files (checkpoints, Hugging Face weights): FromBytes parses the 8-byte length,
// the JSON header and every tensor's offsets against the bytes present; any input returns a
// file or an error, and every tensor it accepts lies inside the buffer.
#include <cstdint>
#include <string>

#include "common/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto f = vlorch::safetensors::SafetensorsFile::FromBytes("fuzz.safetensors", std::string(reinterpret_cast<const char*>(data), size));
  if (!f.ok()) return 0;
  volatile uint8_t sink = 0;
  for (const auto& t : (*f)->tensors()) {
    // Touch the first and last byte: ASan reports a view that points outside the buffer.
    if (t.nbytes > 0) sink = sink + t.data[0] + t.data[t.nbytes - 1];
    if ((*f)->Find(t.name) == nullptr) __builtin_trap();
  }
  return 0;
}
