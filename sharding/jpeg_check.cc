#include "sharding/jpeg_check.h"
#include "sharding/libjpeg_decompressor.h"

#include <cstdio>
#include <string>

#include <fmt/format.h>

namespace vlorch::sharding {
namespace {

// libjpeg's progress monitor, called before each step of input (several per scan): fails
// the decode, through the error manager's longjmp, once the image has started more than
// max_scans scans. `pub` first: libjpeg hands back a pointer to it.
struct ScanLimit {
  jpeg_progress_mgr pub;
  int max_scans;
  bool exceeded;
};

void CheckScanCount(j_common_ptr c) {
  auto* limit = reinterpret_cast<ScanLimit*>(c->progress);
  const int scans = reinterpret_cast<j_decompress_ptr>(c)->input_scan_number;
  if (scans <= limit->max_scans) return;
  limit->exceeded = true;
  auto* err = reinterpret_cast<JpegErrorMgr*>(c->err);
  std::snprintf(err->message, sizeof(err->message), "more than %d scans", limit->max_scans);
  longjmp(err->jump, 1);
}

// Decodes the whole entropy-coded image to its end: every row but the last is skipped
// (jpeg_skip_scanlines Huffman-decodes each MCU and discards the coefficients, with no inverse
// DCT, upsampling or colour conversion), the last is decoded at 1/8 scale, and
// jpeg_finish_decompress reads on to the end-of-image marker. Corrupt or truncated data shows
// up as the same libjpeg warnings a full decode raises, and any warning fails.
bool DecodeToEnd(LibjpegDecompressor& d, unsigned char* row) {
  jpeg_decompress_struct* c = d.get();
  if (setjmp(d.err().jump)) return false;
  c->scale_num = 1;
  c->scale_denom = 8;
  c->out_color_space = JCS_RGB;
  jpeg_start_decompress(c);
  if (c->output_height > 1) jpeg_skip_scanlines(c, c->output_height - 1);
  JSAMPROW rows[1] = {row};
  while (c->output_scanline < c->output_height) jpeg_read_scanlines(c, rows, 1);
  jpeg_finish_decompress(c);
  return true;
}

}  // namespace

Status JpegLimits::Validate() const {
  if (max_side < 1) return InvalidArgumentError("JPEG limits: max_side must be >= 1");
  if (max_pixels < 1) return InvalidArgumentError("JPEG limits: max_pixels must be >= 1");
  if (max_scans < 1) return InvalidArgumentError("JPEG limits: max_scans must be >= 1");
  return Status::OK();
}

JpegCheck CheckJpeg(std::string_view bytes, const JpegLimits& limits) {
  JpegCheck out;
  if (bytes.empty()) {
    out.reason = "zero_byte_image";
    out.detail = "the image file is empty";
    return out;
  }
  LibjpegDecompressor& d = LibjpegDecompressor::ForThisThread();
  if (!d.ReadHeader(bytes.data(), bytes.size())) {
    out.reason = "undecodable_image";
    out.detail = "not a JPEG header: " + d.TakeError();
    return out;
  }
  jpeg_decompress_struct* c = d.get();
  if (c->image_width < 1 || c->image_height < 1) {
    out.reason = "undecodable_image";
    out.detail = "JPEG header has zero width or height (truncated?)";
    d.Reset();
    return out;
  }
  out.width = c->image_width;
  out.height = c->image_height;
  // Before jpeg_start_decompress, which allocates for the declared size.
  const uint64_t pixels = uint64_t{out.width} * out.height;
  if (out.width > limits.max_side || out.height > limits.max_side || pixels > limits.max_pixels) {
    out.reason = "image_too_large";
    out.detail = fmt::format("the JPEG header declares {}x{} ({} pixels), over the limit of {} pixels per side and {} "
                             "pixels (JpegLimits::max_side, max_pixels); it was not decoded",
                             out.width, out.height, pixels, limits.max_side, limits.max_pixels);
    d.Reset();
    return out;
  }
  // The monitor lives on this stack frame: it is detached before returning (Reset, after a
  // failure, starts a fresh decompressor without one).
  ScanLimit scan_limit{};
  scan_limit.pub.progress_monitor = CheckScanCount;
  scan_limit.max_scans = limits.max_scans;
  c->progress = &scan_limit.pub;
  // One output row at 1/8 scale: (width + 7) / 8 RGB pixels.
  thread_local std::string row;
  row.resize((static_cast<size_t>(out.width) + 7) / 8 * 3 + 64);
  if (!DecodeToEnd(d, reinterpret_cast<unsigned char*>(row.data()))) {
    const std::string why = d.TakeError();
    if (scan_limit.exceeded) {
      out.reason = "too_many_scans";
      out.detail = fmt::format("the {}x{} JPEG has more than {} scans, the limit (JpegLimits::max_scans); decoding "
                               "stopped there. Re-encode it (e.g. jpegtran -optimize) if it is genuine",
                               out.width, out.height, limits.max_scans);
    } else {
      out.reason = "undecodable_image";
      out.detail = "JPEG data is damaged or truncated: " + why;
    }
    out.width = out.height = 0;
    return out;
  }
  c->progress = nullptr;
  out.ok = true;
  return out;
}

}  // namespace vlorch::sharding
