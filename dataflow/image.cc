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

Coeffs Precompute(int in_size, int out_size) {
  Coeffs c;
  const double scale = static_cast<double>(in_size) / out_size;
  const double filterscale = std::max(scale, 1.0);
  const double support = 2.0 * filterscale;
  c.ksize = static_cast<int>(std::ceil(support)) * 2 + 1;
  c.bounds.resize(out_size * 2);
  c.k.assign(static_cast<size_t>(out_size) * c.ksize, 0);
  std::vector<double> w(c.ksize);
  for (int xx = 0; xx < out_size; ++xx) {
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
      c.k[xx * c.ksize + x] = static_cast<int32_t>(v < 0 ? -0.5 + v * (1 << kPrecisionBits) : 0.5 + v * (1 << kPrecisionBits));
    }
    c.bounds[xx * 2] = xmin;
    c.bounds[xx * 2 + 1] = xmax;
  }
  return c;
}

// Pillow accumulates in 32 bits: 255 x 2^22 x (sum of |weights| < 2) cannot overflow.
inline uint8_t Clip8(int32_t v) {
  v >>= kPrecisionBits;
  return static_cast<uint8_t>(v < 0 ? 0 : v > 255 ? 255 : v);
}

// Resamples along the first axis of a [n][row_len] array: out[i] = sum_t in[bounds_i + t] * k_i[t],
// each output row accumulated over whole input rows (a contiguous, vectorisable inner loop).
// Integer sums are exact in any order, so this equals Pillow's per-pixel loop bit for bit.
void ResampleRows(const uint8_t* in, int row_len, int row_offset, const Coeffs& c, int out_rows, uint8_t* out) {
  std::vector<int32_t> acc(row_len);
  for (int r = 0; r < out_rows; ++r) {
    const int first = c.bounds[r * 2] - row_offset, taps = c.bounds[r * 2 + 1];
    const int32_t* k = &c.k[static_cast<size_t>(r) * c.ksize];
    std::fill(acc.begin(), acc.end(), 1 << (kPrecisionBits - 1));
    for (int t = 0; t < taps; ++t) {
      const uint8_t* line = in + static_cast<size_t>(first + t) * row_len;
      const int32_t w = k[t];
      for (int x = 0; x < row_len; ++x) acc[x] += line[x] * w;
    }
    uint8_t* o = out + static_cast<size_t>(r) * row_len;
    for (int x = 0; x < row_len; ++x) o[x] = Clip8(acc[x]);
  }
}

// [rows][cols] of 3-byte pixels -> [cols][rows].
void TransposeRgb(const uint8_t* in, int rows, int cols, uint8_t* out) {
  for (int r = 0; r < rows; ++r)
    for (int c = 0; c < cols; ++c) {
      const uint8_t* p = in + (static_cast<size_t>(r) * cols + c) * 3;
      uint8_t* q = out + (static_cast<size_t>(c) * rows + r) * 3;
      q[0] = p[0];
      q[1] = p[1];
      q[2] = p[2];
    }
}

// RGB interleaved, w x h -> ow x oh, like Pillow's ImagingResample with BICUBIC: horizontal
// pass first (over the rows the vertical pass needs), rounded to 8 bits, then vertical.
std::vector<uint8_t> Resize(const uint8_t* in, int w, int h, int ow, int oh) {
  Coeffs vert = Precompute(h, oh);
  const int ybox_first = vert.bounds[0];
  const int ybox_last = vert.bounds[oh * 2 - 2] + vert.bounds[oh * 2 - 1];
  const uint8_t* src = in;
  int rows = h, row0 = 0, sw = w;
  std::vector<uint8_t> horiz;
  if (ow != w) {
    // The horizontal pass as a pass over the transposed rows.
    rows = ybox_last - ybox_first;
    row0 = ybox_first;
    std::vector<uint8_t> t(static_cast<size_t>(rows) * w * 3), rt(static_cast<size_t>(rows) * ow * 3);
    TransposeRgb(in + static_cast<size_t>(ybox_first) * w * 3, rows, w, t.data());
    ResampleRows(t.data(), rows * 3, 0, Precompute(w, ow), ow, rt.data());
    horiz.resize(static_cast<size_t>(rows) * ow * 3);
    TransposeRgb(rt.data(), ow, rows, horiz.data());
    src = horiz.data();
    sw = ow;
  }
  if (oh == h) {
    if (src == in) return std::vector<uint8_t>(in, in + static_cast<size_t>(w) * h * 3);
    return horiz;
  }
  std::vector<uint8_t> out(static_cast<size_t>(oh) * sw * 3);
  ResampleRows(src, sw * 3, row0, vert, oh, out.data());
  return out;
}

// Decodes and resizes+crops to size x size RGB (HWC).
StatusOr<DecodedImage> DecodeCrop(std::string_view jpeg, const ImageOptions& o, std::vector<uint8_t>* crop) {
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
  thread_local std::vector<uint8_t> rgb;
  rgb.resize(static_cast<size_t>(dw) * dh * 3);
  if (tjDecompress2(d.get(), data, jpeg.size(), rgb.data(), dw, 0, dh, TJPF_RGB, TJFLAG_STOPONWARNING) != 0) {
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
  std::vector<uint8_t> resized = (ow == dw && oh == dh) ? rgb : Resize(rgb.data(), dw, dh, ow, oh);
  // torchvision center_crop: int(round((h - size) / 2.0)), Python's round is half-to-even.
  const int top = static_cast<int>(std::nearbyint((oh - o.size) / 2.0));
  const int left = static_cast<int>(std::nearbyint((ow - o.size) / 2.0));
  crop->resize(static_cast<size_t>(o.size) * o.size * 3);
  for (int y = 0; y < o.size; ++y)
    std::copy_n(&resized[(static_cast<size_t>(y + top) * ow + left) * 3], o.size * 3,
                &(*crop)[static_cast<size_t>(y) * o.size * 3]);
  return info;
}

}  // namespace

StatusOr<DecodedImage> DecodeClipFloat(std::string_view jpeg, const ImageOptions& o, float* out) {
  thread_local std::vector<uint8_t> crop;
  ASSIGN_OR_RETURN(DecodedImage info, DecodeCrop(jpeg, o, &crop));
  const size_t plane = static_cast<size_t>(o.size) * o.size;
  for (int c = 0; c < 3; ++c) {
    // torchvision: ToTensor divides by 255, Normalize subtracts mean and divides by std.
    const float mean = o.mean[c], sd = o.std[c];
    for (size_t i = 0; i < plane; ++i) out[c * plane + i] = (crop[i * 3 + c] / 255.0f - mean) / sd;
  }
  return info;
}

StatusOr<DecodedImage> DecodeClipUint8(std::string_view jpeg, const ImageOptions& o, uint8_t* out) {
  thread_local std::vector<uint8_t> crop;
  ASSIGN_OR_RETURN(DecodedImage info, DecodeCrop(jpeg, o, &crop));
  const size_t plane = static_cast<size_t>(o.size) * o.size;
  for (int c = 0; c < 3; ++c)
    for (size_t i = 0; i < plane; ++i) out[c * plane + i] = crop[i * 3 + c];
  return info;
}

}  // namespace vlorch::dataflow
