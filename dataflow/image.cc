#include "dataflow/image.h"

#include <csetjmp>

#include "sharding/libjpeg_decompressor.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <vector>

namespace vlorch::dataflow {
namespace {

std::atomic<bool> g_portable_kernels{false};  // SetImageKernels(kPortable)

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
  std::vector<unsigned char*> rows;  // libjpeg's row pointers into rgb
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

// ---- transposes --------------------------------------------------------------------------
// The horizontal pass runs over transposed rows, and the decoder writes interleaved RGB, so
// each image is split into channel planes and transposed on the way in (SplitTranspose) and
// transposed back after the pass (TransposeBytes). Moving 3-byte pixels one byte at a time
// cost more than the resampling itself (six memory operations per pixel); 16x16 byte tiles in
// SSE registers cost about one. Scalar versions cover the tiles' edges and non-x86 machines.

// planes[ch][c * plane_stride + r] = in[r * stride + c * 3 + ch] for r in [r0, r1), c in [c0, c1).
void SplitTransposeScalar(const uint8_t* in, size_t stride, int r0, int r1, int c0, int c1, uint8_t* const planes[3],
                          size_t plane_stride) {
  for (int c = c0; c < c1; ++c)
    for (int r = r0; r < r1; ++r) {
      const uint8_t* px = in + static_cast<size_t>(r) * stride + static_cast<size_t>(c) * 3;
      for (int ch = 0; ch < 3; ++ch) planes[ch][static_cast<size_t>(c) * plane_stride + r] = px[ch];
    }
}

// out[c * out_stride + r] = in[r * in_stride + c] for r in [r0, r1), c in [c0, c1).
void TransposeBytesScalar(const uint8_t* in, size_t in_stride, int r0, int r1, int c0, int c1, uint8_t* out,
                          size_t out_stride) {
  for (int c = c0; c < c1; ++c)
    for (int r = r0; r < r1; ++r) out[static_cast<size_t>(c) * out_stride + r] = in[static_cast<size_t>(r) * in_stride + c];
}

#if defined(__x86_64__) && defined(__GNUC__)
#define VLORCH_IMAGE_SSE 1
#define VLORCH_IMAGE_SIMD_CALL(call) call

// pshufb masks that gather channel k of 16 RGB pixels (48 bytes in three registers) from
// register `reg`: byte i takes source byte 3i + k when it lies in that register, else zero.
struct SplitMasks {
  alignas(16) uint8_t m[3][3][16];
};
constexpr SplitMasks MakeSplitMasks() {
  SplitMasks s{};
  for (int k = 0; k < 3; ++k)
    for (int reg = 0; reg < 3; ++reg)
      for (int i = 0; i < 16; ++i) {
        const int src = 3 * i + k;
        s.m[k][reg][i] = static_cast<uint8_t>(src / 16 == reg ? src % 16 : 0x80);
      }
  return s;
}
constexpr SplitMasks kSplitMasks = MakeSplitMasks();

// A 16x16 byte matrix in 16 registers (row i in x[i]) transposed in place: interleaving rows
// i and i + 8 byte-wise four times (log2 16) moves element (r, c) to (c, r).
__attribute__((target("ssse3"))) inline void Transpose16x16(__m128i x[16]) {
  for (int stage = 0; stage < 4; ++stage) {
    __m128i y[16];
    for (int i = 0; i < 8; ++i) {
      y[2 * i] = _mm_unpacklo_epi8(x[i], x[i + 8]);
      y[2 * i + 1] = _mm_unpackhi_epi8(x[i], x[i + 8]);
    }
    for (int i = 0; i < 16; ++i) x[i] = y[i];
  }
}

// The tile kernels below cover rows [r_begin, rows / 16 * 16) and whole 16-column tiles; the
// caller's scalar loops cover the rest.
__attribute__((target("ssse3"))) void SplitTransposeSse(const uint8_t* in, size_t stride, int r_begin, int rows, int cols,
                                                        uint8_t* const planes[3], size_t plane_stride) {
  const int rt = rows / 16 * 16, ct = cols / 16 * 16;
  for (int r0 = r_begin; r0 < rt; r0 += 16)
    for (int c0 = 0; c0 < ct; c0 += 16)
      for (int k = 0; k < 3; ++k) {
        const __m128i m0 = _mm_load_si128(reinterpret_cast<const __m128i*>(kSplitMasks.m[k][0]));
        const __m128i m1 = _mm_load_si128(reinterpret_cast<const __m128i*>(kSplitMasks.m[k][1]));
        const __m128i m2 = _mm_load_si128(reinterpret_cast<const __m128i*>(kSplitMasks.m[k][2]));
        __m128i x[16];
        for (int r = 0; r < 16; ++r) {
          const uint8_t* px = in + static_cast<size_t>(r0 + r) * stride + static_cast<size_t>(c0) * 3;
          const __m128i a = _mm_loadu_si128(reinterpret_cast<const __m128i*>(px));
          const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(px + 16));
          const __m128i c = _mm_loadu_si128(reinterpret_cast<const __m128i*>(px + 32));
          x[r] = _mm_or_si128(_mm_or_si128(_mm_shuffle_epi8(a, m0), _mm_shuffle_epi8(b, m1)), _mm_shuffle_epi8(c, m2));
        }
        Transpose16x16(x);
        for (int j = 0; j < 16; ++j)
          _mm_storeu_si128(reinterpret_cast<__m128i*>(planes[k] + static_cast<size_t>(c0 + j) * plane_stride + r0), x[j]);
      }
}

__attribute__((target("ssse3"))) void TransposeBytesSse(const uint8_t* in, size_t in_stride, int r_begin, int rows,
                                                        int cols, uint8_t* out, size_t out_stride) {
  const int rt = rows / 16 * 16, ct = cols / 16 * 16;
  for (int r0 = r_begin; r0 < rt; r0 += 16)
    for (int c0 = 0; c0 < ct; c0 += 16) {
      __m128i x[16];
      for (int r = 0; r < 16; ++r)
        x[r] = _mm_loadu_si128(reinterpret_cast<const __m128i*>(in + static_cast<size_t>(r0 + r) * in_stride + c0));
      Transpose16x16(x);
      for (int j = 0; j < 16; ++j)
        _mm_storeu_si128(reinterpret_cast<__m128i*>(out + static_cast<size_t>(c0 + j) * out_stride + r0), x[j]);
    }
}

// The same with AVX2 on 32-row x 16-column tiles: rows r and r + 16 share a register (one per
// 128-bit lane), the in-lane byte interleaves transpose both halves at once, and each result
// register is 32 consecutive bytes of an output row. Half the shuffles of the SSSE3 tiles.
// Covers rows [0, rows / 32 * 32) and whole 16-column tiles.
__attribute__((target("avx2"))) inline void Transpose32x16(__m256i x[16]) {
  for (int stage = 0; stage < 4; ++stage) {
    __m256i y[16];
    for (int i = 0; i < 8; ++i) {
      y[2 * i] = _mm256_unpacklo_epi8(x[i], x[i + 8]);
      y[2 * i + 1] = _mm256_unpackhi_epi8(x[i], x[i + 8]);
    }
    for (int i = 0; i < 16; ++i) x[i] = y[i];
  }
}

__attribute__((target("avx2"))) inline __m256i LoadTwoRows(const uint8_t* lo, const uint8_t* hi) {
  return _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(lo))),
                                 _mm_loadu_si128(reinterpret_cast<const __m128i*>(hi)), 1);
}

