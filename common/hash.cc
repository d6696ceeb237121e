#include "common/hash.h"

#include <array>
#include <cstring>

namespace vlorch {
namespace {

constexpr uint32_t kPoly = 0x82F63B78;  // CRC32C, reflected

std::array<uint32_t, 256> MakeTable() {
  std::array<uint32_t, 256> t{};
  for (uint32_t i = 0; i < 256; ++i) {
    uint32_t c = i;
    for (int k = 0; k < 8; ++k) c = (c & 1) ? (c >> 1) ^ kPoly : c >> 1;
    t[i] = c;
  }
  return t;
}

uint32_t Software(const uint8_t* p, size_t n, uint32_t crc) {
  static const std::array<uint32_t, 256> table = MakeTable();
  for (size_t i = 0; i < n; ++i) crc = table[(crc ^ p[i]) & 0xff] ^ (crc >> 8);
  return crc;
}

#if defined(__x86_64__)
// One crc32 instruction per 8 bytes, one chain: bound by the instruction's 3-cycle latency.
__attribute__((target("sse4.2"))) uint64_t Chain(const uint8_t* p, size_t n, uint64_t c) {
  for (; n >= 8; p += 8, n -= 8) {
    uint64_t v;
    std::memcpy(&v, p, 8);
    c = __builtin_ia32_crc32di(c, v);
  }
  uint32_t c32 = static_cast<uint32_t>(c);
  while (n-- > 0) c32 = __builtin_ia32_crc32qi(c32, *p++);
  return c32;
}

// Three streams: long inputs are cut into runs of 3 x kStride bytes whose thirds go through
// three independent crc32 chains in one loop (the instruction issues every cycle, so three
// chains run at three times the speed of one), and the three registers are then joined with
// the linear map "append kStride zero bytes" (Shift). The register update is linear over
// GF(2) (no pre/post inversion at this level): reg(A|B) = Shift_|B|(reg(A)) ^ reg_from_0(B).
constexpr size_t kStride = 4096;

// Shift_kStride as four byte tables (the map's columns for each byte of the register),
// computed once from the 32 basis registers by the single-chain code itself.
struct ShiftTables {
  uint32_t t[4][256];
};
__attribute__((target("sse4.2"))) ShiftTables MakeShiftTables() {
  static const uint8_t zeros[kStride] = {};
  uint32_t basis[32];
  for (int b = 0; b < 32; ++b) basis[b] = static_cast<uint32_t>(Chain(zeros, kStride, uint64_t{1} << b));
  ShiftTables s{};
  for (int k = 0; k < 4; ++k)
    for (uint32_t v = 0; v < 256; ++v) {
      uint32_t r = 0;
      for (int bit = 0; bit < 8; ++bit)
        if (v & (1u << bit)) r ^= basis[8 * k + bit];
      s.t[k][v] = r;
    }
  return s;
}

inline uint32_t Shift(const ShiftTables& s, uint32_t c) {
  return s.t[0][c & 0xff] ^ s.t[1][(c >> 8) & 0xff] ^ s.t[2][(c >> 16) & 0xff] ^ s.t[3][c >> 24];
}

__attribute__((target("sse4.2"))) uint32_t Hardware(const uint8_t* p, size_t n, uint32_t crc) {
  static const ShiftTables tables = MakeShiftTables();
  uint64_t c0 = crc;
  while (n >= 3 * kStride) {
    uint64_t c1 = 0, c2 = 0;
    const uint8_t* q = p;
    for (size_t i = 0; i < kStride; i += 8, q += 8) {
      uint64_t a, b, d;
      std::memcpy(&a, q, 8);
      std::memcpy(&b, q + kStride, 8);
      std::memcpy(&d, q + 2 * kStride, 8);
      c0 = __builtin_ia32_crc32di(c0, a);
      c1 = __builtin_ia32_crc32di(c1, b);
      c2 = __builtin_ia32_crc32di(c2, d);
    }
    c0 = Shift(tables, Shift(tables, static_cast<uint32_t>(c0)) ^ static_cast<uint32_t>(c1)) ^ static_cast<uint32_t>(c2);
    p += 3 * kStride;
    n -= 3 * kStride;
  }
  return static_cast<uint32_t>(Chain(p, n, c0));
}

bool HasSse42() {
  static const bool has = __builtin_cpu_supports("sse4.2");
  return has;
}
#endif

}  // namespace

uint32_t Crc32c(const void* data, size_t n, uint32_t crc) {
  const uint8_t* p = static_cast<const uint8_t*>(data);
  crc = ~crc;
#if defined(__x86_64__)
  if (HasSse42()) return ~Hardware(p, n, crc);
#endif
  return ~Software(p, n, crc);
}

namespace internal {
uint32_t Crc32cPortable(const void* data, size_t n, uint32_t crc) {
  return ~Software(static_cast<const uint8_t*>(data), n, ~crc);
}
}  // namespace internal

}  // namespace vlorch
