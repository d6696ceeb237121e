#include "dataflow/image.h"
#include "sharding/turbojpeg_handle.h"

#include <turbojpeg.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include <fmt/format.h>

namespace vlorch::dataflow {
namespace {

// ---- Pillow's resampler (Resample.c), 8 bits per channel, 3 channels ----------------------
constexpr int kPrecisionBits = 32 - 8 - 2;

double Bicubic(double x) {
  constexpr double a = -0.5;
  if (x < 0.0) x = -x;
  if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
  if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
  return 0.0;
}

struct Coeffs {
  int ksize = 0;
  std::vector<int> bounds;  // per output: xmin, count
  std::vector<int32_t> k;   // per output: ksize fixed-point weights
};

// Pillow's filter for resizing in_size -> out_size, for the outputs first .. first + count - 1
// (entry i of the result is output first + i).
Coeffs Precompute(int in_size, int out_size, int first, int count) {
  Coeffs c;
  const double scale = static_cast<double>(in_size) / out_size;
  const double filterscale = std::max(scale, 1.0);
  const double support = 2.0 * filterscale;
  c.ksize = static_cast<int>(std::ceil(support)) * 2 + 1;
  c.bounds.resize(count * 2);
  c.k.assign(static_cast<size_t>(count) * c.ksize, 0);
  std::vector<double> w(c.ksize);
  for (int i = 0; i < count; ++i) {
    const int xx = first + i;
    const double center = (xx + 0.5) * scale;
    const double ss = 1.0 / filterscale;
    int xmin = static_cast<int>(center - support + 0.5);
    if (xmin < 0) xmin = 0;
    int xmax = static_cast<int>(center + support + 0.5);
    if (xmax > in_size) xmax = in_size;
    xmax -= xmin;
    double ww = 0.0;
    for (int x = 0; x < xmax; ++x) {
      w[x] = Bicubic((x + xmin - center + 0.5) * ss);
      ww += w[x];
    }
    for (int x = 0; x < xmax; ++x) {
      double v = ww != 0.0 ? w[x] / ww : w[x];
      c.k[i * c.ksize + x] = static_cast<int32_t>(v < 0 ? -0.5 + v * (1 << kPrecisionBits) : 0.5 + v * (1 << kPrecisionBits));
    }
    c.bounds[i * 2] = xmin;
    c.bounds[i * 2 + 1] = xmax;
  }
  return c;
}

// Pillow accumulates in 32 bits: 255 x 2^22 x (sum of |weights| < 2) cannot overflow.
inline uint8_t Clip8(int32_t v) {
  v >>= kPrecisionBits;
  return static_cast<uint8_t>(v < 0 ? 0 : v > 255 ? 255 : v);
}

// Per-thread buffers: an image's intermediates are up to a few MB, and a fresh allocation of
// that size is a fresh mmap, page-faulted again on every image.
struct Scratch {
  std::vector<uint8_t> rgb, transposed, resampled, horiz, crop;
  std::vector<int32_t> acc;
};
Scratch& ThreadScratch() {
  thread_local Scratch s;
  return s;
}

// Resamples along the first axis of an array of rows (row i at in + i * stride, row_len
// bytes used): output row r = sum_t in[bounds_r + t - row_offset] * k_r[t], accumulated
// over whole input rows (a contiguous, vectorisable inner loop). Integer sums are exact in any
// order, so this equals Pillow's per-pixel loop bit for bit. Built for AVX2 as well as the
// x86-64 baseline (the widening 32-bit multiplies are what SSE2 lacks), chosen at load time.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
__attribute__((target_clones("avx2", "default")))
#endif
void ResampleRows(const uint8_t* __restrict in, size_t stride, int row_len, int row_offset, const Coeffs& c,
                  int out_rows, uint8_t* __restrict out, int32_t* __restrict acc) {
  for (int r = 0; r < out_rows; ++r) {
    const int first = c.bounds[r * 2] - row_offset, taps = c.bounds[r * 2 + 1];
    const int32_t* k = &c.k[static_cast<size_t>(r) * c.ksize];
    for (int x = 0; x < row_len; ++x) acc[x] = 1 << (kPrecisionBits - 1);
    for (int t = 0; t < taps; ++t) {
      const uint8_t* __restrict line = in + static_cast<size_t>(first + t) * stride;
      const int32_t w = k[t];
      for (int x = 0; x < row_len; ++x) acc[x] += line[x] * w;
    }
    uint8_t* __restrict o = out + static_cast<size_t>(r) * row_len;
    for (int x = 0; x < row_len; ++x) o[x] = Clip8(acc[x]);
  }
}

// [rows][cols] of 3-byte pixels (row i at in + i * stride) -> [cols][rows], in square tiles
// so that both the reads and the writes stay within a few cache lines per row.
void TransposeRgb(const uint8_t* in, size_t stride, int rows, int cols, uint8_t* out) {
  constexpr int kTile = 16;
  for (int r0 = 0; r0 < rows; r0 += kTile) {
    const int r1 = std::min(rows, r0 + kTile);
    for (int c0 = 0; c0 < cols; c0 += kTile) {
      const int c1 = std::min(cols, c0 + kTile);
      for (int r = r0; r < r1; ++r) {
        const uint8_t* p = in + static_cast<size_t>(r) * stride + static_cast<size_t>(c0) * 3;
        uint8_t* q = out + (static_cast<size_t>(c0) * rows + r) * 3;
        for (int c = c0; c < c1; ++c, p += 3, q += static_cast<size_t>(rows) * 3) {
          q[0] = p[0];
          q[1] = p[1];
          q[2] = p[2];
        }
      }
    }
  }
}

// RGB interleaved, w x h, resized to ow x oh like Pillow's ImagingResample with BICUBIC
// (horizontal pass first, rounded to 8 bits, then vertical), of which only the size x size
// window at (left, top) is computed and written to `out`. Each output pixel depends only on
// its own filter taps, so the window equals the same window of the full resize bit for bit,
// at a fraction of its cost when the aspect ratio is far from 1.
void ResizeCrop(const uint8_t* in, int w, int h, int ow, int oh, int left, int top, int size, uint8_t* out) {
  Scratch& s = ThreadScratch();
  const size_t out_row = static_cast<size_t>(size) * 3;
  Coeffs vert;
  int row0 = top, rows = size;  // the input rows the vertical pass reads
  if (oh != h) {
    vert = Precompute(h, oh, top, size);
    row0 = vert.bounds[0];
    rows = vert.bounds[size * 2 - 2] + vert.bounds[size * 2 - 1] - row0;
  }
  // Horizontal pass over those rows into `src` (rows x size pixels), as a pass over the
  // transposed rows.
  const uint8_t* src = in + (static_cast<size_t>(row0) * w + left) * 3;
  size_t src_stride = static_cast<size_t>(w) * 3;
  if (ow != w) {
    s.transposed.resize(static_cast<size_t>(rows) * w * 3);
    s.resampled.resize(static_cast<size_t>(rows) * size * 3);
    s.horiz.resize(static_cast<size_t>(rows) * size * 3);
    s.acc.resize(std::max<size_t>(s.acc.size(), static_cast<size_t>(rows) * 3));
    TransposeRgb(in + static_cast<size_t>(row0) * w * 3, static_cast<size_t>(w) * 3, rows, w, s.transposed.data());
    ResampleRows(s.transposed.data(), static_cast<size_t>(rows) * 3, rows * 3, 0, Precompute(w, ow, left, size),
                 size, s.resampled.data(), s.acc.data());
    TransposeRgb(s.resampled.data(), static_cast<size_t>(rows) * 3, size, rows, s.horiz.data());
    src = s.horiz.data();
    src_stride = out_row;
  }
  if (oh == h) {
    for (int y = 0; y < size; ++y) std::copy_n(src + y * src_stride, out_row, out + y * out_row);
    return;
  }
  s.acc.resize(std::max(s.acc.size(), out_row));
  ResampleRows(src, src_stride, static_cast<int>(out_row), row0, vert, size, out, s.acc.data());
}

// Decodes and resizes+crops to size x size RGB (HWC), in ThreadScratch().crop.
StatusOr<DecodedImage> DecodeCrop(std::string_view jpeg, const ImageOptions& o) {
  if (o.size < 1) return InvalidArgumentError("image size must be >= 1");
  sharding::TurboJpegDecompressor& d = sharding::TurboJpegDecompressor::ForThisThread();
  auto* data = reinterpret_cast<const unsigned char*>(jpeg.data());
  int w = 0, h = 0, ss = 0, cs = 0;
  if (jpeg.empty() || tjDecompressHeader3(d.get(), data, jpeg.size(), &w, &h, &ss, &cs) != 0 || w < 1 || h < 1) {
    std::string why = jpeg.empty() ? "empty image" : tjGetErrorStr2(d.get());
    d.Reset();
    return InvalidArgumentError("not a decodable JPEG: " + why);
  }
  DecodedImage info;
  info.width = w;
  info.height = h;
  int dw = w, dh = h;
  if (o.dct_scaling) {
    // The smallest power-of-two reduction (1/2, 1/4, 1/8) that still leaves at least twice
    // the target on the shortest side, so the final bicubic resize keeps antialiasing at least
    // a 2x reduction. Measured against torchvision (tests/dataflow/image_test.cc): leaving
    // less (640x481 halved to 241 px before 224) moved values by 0.20 on average, leaving 2x
    // by about 0.04; libjpeg-turbo's 1/8-step factors (7/8, 13/16, ...) are not used at all.
    for (int denom : {2, 4, 8}) {
      tjscalingfactor f{1, denom};
      int sw = TJSCALED(w, f), sh = TJSCALED(h, f);
      if (std::min(sw, sh) < 2 * o.size) break;
      dw = sw;
      dh = sh;
    }
  }
  Scratch& s = ThreadScratch();
  s.rgb.resize(static_cast<size_t>(dw) * dh * 3);
  if (tjDecompress2(d.get(), data, jpeg.size(), s.rgb.data(), dw, 0, dh, TJPF_RGB, TJFLAG_STOPONWARNING) != 0) {
    std::string why = tjGetErrorStr2(d.get());
    d.Reset();
    return InvalidArgumentError("JPEG data is damaged or truncated: " + why);
  }
  info.decoded_width = dw;
  info.decoded_height = dh;
  // torchvision Resize(int): the short side becomes `size`, the long one int(size*long/short).
  int ow, oh;
  if (dw <= dh) {
    ow = o.size;
    oh = static_cast<int>(static_cast<int64_t>(o.size) * dh / dw);
  } else {
    oh = o.size;
    ow = static_cast<int>(static_cast<int64_t>(o.size) * dw / dh);
  }
  // torchvision center_crop: int(round((h - size) / 2.0)), Python's round is half-to-even.
  const int top = static_cast<int>(std::nearbyint((oh - o.size) / 2.0));
  const int left = static_cast<int>(std::nearbyint((ow - o.size) / 2.0));
  s.crop.resize(static_cast<size_t>(o.size) * o.size * 3);
  ResizeCrop(s.rgb.data(), dw, dh, ow, oh, left, top, o.size, s.crop.data());
  return info;
}

}  // namespace

StatusOr<DecodedImage> DecodeClipFloat(std::string_view jpeg, const ImageOptions& o, float* out) {
  ASSIGN_OR_RETURN(DecodedImage info, DecodeCrop(jpeg, o));
  // torchvision: ToTensor divides by 255, Normalize subtracts mean and divides by std; the
  // same float expression tabulated once per channel and byte value.
  float lut[3][256];
  for (int c = 0; c < 3; ++c)
    for (int v = 0; v < 256; ++v) lut[c][v] = (static_cast<float>(v) / 255.0f - o.mean[c]) / o.std[c];
  const size_t plane = static_cast<size_t>(o.size) * o.size;
  const uint8_t* p = ThreadScratch().crop.data();
  float* r = out;
  float* g = out + plane;
  float* b = out + 2 * plane;
  for (size_t i = 0; i < plane; ++i, p += 3) {
    r[i] = lut[0][p[0]];
    g[i] = lut[1][p[1]];
    b[i] = lut[2][p[2]];
  }
  return info;
}

StatusOr<DecodedImage> DecodeClipUint8(std::string_view jpeg, const ImageOptions& o, uint8_t* out) {
  ASSIGN_OR_RETURN(DecodedImage info, DecodeCrop(jpeg, o));
  const size_t plane = static_cast<size_t>(o.size) * o.size;
  const uint8_t* p = ThreadScratch().crop.data();
  for (size_t i = 0; i < plane; ++i, p += 3) {
    out[i] = p[0];
    out[plane + i] = p[1];
    out[2 * plane + i] = p[2];
  }
  return info;
}

}  // namespace vlorch::dataflow
