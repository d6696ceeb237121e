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

}  // namespace
}  // namespace vlorch