__attribute__((target("avx2"))) void SplitTransposeAvx2(const uint8_t* in, size_t stride, int rows, int cols,
                                                        uint8_t* const planes[3], size_t plane_stride) {
  const int rt = rows / 32 * 32, ct = cols / 16 * 16;
  const size_t half = 16 * stride;
  for (int r0 = 0; r0 < rt; r0 += 32)
    for (int c0 = 0; c0 < ct; c0 += 16)
      for (int k = 0; k < 3; ++k) {
        const __m256i m0 = _mm256_broadcastsi128_si256(_mm_load_si128(reinterpret_cast<const __m128i*>(kSplitMasks.m[k][0])));
        const __m256i m1 = _mm256_broadcastsi128_si256(_mm_load_si128(reinterpret_cast<const __m128i*>(kSplitMasks.m[k][1])));
        const __m256i m2 = _mm256_broadcastsi128_si256(_mm_load_si128(reinterpret_cast<const __m128i*>(kSplitMasks.m[k][2])));
        __m256i x[16];
        for (int r = 0; r < 16; ++r) {
          const uint8_t* px = in + static_cast<size_t>(r0 + r) * stride + static_cast<size_t>(c0) * 3;
          const __m256i a = LoadTwoRows(px, px + half);
          const __m256i b = LoadTwoRows(px + 16, px + half + 16);
          const __m256i c = LoadTwoRows(px + 32, px + half + 32);
          x[r] = _mm256_or_si256(_mm256_or_si256(_mm256_shuffle_epi8(a, m0), _mm256_shuffle_epi8(b, m1)),
                                 _mm256_shuffle_epi8(c, m2));
        }
        Transpose32x16(x);
        // After the transpose x[j] holds column c0 + j: rows r0..r0+15 (low lane) and
        // r0+16..r0+31 (high lane).
        for (int j = 0; j < 16; ++j)
          _mm256_storeu_si256(reinterpret_cast<__m256i*>(planes[k] + static_cast<size_t>(c0 + j) * plane_stride + r0), x[j]);
      }
}

