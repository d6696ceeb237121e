#include "common/hash.h"

#include <string>

#include <gtest/gtest.h>

namespace vlorch {
namespace {

// Check values from RFC 3720 (iSCSI), appendix B.4.
TEST(Crc32cTest, StandardVectors) {
  EXPECT_EQ(Crc32c("123456789"), 0xE3069283u);
  EXPECT_EQ(Crc32c(std::string(32, '\0')), 0x8A9136AAu);
  EXPECT_EQ(Crc32c(std::string(32, '\xff')), 0x62A8AB43u);
  std::string inc(32, '\0');
  for (int i = 0; i < 32; ++i) inc[i] = static_cast<char>(i);
  EXPECT_EQ(Crc32c(inc), 0x46DD794Eu);
  EXPECT_EQ(Crc32c(""), 0u);
}

TEST(Crc32cTest, ContinuesAcrossPieces) {
  std::string s = "the quick brown fox jumps over the lazy dog, twice over";
  for (size_t cut = 0; cut <= s.size(); ++cut) {
    EXPECT_EQ(Crc32c(s.substr(cut), Crc32c(s.substr(0, cut))), Crc32c(s)) << cut;
  }
}

TEST(Crc32cTest, HardwareAndTablePathsAgree) {
  std::string s;
  for (int i = 0; i < 4099; ++i) s.push_back(static_cast<char>((i * 131) ^ (i >> 3)));
  for (size_t len : {0u, 1u, 7u, 8u, 9u, 63u, 4099u}) {
    EXPECT_EQ(internal::Crc32cPortable(s.data(), len), Crc32c(s.data(), len)) << len;
    EXPECT_EQ(internal::Crc32cPortable(s.data(), len, 0x1234u), Crc32c(s.data(), len, 0x1234u)) << len;
  }
  EXPECT_EQ(internal::Crc32cPortable("123456789", 9), 0xE3069283u);
}

// Long inputs take the three-stream path (runs of 3 x 4096 bytes joined by a shift); every
// length around the run boundaries, every start alignment and a running CRC must give the
// table implementation's value.
TEST(Crc32cTest, ThreeStreamPathAgreesAtEveryBoundary) {
  std::string s(5 * 12288 + 64, '\0');
  uint64_t x = 88172645463325252ull;
  for (char& c : s) {
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    c = static_cast<char>(x);
  }
  for (size_t base : {size_t{12288}, size_t{24576}, size_t{49152}})
    for (size_t len = base - 9; len <= base + 9; ++len)
      for (size_t off : {0u, 1u, 5u}) {
        ASSERT_EQ(Crc32c(s.data() + off, len), internal::Crc32cPortable(s.data() + off, len)) << len << " @" << off;
        ASSERT_EQ(Crc32c(s.data() + off, len, 0xdeadbeefu), internal::Crc32cPortable(s.data() + off, len, 0xdeadbeefu));
      }
  // Piecewise over the long path equals one call.
  EXPECT_EQ(Crc32c(s.data() + 40000, s.size() - 40000, Crc32c(s.data(), 40000)), Crc32c(s));
  EXPECT_EQ(Crc32c(std::string(1 << 20, 'z')), internal::Crc32cPortable(std::string(1 << 20, 'z').data(), 1 << 20));
}

}  // namespace
}  // namespace vlorch
