// JPEG validation at ingest: the header and the whole entropy-coded image are decoded with
// libjpeg-turbo to the end-of-image marker (every coefficient Huffman-decoded; rows skipped
// without inverse DCT or colour work, the last one decoded at 1/8 scale), with warnings
// treated as errors so truncation and corrupt data are caught.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace vlorch::sharding {

struct JpegCheck {
  bool ok = false;
  uint32_t width = 0, height = 0;
  std::string reason;  // "zero_byte_image" or "undecodable_image" when !ok
  std::string detail;  // libjpeg-turbo's message
};

// Thread-safe (one decompressor per thread).
JpegCheck CheckJpeg(std::string_view bytes);

}  // namespace vlorch::sharding
