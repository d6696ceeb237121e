#include "sharding/jpeg_check.h"
#include "sharding/turbojpeg_handle.h"

#include <turbojpeg.h>

#include <memory>
#include <vector>

namespace vlorch::sharding {
JpegCheck CheckJpeg(std::string_view bytes) {
  JpegCheck out;
  if (bytes.empty()) {
    out.reason = "zero_byte_image";
    out.detail = "the image file is empty";
    return out;
  }
  TurboJpegDecompressor& d = TurboJpegDecompressor::ForThisThread();
  auto* data = reinterpret_cast<const unsigned char*>(bytes.data());
  int w = 0, h = 0, subsamp = 0, colorspace = 0;
  if (tjDecompressHeader3(d.get(), data, bytes.size(), &w, &h, &subsamp, &colorspace) != 0) {
    out.reason = "undecodable_image";
    out.detail = std::string("not a JPEG header: ") + tjGetErrorStr2(d.get());
    d.Reset();
    return out;
  }
  // A badly truncated file can yield a "successful" header with a zero dimension, and
  // tjDecompress2 reads a zero width/height as "the image's own", which would decode at full
  // size into the small buffer below.
  if (w < 1 || h < 1) {
    out.reason = "undecodable_image";
    out.detail = "JPEG header has zero width or height (truncated?)";
    return out;
  }
  const int sw = TJSCALED(w, (tjscalingfactor{1, 8})), sh = TJSCALED(h, (tjscalingfactor{1, 8}));
  thread_local std::vector<unsigned char> buf;
  buf.resize(static_cast<size_t>(sw) * sh * 3);
  if (tjDecompress2(d.get(), data, bytes.size(), buf.data(), sw, 0, sh, TJPF_RGB, TJFLAG_STOPONWARNING) != 0) {
    out.reason = "undecodable_image";
    out.detail = std::string("JPEG data is damaged or truncated: ") + tjGetErrorStr2(d.get());
    d.Reset();
    return out;
  }
  out.ok = true;
  out.width = static_cast<uint32_t>(w);
  out.height = static_cast<uint32_t>(h);
  return out;
}

}  // namespace vlorch::sharding