__attribute__((target("avx2"))) void TransposeBytesAvx2(const uint8_t* in, size_t in_stride, int rows, int cols,
                                                        uint8_t* out, size_t out_stride) {
  const int rt = rows / 32 * 32, ct = cols / 16 * 16;
  const size_t half = 16 * in_stride;
  for (int r0 = 0; r0 < rt; r0 += 32)
    for (int c0 = 0; c0 < ct; c0 += 16) {
      __m256i x[16];
      for (int r = 0; r < 16; ++r) {
        const uint8_t* p = in + static_cast<size_t>(r0 + r) * in_stride + c0;
        x[r] = LoadTwoRows(p, p + half);
      }
      Transpose32x16(x);
      for (int j = 0; j < 16; ++j)
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + static_cast<size_t>(c0 + j) * out_stride + r0), x[j]);
    }
}

bool HaveSsse3() {
  static const bool yes = __builtin_cpu_supports("ssse3");
  return yes && !g_portable_kernels.load(std::memory_order_relaxed);
}
#else
#define VLORCH_IMAGE_SIMD_CALL(call)  // no SIMD kernels on this architecture
#endif

#ifdef VLORCH_IMAGE_SSE
// Two 16-bit weights in each 32-bit lane, as _mm256_madd_epi16 pairs them with pixels.
__attribute__((target("avx2"))) inline __m256i WeightPair(int32_t a, int32_t b) {
  return _mm256_set1_epi32(
      static_cast<int32_t>(static_cast<uint16_t>(a) | (static_cast<uint32_t>(static_cast<uint16_t>(b)) << 16)));
}

// ResampleRows with AVX2 16-bit multiply-adds, exactly: each 22-bit weight is split as
// k = kh * 2^11 + kl (0 <= kl < 2^11, |kh| < 2^12), pairs of taps go through
// _mm256_madd_epi16 against both halves, and the two partial sums are recombined in 32 bits.
// Every intermediate fits (|sum of p * kh| < 255 * 2^12, since the weights' absolute sum is
// below 2 * 2^22), so each output is the same integer as Pillow's and the same byte; about
// half the instructions of 32-bit multiplies. false (nothing written) for filters longer
// than kMaxPairs pairs of taps, which only extreme shrink factors need.

// 16 outputs x .. x + 15 of one output row from `pairs` pairs of input lines.
template <int kPairs>
__attribute__((target("avx2"), always_inline)) inline void ResampleBlock16(const uint8_t* const* lines, const __m256i* wl,
                                                                           const __m256i* wh, int pairs, int x, uint8_t* o) {
  const int n = kPairs > 0 ? kPairs : pairs;
  // The rounding term rides in the low sum: (lo + half + (hi << 11)) >> 22.
  __m256i lo_l = _mm256_set1_epi32(1 << (kPrecisionBits - 1)), hi_l = lo_l;
  __m256i lo_h = _mm256_setzero_si256(), hi_h = lo_h;
  for (int q = 0; q < n; ++q) {
    const __m256i a = _mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(lines[2 * q] + x)));
    const __m256i b = _mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(lines[2 * q + 1] + x)));
    const __m256i lo = _mm256_unpacklo_epi16(a, b), hi = _mm256_unpackhi_epi16(a, b);
    lo_l = _mm256_add_epi32(lo_l, _mm256_madd_epi16(lo, wl[q]));
    lo_h = _mm256_add_epi32(lo_h, _mm256_madd_epi16(lo, wh[q]));
    hi_l = _mm256_add_epi32(hi_l, _mm256_madd_epi16(hi, wl[q]));
    hi_h = _mm256_add_epi32(hi_h, _mm256_madd_epi16(hi, wh[q]));
  }
  // Per 128-bit lane, lo holds x 0-3 (8-11) and hi x 4-7 (12-15): packing lo with hi
  // restores x order within each lane.
  const __m256i slo = _mm256_srai_epi32(_mm256_add_epi32(lo_l, _mm256_slli_epi32(lo_h, 11)), kPrecisionBits);
  const __m256i shi = _mm256_srai_epi32(_mm256_add_epi32(hi_l, _mm256_slli_epi32(hi_h, 11)), kPrecisionBits);
  const __m256i w16 = _mm256_packs_epi32(slo, shi);  // x 0-7 | x 8-15, saturated to int16
  const __m256i b8 = _mm256_permute4x64_epi64(_mm256_packus_epi16(w16, w16), 0xD8);  // clamped to 0..255
  _mm_storeu_si128(reinterpret_cast<__m128i*>(o + x), _mm256_castsi256_si128(b8));
}

