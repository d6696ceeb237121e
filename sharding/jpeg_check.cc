#include "sharding/jpeg_check.h"
#include "sharding/libjpeg_decompressor.h"

#include <string>

namespace vlorch::sharding {
namespace {

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

JpegCheck CheckJpeg(std::string_view bytes) {
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
  const jpeg_decompress_struct* c = d.get();
  if (c->image_width < 1 || c->image_height < 1) {
    out.reason = "undecodable_image";
    out.detail = "JPEG header has zero width or height (truncated?)";
    d.Reset();
    return out;
  }
  out.width = c->image_width;
  out.height = c->image_height;
  // One output row at 1/8 scale: (width + 7) / 8 RGB pixels.
  thread_local std::string row;
  row.resize((static_cast<size_t>(out.width) + 7) / 8 * 3 + 64);
  if (!DecodeToEnd(d, reinterpret_cast<unsigned char*>(row.data()))) {
    out.reason = "undecodable_image";
    out.detail = "JPEG data is damaged or truncated: " + d.TakeError();
    out.width = out.height = 0;
    return out;
  }
  out.ok = true;
  return out;
}

}  // namespace vlorch::sharding
