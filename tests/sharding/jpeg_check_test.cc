// Ingest's JPEG validation (skipping rows instead of decoding them) must reach the same
// verdict as a full TurboJPEG decode with warnings as errors, on good files and on every kind
// of damage: truncation anywhere, bytes overwritten inside the entropy-coded data, a bad
// header, a marker cut short.
#include "sharding/jpeg_check.h"

#include <turbojpeg.h>

#include <random>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "sharding/dataset_gen.h"
#include "tests/sharding/hostile_inputs.h"

namespace vlorch::sharding {
namespace {

// The reference: the whole image decoded at full size, warnings fatal.
bool FullDecodeSucceeds(const std::string& jpeg) {
  tjhandle h = tjInitDecompress();
  int w = 0, ht = 0, ss = 0, cs = 0;
  auto* p = reinterpret_cast<const unsigned char*>(jpeg.data());
  bool ok = tjDecompressHeader3(h, p, jpeg.size(), &w, &ht, &ss, &cs) == 0 && w > 0 && ht > 0;
  if (ok) {
    std::vector<unsigned char> buf(static_cast<size_t>(w) * ht * 3);
    ok = tjDecompress2(h, p, jpeg.size(), buf.data(), w, 0, ht, TJPF_RGB, TJFLAG_STOPONWARNING) == 0;
  }
  tjDestroy(h);
  return ok;
}

TEST(JpegCheckTest, SameVerdictAsAFullDecodeOnGoodAndDamagedFiles) {
  std::mt19937_64 rng(3);
  const TestJpegFormat formats[] = {{JpegSampling::k420, false}, {JpegSampling::k444, false},
                                    {JpegSampling::kGray, false}, {JpegSampling::k420, true}};
  int good = 0, bad = 0;
  for (const auto& f : formats) {
    for (int img = 0; img < 6; ++img) {
      const int w = 30 + static_cast<int>(rng() % 500), h = 30 + static_cast<int>(rng() % 500);
      const std::string jpeg = EncodeTestJpeg(w, h, rng(), f);
      std::vector<std::string> cases = {jpeg};
      for (double cut : {0.02, 0.3, 0.6, 0.9, 0.995}) cases.push_back(jpeg.substr(0, static_cast<size_t>(jpeg.size() * cut)));
      cases.push_back(jpeg.substr(0, jpeg.size() - 2));  // no end-of-image marker
      for (int k = 0; k < 4; ++k) {  // a run of bytes overwritten somewhere after the header
        std::string d = jpeg;
        const size_t at = d.size() / 4 + rng() % (d.size() / 2);
        for (size_t i = at; i < std::min(d.size() - 2, at + 1 + rng() % 24); ++i) d[i] = static_cast<char>(k % 2 ? 0xff : rng());
        cases.push_back(d);
      }
      for (const std::string& c : cases) {
        const JpegCheck got = CheckJpeg(c);
        const bool want = FullDecodeSucceeds(c);
        EXPECT_EQ(got.ok, want) << w << "x" << h << " sampling " << static_cast<int>(f.sampling) << ", " << c.size()
                                << " of " << jpeg.size() << " bytes: " << got.detail;
        if (got.ok) {
          EXPECT_EQ(got.width, static_cast<uint32_t>(w));
          EXPECT_EQ(got.height, static_cast<uint32_t>(h));
          ++good;
        } else {
          EXPECT_EQ(got.reason, "undecodable_image");
          EXPECT_FALSE(got.detail.empty());
          ++bad;
        }
      }
    }
  }
  EXPECT_GT(bad, 24 * 5) << "the damaged cases must mostly be caught";
  EXPECT_GE(good, 24) << "every undamaged file passes";
  EXPECT_EQ(CheckJpeg("").reason, "zero_byte_image");
  EXPECT_EQ(CheckJpeg("GIF89a not a jpeg").reason, "undecodable_image");
  EXPECT_TRUE(CheckJpeg(EncodeTestJpeg(64, 48, 1)).ok) << "a good file after failures still passes";
}

// A few hundred bytes whose frame header declares 60000 x 60000: rejected from the header,
// naming the size and the limit, before the decoder allocates for it (a progressive one
// would need ~10 GiB of coefficients).
TEST(JpegCheckTest, HeaderDeclaringHugeDimensionsIsRejectedBeforeDecoding) {
  for (bool progressive : {false, true}) {
    const std::string jpeg = EncodeTestJpeg(64, 48, 5, {JpegSampling::k420, progressive});
    const std::string huge = testing::WithDeclaredSize(jpeg, 60000, 60000);
    ASSERT_EQ(huge.size(), jpeg.size());
    testing::ResetPeakMemory();
    const uint64_t before = testing::CurrentMemory();
    const JpegCheck got = CheckJpeg(huge);
    EXPECT_LT(testing::PeakMemory(), before + (uint64_t{64} << 20)) << "nothing allocated for the declared size";
    EXPECT_FALSE(got.ok);
    EXPECT_EQ(got.reason, "image_too_large") << got.detail;
    EXPECT_NE(got.detail.find("60000x60000"), std::string::npos) << got.detail;
    EXPECT_NE(got.detail.find("16384 pixels per side"), std::string::npos) << got.detail;
    EXPECT_NE(got.detail.find("67108864 pixels"), std::string::npos) << got.detail;
  }
  const std::string jpeg = EncodeTestJpeg(64, 48, 6);
  // One side over 16384 with few pixels, and sides under 16384 with too many pixels.
  EXPECT_EQ(CheckJpeg(testing::WithDeclaredSize(jpeg, 20000, 16)).reason, "image_too_large");
  EXPECT_EQ(CheckJpeg(testing::WithDeclaredSize(jpeg, 9000, 9000)).reason, "image_too_large");
  // The limits are inclusive and come from the options.
  JpegLimits exact;
  exact.max_side = 64;
  exact.max_pixels = 64 * 48;
  EXPECT_TRUE(CheckJpeg(jpeg, exact).ok);
  exact.max_pixels = 64 * 48 - 1;
  EXPECT_EQ(CheckJpeg(jpeg, exact).reason, "image_too_large");
  exact.max_pixels = 64 * 48;
  exact.max_side = 63;
  EXPECT_EQ(CheckJpeg(jpeg, exact).reason, "image_too_large");
  EXPECT_TRUE(CheckJpeg(jpeg).ok) << "a good file after rejections still passes";
}

// A valid progressive JPEG with 190 scans: every scan is another pass over the coefficients,
// so the check stops at the 101st instead of decoding them all; with the limit raised the
// same file passes (it is not damaged). Ordinary progressive files pass the default.
TEST(JpegCheckTest, MoreScansThanTheLimitAreRejected) {
  int scans = 0;
  const std::string flood = testing::ProgressiveJpegWithManyScans(96, 80, &scans);
  ASSERT_EQ(scans, 190);
  const JpegCheck got = CheckJpeg(flood);
  EXPECT_FALSE(got.ok);
  EXPECT_EQ(got.reason, "too_many_scans") << got.detail;
  EXPECT_NE(got.detail.find("more than 100 scans"), std::string::npos) << got.detail;
  EXPECT_NE(got.detail.find("96x80"), std::string::npos) << got.detail;
  JpegLimits raised;
  raised.max_scans = 190;
  const JpegCheck passes = CheckJpeg(flood, raised);
  EXPECT_TRUE(passes.ok) << passes.detail;
  EXPECT_EQ(passes.width, 96u);
  raised.max_scans = 189;
  EXPECT_EQ(CheckJpeg(flood, raised).reason, "too_many_scans");
  EXPECT_TRUE(FullDecodeSucceeds(flood)) << "the flood is a valid JPEG";
  for (JpegSampling s : {JpegSampling::k420, JpegSampling::k444, JpegSampling::kGray})
    EXPECT_TRUE(CheckJpeg(EncodeTestJpeg(200, 120, 9, {s, true})).ok) << "standard progressive script";
  EXPECT_TRUE(CheckJpeg(EncodeTestJpeg(64, 48, 1)).ok) << "a good file after a rejection still passes";
}

TEST(JpegCheckTest, LimitsAreValidated) {
  EXPECT_TRUE(JpegLimits().Validate().ok());
  JpegLimits bad;
  bad.max_scans = 0;
  EXPECT_EQ(bad.Validate().code(), StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace vlorch::sharding