// One output row, row_len >= 16: whole blocks, then one last block ending at row_len that
// overlaps the one before (recomputing those outputs gives the same bytes).
template <int kPairs>
__attribute__((target("avx2"))) void ResampleRowAvx2(const uint8_t* const* lines, const __m256i* wl, const __m256i* wh,
                                                     int pairs, int row_len, uint8_t* o) {
  int x = 0;
  for (; x + 16 <= row_len; x += 16) ResampleBlock16<kPairs>(lines, wl, wh, pairs, x, o);
  if (x < row_len) ResampleBlock16<kPairs>(lines, wl, wh, pairs, row_len - 16, o);
}

__attribute__((target("avx2"))) bool ResampleRowsAvx2(const uint8_t* in, size_t stride, int row_len, int row_offset,
                                                      const Coeffs& c, int out_rows, uint8_t* out) {
  constexpr int kMaxPairs = 48;
  if ((c.ksize + 1) / 2 > kMaxPairs || row_len < 16) return false;
  __m256i wl[kMaxPairs], wh[kMaxPairs];
  const uint8_t* lines[2 * kMaxPairs];
  for (int r = 0; r < out_rows; ++r) {
    const int first = c.bounds[r * 2] - row_offset, taps = c.bounds[r * 2 + 1];
    const int32_t* k = &c.k[static_cast<size_t>(r) * c.ksize];
    const uint8_t* base = in + static_cast<size_t>(first) * stride;
    const int pairs = (taps + 1) / 2;
    for (int q = 0; q < pairs; ++q) {
      const int t0 = 2 * q, t1 = std::min(2 * q + 1, taps - 1);
      const int32_t k0 = k[t0], k1 = 2 * q + 1 < taps ? k[t1] : 0;  // an odd last tap pairs with weight 0
      wl[q] = WeightPair(k0 & 2047, k1 & 2047);
      wh[q] = WeightPair(k0 >> 11, k1 >> 11);
      lines[2 * q] = base + static_cast<size_t>(t0) * stride;
      lines[2 * q + 1] = base + static_cast<size_t>(t1) * stride;
    }
    uint8_t* o = out + static_cast<size_t>(r) * row_len;
    // The common filter lengths with the pair loop unrolled and the weights in registers.
    switch (pairs) {
      case 1: ResampleRowAvx2<1>(lines, wl, wh, pairs, row_len, o); break;
      case 2: ResampleRowAvx2<2>(lines, wl, wh, pairs, row_len, o); break;
      case 3: ResampleRowAvx2<3>(lines, wl, wh, pairs, row_len, o); break;
      case 4: ResampleRowAvx2<4>(lines, wl, wh, pairs, row_len, o); break;
      case 5: ResampleRowAvx2<5>(lines, wl, wh, pairs, row_len, o); break;
      case 6: ResampleRowAvx2<6>(lines, wl, wh, pairs, row_len, o); break;
      default: ResampleRowAvx2<0>(lines, wl, wh, pairs, row_len, o); break;
    }
  }
  return true;
}

bool HaveAvx2() {
  static const bool yes = __builtin_cpu_supports("avx2");
  return yes && !g_portable_kernels.load(std::memory_order_relaxed);
}
#endif

// ResampleRows, by the fastest exact implementation this CPU has.
void Resample(const uint8_t* in, size_t stride, int row_len, int row_offset, const Coeffs& c, int out_rows,
              uint8_t* out, int32_t* acc) {
#ifdef VLORCH_IMAGE_SSE
  if (HaveAvx2() && ResampleRowsAvx2(in, stride, row_len, row_offset, c, out_rows, out)) return;
#endif
  ResampleRows(in, stride, row_len, row_offset, c, out_rows, out, acc);
}

// Runs a transpose by its fastest kernels: AVX2 on 32-row tiles, then SSSE3 on the 16-row
// tiles left, then the scalar loop on the edges (rows past the tiles, and columns past the
// tiles in the tiled rows). avx2(), sse(first row), scalar(r0, r1, c0, c1).
template <typename Avx2, typename Sse, typename Scalar>
void TransposeTiled(int rows, int cols, Avx2 avx2, Sse sse, Scalar scalar) {
  int tiled_rows = 0, tiled_cols = 0;
#ifdef VLORCH_IMAGE_SSE
  if (HaveAvx2()) {
    avx2();
    tiled_rows = rows / 32 * 32;
  }
  if (HaveSsse3()) {
    sse(tiled_rows);
    tiled_rows = rows / 16 * 16;
  }
  if (tiled_rows > 0) tiled_cols = cols / 16 * 16;
#else
  (void)avx2;
  (void)sse;
#endif
  scalar(tiled_rows, rows, 0, cols);
  scalar(0, tiled_rows, tiled_cols, cols);
}

