// JPEG validation at ingest: the header and the whole entropy-coded image are decoded with
// libjpeg-turbo to the end-of-image marker (every coefficient Huffman-decoded; rows skipped
// without inverse DCT or colour work, the last one decoded at 1/8 scale), with warnings
// treated as errors so truncation and corrupt data are caught.
//
// The image's size is what its SOF header declares, so it is checked against JpegLimits
// before anything is allocated for the decode (a progressive image's decoder holds all of
// its coefficients: about 2 bytes per pixel per component at 4:4:4, so 60000 x 60000 would be
// ~20 GiB); the number of scans is counted while decoding (libjpeg's progress monitor, as
// libjpeg-turbo's djpeg -maxscans and TJPARAM_SCANLIMIT do) because each scan of a
// progressive image is another pass over all its coefficients, and a few kilobytes can hold
// thousands of scans.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "common/status.h"

namespace vlorch::sharding {

struct JpegLimits {
  // Widest or tallest image accepted, from the header. Default 16384 (a 16K panorama; the
  // JPEG format's own limit is 65535).
  uint32_t max_side = 16384;
  // Most pixels (width x height) accepted, from the header. Default 2^26 = 67,108,864
  // (64 Mpixel, e.g. 8192 x 8192 or a 61-Mpixel camera's 9504 x 6336): a progressive image
  // that size holds up to ~384 MiB of coefficients in its decoder, per validation thread.
  uint64_t max_pixels = uint64_t{1} << 26;
  // Most scans accepted. Default 100: libjpeg's standard progressive script has 10 (6 for
  // greyscale), and baseline images have 1 (or one per component when not interleaved).
  int max_scans = 100;

  Status Validate() const;
};

struct JpegCheck {
  bool ok = false;
  uint32_t width = 0, height = 0;  // from the header (also when the image is over a limit)
  // When !ok: "zero_byte_image", "undecodable_image", "image_too_large" (width or height or
  // pixels over the limit; nothing was decoded) or "too_many_scans".
  std::string reason;
  std::string detail;  // what was wrong: libjpeg-turbo's message, or the size and the limit
};

// Thread-safe (one decompressor per thread).
JpegCheck CheckJpeg(std::string_view bytes, const JpegLimits& limits = {});

}  // namespace vlorch::sharding
