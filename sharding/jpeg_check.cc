#include "sharding/jpeg_check.h"

#include <turbojpeg.h>

#include <memory>
#include <vector>

namespace vlorch::sharding {
namespace {

// One TurboJPEG handle per thread. After a failed call the handle is replaced: reusing it
// made the next, valid image's header come back with a zero dimension (seen with 2.1.5), so
// results depended on which images a thread had seen before.
struct Decompressor {
  tjhandle h = tjInitDecompress();
  ~Decompressor() {
    if (h != nullptr) tjDestroy(h);
  }
  void Reset() {
    if (h != nullptr) tjDestroy(h);
    h = tjInitDecompress();
  }
};

}  // namespace

JpegCheck CheckJpeg(std::string_view bytes) {
  JpegCheck out;
  if (bytes.empty()) {
    out.reason = "zero_byte_image";
    out.detail = "the image file is empty";
    return out;
  }
  thread_local Decompressor d;
  auto* data = reinterpret_cast<const unsigned char*>(bytes.data());
  int w = 0, h = 0, subsamp = 0, colorspace = 0;
  if (tjDecompressHeader3(d.h, data, bytes.size(), &w, &h, &subsamp, &colorspace) != 0) {
    out.reason = "undecodable_image";
    out.detail = std::string("not a JPEG header: ") + tjGetErrorStr2(d.h);
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
  if (tjDecompress2(d.h, data, bytes.size(), buf.data(), sw, 0, sh, TJPF_RGB, TJFLAG_STOPONWARNING) != 0) {
    out.reason = "undecodable_image";
    out.detail = std::string("JPEG data is damaged or truncated: ") + tjGetErrorStr2(d.h);
    d.Reset();
    return out;
  }
  out.ok = true;
  out.width = static_cast<uint32_t>(w);
  out.height = static_cast<uint32_t>(h);
  return out;
}

}  // namespace vlorch::sharding