// RGB rows x cols (row i at in + i * stride) -> three planes [cols][rows] (row stride
// plane_stride).
void SplitTranspose(const uint8_t* in, size_t stride, int rows, int cols, uint8_t* const planes[3], size_t plane_stride) {
  TransposeTiled(
      rows, cols,
      [&] { VLORCH_IMAGE_SIMD_CALL(SplitTransposeAvx2(in, stride, rows, cols, planes, plane_stride)); },
      [&](int first) { VLORCH_IMAGE_SIMD_CALL(SplitTransposeSse(in, stride, first, rows, cols, planes, plane_stride)); },
      [&](int r0, int r1, int c0, int c1) { SplitTransposeScalar(in, stride, r0, r1, c0, c1, planes, plane_stride); });
}

// Bytes rows x cols (row i at in + i * in_stride) -> cols x rows (row stride out_stride).
void TransposeBytes(const uint8_t* in, size_t in_stride, int rows, int cols, uint8_t* out, size_t out_stride) {
  TransposeTiled(
      rows, cols,
      [&] { VLORCH_IMAGE_SIMD_CALL(TransposeBytesAvx2(in, in_stride, rows, cols, out, out_stride)); },
      [&](int first) { VLORCH_IMAGE_SIMD_CALL(TransposeBytesSse(in, in_stride, first, rows, cols, out, out_stride)); },
      [&](int r0, int r1, int c0, int c1) { TransposeBytesScalar(in, in_stride, r0, r1, c0, c1, out, out_stride); });
}

// The resize and crop of one image: torchvision's Resize(int) then CenterCrop(size), in the
// coordinates of the decoded w x h image, with the filters for the crop's outputs only.
struct Plan {
  int w = 0, h = 0;        // decoded (after DCT scaling)
  int ow = 0, oh = 0;      // resized
  int left = 0, top = 0;   // crop offset in the resized image
  Coeffs horiz, vert;      // filters for the crop's columns / rows (when that axis is resized)
  int x0 = 0, x1 = 0;      // decoded columns the crop depends on: [x0, x1)
  int y0 = 0, y1 = 0;      // decoded rows the crop depends on: [y0, y1)
};

Plan MakePlan(int w, int h, int size) {
  Plan p;
  p.w = w;
  p.h = h;
  // torchvision Resize(int): the short side becomes `size`, the long one int(size*long/short).
  if (w <= h) {
    p.ow = size;
    p.oh = static_cast<int>(static_cast<int64_t>(size) * h / w);
  } else {
    p.oh = size;
    p.ow = static_cast<int>(static_cast<int64_t>(size) * w / h);
  }
  // torchvision center_crop: int(round((h - size) / 2.0)), Python's round is half-to-even.
  p.top = static_cast<int>(std::nearbyint((p.oh - size) / 2.0));
  p.left = static_cast<int>(std::nearbyint((p.ow - size) / 2.0));
  // One axis: the filter for the crop's outputs and the input span they read. Every output's
  // taps start and end no earlier than the previous output's, so the first and last outputs
  // bound it. An axis that keeps its size is not resampled.
  auto axis = [size](int in, int out, int offset, Coeffs* c, int* lo, int* hi) {
    if (out == in) {
      *lo = offset;
      *hi = offset + size;
      return;
    }
    *c = Precompute(in, out, offset, size);
    *lo = c->bounds[0];
    *hi = c->bounds[size * 2 - 2] + c->bounds[size * 2 - 1];
  };
  axis(w, p.ow, p.left, &p.horiz, &p.x0, &p.x1);
  axis(h, p.oh, p.top, &p.vert, &p.y0, &p.y1);
  return p;
}

// Resizes like Pillow's ImagingResample with BICUBIC (horizontal pass first, rounded to 8
// bits, then vertical) and writes only the size x size crop window, as three planes (CHW).
// Each output pixel depends only on its own filter taps, so the window equals the same window
// of the full resize bit for bit, at a fraction of its cost when the aspect ratio is far from
// 1. The passes run per channel plane (integer sums per channel, so the same values).
//
// In two steps, so that decoded rows are taken while they are still in cache: TakeRows for
// each strip of decoded rows as the decoder produces them (into the thread's scratch planes),
// then Finish for the passes.
class ResizeCrop {
 public:
  ResizeCrop(const Plan& p, int size) : p_(p), size_(size), s_(ThreadScratch()) {
    rows_ = p.y1 - p.y0;  // the input rows the vertical pass reads
    hplane_ = static_cast<size_t>(rows_) * size;
    s_.horiz.resize(3 * hplane_);
    if (p.ow != p.w) {
      cols_ = p.x1 - p.x0;
      tplane_ = static_cast<size_t>(rows_) * cols_;
      s_.transposed.resize(3 * tplane_);
    }
  }

  // Rows [r, r + n) of the crop's input rows [y0, y1) (RGB, row stride `stride`, starting at
  // decoded column in_x <= x0).
  void TakeRows(const uint8_t* in, size_t stride, int in_x, int r, int n) {
    const uint8_t* src = in + static_cast<size_t>(p_.x0 - in_x) * 3;
    if (p_.ow != p_.w) {
      // Channel planes, transposed: [column][row], for the horizontal pass.
      uint8_t* t[3];
      for (int ch = 0; ch < 3; ++ch) t[ch] = s_.transposed.data() + ch * tplane_ + r;
      SplitTranspose(src, stride, n, cols_, t, rows_);
    } else {
      // No horizontal resize: the columns go straight to the vertical pass's planes.
      for (int i = 0; i < n; ++i)
        for (int c = 0; c < size_; ++c)
          for (int ch = 0; ch < 3; ++ch)
            s_.horiz[ch * hplane_ + static_cast<size_t>(r + i) * size_ + c] = src[static_cast<size_t>(i) * stride + c * 3 + ch];
    }
  }

  // After every row was taken: the passes, into `out` (3 * size * size bytes).
  void Finish(uint8_t* out) {
    const size_t plane = static_cast<size_t>(size_) * size_;
    s_.acc.resize(std::max<size_t>(s_.acc.size(), std::max(rows_, size_)));
    uint8_t* horiz[3] = {s_.horiz.data(), s_.horiz.data() + hplane_, s_.horiz.data() + 2 * hplane_};
    if (p_.ow != p_.w) {
      s_.resampled.resize(hplane_);
      for (int ch = 0; ch < 3; ++ch) {
        Resample(s_.transposed.data() + ch * tplane_, rows_, rows_, p_.x0, p_.horiz, size_, s_.resampled.data(), s_.acc.data());
        TransposeBytes(s_.resampled.data(), rows_, size_, rows_, horiz[ch], size_);
      }
    }
    for (int ch = 0; ch < 3; ++ch) {
      if (p_.oh == p_.h) std::copy_n(horiz[ch], plane, out + ch * plane);  // rows == size
      else Resample(horiz[ch], size_, size_, p_.y0, p_.vert, size_, out + ch * plane, s_.acc.data());
    }
  }

 private:
  const Plan& p_;
  const int size_;
  Scratch& s_;
  int rows_ = 0, cols_ = 0;
  size_t hplane_ = 0, tplane_ = 0;
};

// ---- libjpeg decompression of a region ------------------------------------------------------

// Sets the output of a decompressor whose header was read: RGB, islow DCT, fancy upsampling
// (TurboJPEG's and Pillow's defaults), and with dct_scaling the smallest power-of-two
// reduction (1/2, 1/4, 1/8) that still leaves at least twice `target` on the shortest side, so
// the final bicubic resize keeps antialiasing at least a 2x reduction. Measured against
// torchvision (tests/dataflow/image_test.cc): leaving less (640x481 halved to 241 px before
// 224) moved values by 0.20 on average, leaving 2x by about 0.04; libjpeg-turbo's 1/8-step
// factors (7/8, 13/16, ...) are not used at all. false on failure (TakeError). Only libjpeg
// calls and arithmetic between setjmp and the return (a longjmp skips no destructor).
bool SetOutput(sharding::LibjpegDecompressor& d, int target, bool dct_scaling) {
  jpeg_decompress_struct* c = d.get();
  if (setjmp(d.err().jump)) return false;
  c->out_color_space = JCS_RGB;
  c->dct_method = JDCT_ISLOW;
  c->do_fancy_upsampling = TRUE;
  c->scale_num = 1;
  c->scale_denom = 1;
  if (dct_scaling) {
    const long w = c->image_width, h = c->image_height;
    for (long f = 2; f <= 8; f *= 2) {
      if (std::min((w + f - 1) / f, (h + f - 1) / f) < 2L * target) break;
      c->scale_denom = static_cast<unsigned int>(f);
    }
  }
  jpeg_calc_output_dimensions(c);
  return true;
}

// Decodes output rows [y_begin, y_end) and at least columns [x_begin, x_end), kStripRows
// rows at a time into `buf` (capacity for kStripRows full-width rows), and hands the rows in
// [y_take, y_end) to take(rows, stride, x_out, first row - y_take, count) strip by strip;
// rows before y_take are decoded and dropped. Columns are widened to the decoder's iMCU
// boundaries by jpeg_crop_scanline (x_out: the first decoded column). Rows above y_begin are
// skipped (entropy-decoded only), rows from y_end on are not decoded at all. Only libjpeg
// calls, arithmetic and `take` (which must not throw or own anything) between setjmp and the
// return: a longjmp skips no destructor.
constexpr int kStripRows = 32;
template <typename Take>
bool ReadRegion(sharding::LibjpegDecompressor& d, int x_begin, int x_end, int y_begin, int y_take, int y_end, uint8_t* buf,
                JSAMPROW* rows, Take&& take) {
  jpeg_decompress_struct* c = d.get();
  if (setjmp(d.err().jump)) return false;
  jpeg_start_decompress(c);
  JDIMENSION xoff = static_cast<JDIMENSION>(x_begin), width = static_cast<JDIMENSION>(x_end - x_begin);
  if (width < c->output_width) jpeg_crop_scanline(c, &xoff, &width);
  const size_t stride = static_cast<size_t>(width) * 3;
  for (int r = 0; r < kStripRows; ++r) rows[r] = buf + r * stride;
  if (y_begin > 0) jpeg_skip_scanlines(c, static_cast<JDIMENSION>(y_begin));
  while (c->output_scanline < static_cast<JDIMENSION>(y_end)) {
    // The next strip: up to kStripRows rows, ending where the taken rows start if they
    // have not started yet.
    const int y = static_cast<int>(c->output_scanline);
    const int stop = y < y_take ? std::min(y_take, y + kStripRows) : std::min(y_end, y + kStripRows);
    while (c->output_scanline < static_cast<JDIMENSION>(stop))
      jpeg_read_scanlines(c, rows + (c->output_scanline - y), static_cast<JDIMENSION>(stop) - c->output_scanline);
    if (y >= y_take) take(buf, stride, static_cast<int>(xoff), y - y_take, stop - y);
  }
  if (c->output_scanline == c->output_height) jpeg_finish_decompress(c);
  else jpeg_abort_decompress(c);
  return true;
}

// Decodes and resizes+crops to size x size RGB as three planes (CHW), in ThreadScratch().crop.
StatusOr<DecodedImage> DecodeCrop(std::string_view jpeg, const ImageOptions& o) {
  if (o.size < 1) return InvalidArgumentError("image size must be >= 1");
  sharding::LibjpegDecompressor& d = sharding::LibjpegDecompressor::ForThisThread();
  if (jpeg.empty()) return InvalidArgumentError("not a decodable JPEG: empty image");
  if (!d.ReadHeader(jpeg.data(), jpeg.size()) || !SetOutput(d, o.size, o.dct_scaling))
    return InvalidArgumentError("not a decodable JPEG: " + d.TakeError());
  if (d.get()->image_width < 1 || d.get()->image_height < 1) {
    d.Reset();
    return InvalidArgumentError("not a decodable JPEG: zero width or height in the header");
  }
  DecodedImage info;
  info.width = static_cast<int>(d.get()->image_width);
  info.height = static_cast<int>(d.get()->image_height);
  const int dw = static_cast<int>(d.get()->output_width), dh = static_cast<int>(d.get()->output_height);
  info.decoded_width = dw;
  info.decoded_height = dh;
  const Plan plan = MakePlan(dw, dh, o.size);
  // The rows and columns the crop needs, with a margin of 16 decoded pixels (an iMCU at most)
  // above and beside them where that is not an image edge: the decoder's chroma upsampling
  // near the edges of a cropped or skipped region then cannot reach a pixel that is used.
  // Below them no margin: a row, once returned, does not depend on whether later rows are
  // read. (ClipImageTest.DecodingOnlyTheCropChangesNoPixel checks the result against a full
  // decode.)
  constexpr int kMargin = 16;
  int x_begin = 0, x_end = dw, y_begin = 0, y_end = dh;
  if (o.decode_only_crop) {
    x_begin = std::max(0, plan.x0 - kMargin);
    x_end = std::min(dw, plan.x1 + kMargin);
    y_begin = std::max(0, plan.y0 - kMargin);
    y_end = plan.y1;
  }
  Scratch& s = ThreadScratch();
  s.rgb.resize(static_cast<size_t>(dw) * kStripRows * 3);
  s.rows.resize(kStripRows);
  ResizeCrop resize(plan, o.size);
  const int crop_rows = plan.y1 - plan.y0;  // rows after them are decoded (decode_only_crop off) and dropped
  auto take = [&resize, crop_rows](const uint8_t* rows, size_t stride, int x_out, int r, int n) {
    if (r < crop_rows) resize.TakeRows(rows, stride, x_out, r, std::min(n, crop_rows - r));
  };
  if (!ReadRegion(d, x_begin, x_end, y_begin, plan.y0, y_end, s.rgb.data(), s.rows.data(), take))
    return InvalidArgumentError("JPEG data is damaged or truncated: " + d.TakeError());
  s.crop.resize(static_cast<size_t>(o.size) * o.size * 3);
  resize.Finish(s.crop.data());
  return info;
}

// torchvision's ToTensor then Normalize: (v / 255 - mean) / std in float32, the same two
// correctly rounded divisions per value (no contraction is possible: no multiply), so any
// vector width gives the same bits. Built for AVX2 as well as baseline x86-64.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
__attribute__((target_clones("avx2", "default")))
#endif
void NormalisePlaneDivide(const uint8_t* __restrict p, size_t n, float mean, float std, float* __restrict q) {
  for (size_t i = 0; i < n; ++i) q[i] = (static_cast<float>(p[i]) / 255.0f - mean) / std;
}

#ifdef VLORCH_IMAGE_SSE
// a / b without a division (which bounds the loop above: two per value), by Markstein's
// correction: with y = 1/b rounded, q = a * y is within an ulp of a / b, the residual
// a - q * b is exact in one FMA, and q + residual * y rounds to the correctly rounded
// quotient. NormalisePlane uses it only for constants it has checked on all 256 inputs.
__attribute__((target("avx2,fma"))) inline __m256 DivideByMarkstein(__m256 a, __m256 b, __m256 y) {
  const __m256 q = _mm256_mul_ps(a, y);
  return _mm256_fmadd_ps(_mm256_fnmadd_ps(q, b, a), y, q);
}
inline float DivideByMarkstein(float a, float b, float y) {
  const float q = a * y;
  return std::fma(std::fma(-q, b, a), y, q);
}

__attribute__((target("avx2,fma"))) void NormalisePlaneMarkstein(const uint8_t* __restrict p, size_t n, float mean,
                                                                   float std, float* __restrict q) {
  const __m256 k255 = _mm256_set1_ps(255.0f), y255 = _mm256_set1_ps(1.0f / 255.0f);
  const __m256 m = _mm256_set1_ps(mean), s = _mm256_set1_ps(std), ys = _mm256_set1_ps(1.0f / std);
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 v = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p + i))));
    const __m256 x = _mm256_sub_ps(DivideByMarkstein(v, k255, y255), m);
    _mm256_storeu_ps(q + i, DivideByMarkstein(x, s, ys));
  }
  for (; i < n; ++i) q[i] = (static_cast<float>(p[i]) / 255.0f - mean) / std;
}

// Whether the FMA path gives the division's bits for every byte value with these constants
// (it does for CLIP's; checked once per thread and pair of constants, since a user's own
// constants might land on a case the correction does not cover).
bool MarksteinIsExact(float mean, float std) {
  thread_local float last_mean = 0, last_std = 0;
  thread_local bool last_exact = false, checked = false;
  if (checked && last_mean == mean && last_std == std) return last_exact;
  bool exact = true;
  for (int v = 0; v < 256 && exact; ++v) {
    const float want = (static_cast<float>(v) / 255.0f - mean) / std;
    const float got = DivideByMarkstein(DivideByMarkstein(static_cast<float>(v), 255.0f, 1.0f / 255.0f) - mean, std, 1.0f / std);
    exact = std::memcmp(&want, &got, sizeof want) == 0;
  }
  last_mean = mean;
  last_std = std;
  last_exact = exact;
  checked = true;
  return exact;
}

bool HaveFma() {
  static const bool yes = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return yes && !g_portable_kernels.load(std::memory_order_relaxed);
}
#endif

void NormalisePlane(const uint8_t* p, size_t n, float mean, float std, float* q) {
#ifdef VLORCH_IMAGE_SSE
  if (HaveFma() && MarksteinIsExact(mean, std)) return NormalisePlaneMarkstein(p, n, mean, std, q);
#endif
  NormalisePlaneDivide(p, n, mean, std, q);
}

}  // namespace

void SetImageKernels(ImageKernels kernels) {
  g_portable_kernels.store(kernels == ImageKernels::kPortable, std::memory_order_relaxed);
}

StatusOr<DecodedImage> DecodeClipFloat(std::string_view jpeg, const ImageOptions& o, float* out) {
  ASSIGN_OR_RETURN(DecodedImage info, DecodeCrop(jpeg, o));
  const size_t plane = static_cast<size_t>(o.size) * o.size;
  const uint8_t* crop = ThreadScratch().crop.data();
  for (int c = 0; c < 3; ++c) NormalisePlane(crop + c * plane, plane, o.mean[c], o.std[c], out + c * plane);
  return info;
}

StatusOr<DecodedImage> DecodeClipUint8(std::string_view jpeg, const ImageOptions& o, uint8_t* out) {
  ASSIGN_OR_RETURN(DecodedImage info, DecodeCrop(jpeg, o));
  std::copy_n(ThreadScratch().crop.data(), 3 * static_cast<size_t>(o.size) * o.size, out);
  return info;
}

}  // namespace vlorch::dataflow
