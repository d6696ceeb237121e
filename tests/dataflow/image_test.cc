// JPEG decode + CLIP preprocessing against torchvision's transform (run through Debian's
// Python), bit for bit without DCT scaling, and close with it.
#include "dataflow/image.h"

#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <random>

#include <gtest/gtest.h>

#include "sharding/dataset_gen.h"

namespace vlorch::dataflow {
namespace {

constexpr const char* kPython = "/usr/bin/python3";

struct Shape { int w, h; };
const Shape kShapes[] = {{224, 224}, {300, 200}, {200, 300}, {257, 513}, {640, 481},
                         {97, 150},  {1024, 768}, {225, 224}, {2000, 1800}, {3000, 240}, {61, 1900}, {800, 599}};

// Writes the images, runs the reference, returns its floats ([n, 3, size, size]). Cached:
// starting Python with torch costs ~4 s, and every test here uses the same images.
std::vector<float> Reference(const std::vector<std::string>& jpegs, int size, bool* skipped) {
  static std::vector<float> cached;
  static bool cached_skip = false;
  if (!cached.empty() || cached_skip) {
    *skipped = cached_skip;
    return cached;
  }
  *skipped = false;
  if (std::system((std::string(kPython) + " -c 'import torchvision' 2>/dev/null").c_str()) != 0) {
    *skipped = cached_skip = true;
    return {};
  }
  std::string dir = ::testing::TempDir() + "/clipref_" + std::to_string(getpid());
  EXPECT_EQ(std::system(("mkdir -p " + dir).c_str()), 0);
  std::string cmd = std::string(kPython) + " " + VLORCH_TEST_SRC "/clip_reference.py " + std::to_string(size) + " " +
                    dir + "/out.f32";
  for (size_t i = 0; i < jpegs.size(); ++i) {
    std::string p = dir + "/" + std::to_string(i) + ".jpg";
    std::ofstream(p, std::ios::binary) << jpegs[i];
    cmd += " " + p;
  }
  EXPECT_EQ(std::system(cmd.c_str()), 0) << cmd;
  std::ifstream in(dir + "/out.f32", std::ios::binary);
  std::vector<float> out(jpegs.size() * 3 * size * size);
  in.read(reinterpret_cast<char*>(out.data()), static_cast<std::streamsize>(out.size() * 4));
  EXPECT_EQ(in.gcount(), static_cast<std::streamsize>(out.size() * 4));
  cached = out;
  return out;
}

std::vector<std::string> Jpegs() {
  std::vector<std::string> out;
  uint64_t seed = 1;
  for (Shape s : kShapes) out.push_back(sharding::EncodeTestJpeg(s.w, s.h, seed++));
  return out;
}

TEST(ClipImageTest, BitExactWithTorchvisionWithoutDctScaling) {
  const int size = 224;
  auto jpegs = Jpegs();
  bool skipped;
  std::vector<float> ref = Reference(jpegs, size, &skipped);
  if (skipped) GTEST_SKIP() << kPython << " has no torchvision (install python3-torchvision)";
  ImageOptions o;
  o.size = size;
  o.dct_scaling = false;
  const size_t per = 3 * size * size;
  for (size_t i = 0; i < jpegs.size(); ++i) {
    std::vector<float> mine(per);
    auto info = DecodeClipFloat(jpegs[i], o, mine.data());
    ASSERT_TRUE(info.ok()) << info.status().ToString();
    EXPECT_EQ(info->width, kShapes[i].w);
    size_t differ = 0;
    float worst = 0;
    for (size_t k = 0; k < per; ++k) {
      float d = std::fabs(mine[k] - ref[i * per + k]);
      differ += d != 0;
      worst = std::max(worst, d);
    }
    EXPECT_EQ(differ, 0u) << kShapes[i].w << "x" << kShapes[i].h << ": worst difference " << worst;
  }
}

// With the decoder's DCT scaling, images at least 4x the target are decoded at 1/2, 1/4 or
// 1/8 first (keeping >= 2x the target): not bit-exact, but close (mean absolute difference of
// normalised values; one uint8 step is ~0.015; these synthetic images are mostly high
// frequency, the worst case). Smaller images are untouched and stay bit-exact.
TEST(ClipImageTest, DctScalingStaysCloseToTheReference) {
  const int size = 224;
  auto jpegs = Jpegs();
  bool skipped;
  std::vector<float> ref = Reference(jpegs, size, &skipped);
  if (skipped) GTEST_SKIP() << kPython << " has no torchvision";
  ImageOptions o;
  o.size = size;
  const size_t per = 3 * size * size;
  for (size_t i = 0; i < jpegs.size(); ++i) {
    std::vector<float> mine(per);
    auto info = DecodeClipFloat(jpegs[i], o, mine.data());
    ASSERT_TRUE(info.ok());
    const bool shrink = std::min(kShapes[i].w, kShapes[i].h) >= 4 * size;
    double sum = 0;
    for (size_t k = 0; k < per; ++k) sum += std::fabs(mine[k] - ref[i * per + k]);
    if (shrink) {
      EXPECT_EQ(info->decoded_width, (kShapes[i].w + 3) / 4) << "2000x1800 is decoded at 1/4 (450 px >= 2 x 224)";
      EXPECT_LT(sum / per, 0.05) << kShapes[i].w << "x" << kShapes[i].h;
      std::printf("  %dx%d decoded at %dx%d: mean |difference| %.4f\n", kShapes[i].w, kShapes[i].h,
                  info->decoded_width, info->decoded_height, sum / per);
    } else {
      EXPECT_EQ(info->decoded_width, kShapes[i].w);
      EXPECT_EQ(sum, 0.0) << kShapes[i].w << "x" << kShapes[i].h << " is not shrunk and stays exact";
    }
  }
}

// Decoding only the rows and columns the crop reads (skipped rows above, no decoding below,
// jpeg_crop_scanline for the columns) must not change a single output byte: every chroma
// subsampling, progressive coding, sizes around the iMCU boundaries and aspect ratios up to
// 4:1, with and without DCT scaling, and a small target that crops most of the image away.
TEST(ClipImageTest, DecodingOnlyTheCropChangesNoPixel) {
  using sharding::JpegSampling;
  const sharding::TestJpegFormat formats[] = {
      {JpegSampling::k420, false}, {JpegSampling::k422, false}, {JpegSampling::k444, false},
      {JpegSampling::k440, false}, {JpegSampling::kGray, false}, {JpegSampling::k420, true}};
  std::mt19937_64 rng(7);
  int checked = 0, cropped = 0;
  for (const auto& f : formats) {
    for (int i = 0; i < 14; ++i) {
      // Half the shapes near multiples of 16 (iMCU edges), the rest anywhere; aspect <= 4.
      int w = 40 + static_cast<int>(rng() % 900), h = 40 + static_cast<int>(rng() % 900);
      if (i % 2 == 0) {
        w = std::max(17, w / 16 * 16 + static_cast<int>(rng() % 3) - 1);
        h = std::max(17, h / 16 * 16 + static_cast<int>(rng() % 3) - 1);
      }
      if (i == 12) w = 4 * h / 3 + 900;  // big and wide: DCT-scaled, then cropped
      if (i == 13) h = std::min(4 * w, 1700);
      const std::string jpeg = sharding::EncodeTestJpeg(w, h, rng(), f);
      for (int size : {224, 32}) {
        for (bool dct : {false, true}) {
          ImageOptions full, part;
          full.size = part.size = size;
          full.dct_scaling = part.dct_scaling = dct;
          full.decode_only_crop = false;
          std::vector<uint8_t> a(3 * size * size), b(3 * size * size);
          auto ra = DecodeClipUint8(jpeg, full, a.data());
          auto rb = DecodeClipUint8(jpeg, part, b.data());
          ASSERT_TRUE(ra.ok()) << ra.status().ToString();
          ASSERT_TRUE(rb.ok()) << rb.status().ToString();
          size_t differ = 0;
          for (size_t k = 0; k < a.size(); ++k) differ += a[k] != b[k];
          EXPECT_EQ(differ, 0u) << w << "x" << h << " sampling " << static_cast<int>(f.sampling)
                                << (f.progressive ? " progressive" : "") << " size " << size << " dct " << dct;
          ++checked;
          cropped += std::max(w, h) > std::min(w, h) + 40;
        }
      }
    }
  }
  EXPECT_EQ(checked, 6 * 14 * 4);
  EXPECT_GT(cropped, checked / 2) << "most cases must crop something away";
}

// The SIMD kernels (SSSE3 tile transposes, AVX2 multiply-add resampler) and the portable
// loops that run elsewhere (and on tile edges) give the same bytes: sizes on and off the
// 16-pixel tiles, up- and downscaling, long filters (a 9x shrink), both targets.
TEST(ClipImageTest, SimdAndPortableKernelsGiveTheSameBytes) {
  std::mt19937_64 rng(11);
  int compared = 0;
  for (int i = 0; i < 24; ++i) {
    int w = 17 + static_cast<int>(rng() % 1100), h = 17 + static_cast<int>(rng() % 1100);
    if (i == 0) w = 2000, h = 1900;  // shrunk ~9x without DCT scaling: 37-tap filters
    if (i == 1) w = 100, h = 64;     // upscaled
    const std::string jpeg = sharding::EncodeTestJpeg(w, h, rng());
    for (int size : {224, 48}) {
      ImageOptions o;
      o.size = size;
      o.dct_scaling = i % 2 == 1;
      std::vector<uint8_t> simd(3 * size * size), portable(3 * size * size);
      ASSERT_TRUE(DecodeClipUint8(jpeg, o, simd.data()).ok());
      SetImageKernels(ImageKernels::kPortable);
      auto r = DecodeClipUint8(jpeg, o, portable.data());
      SetImageKernels(ImageKernels::kAuto);
      ASSERT_TRUE(r.ok());
      size_t differ = 0;
      for (size_t k = 0; k < simd.size(); ++k) differ += simd[k] != portable[k];
      EXPECT_EQ(differ, 0u) << w << "x" << h << " size " << size;
      ++compared;
    }
  }
  EXPECT_EQ(compared, 48);
}

// What decode_only_crop gives up: damage in rows below the crop is no longer seen (they are
// not decoded); damage inside them still is. A full decode sees both.
TEST(ClipImageTest, DecodingOnlyTheCropStillFailsOnDamageItReads) {
  const std::string tall = sharding::EncodeTestJpeg(200, 800, 5);
  const std::string tail_cut = tall.substr(0, tall.size() * 9 / 10);  // rows near the bottom lost
  const std::string mid_cut = tall.substr(0, tall.size() / 2);        // the crop's own rows lost
  ImageOptions part, full;
  full.decode_only_crop = false;
  std::vector<float> out(3 * 224 * 224);
  EXPECT_TRUE(DecodeClipFloat(tail_cut, part, out.data()).ok());
  EXPECT_EQ(DecodeClipFloat(tail_cut, full, out.data()).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(DecodeClipFloat(mid_cut, part, out.data()).status().code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(DecodeClipFloat(tall, part, out.data()).ok()) << "a good image after failures still decodes";
}

// The float output is the uint8 crop normalised with torchvision's two divisions, to the bit,
// for CLIP's constants, ImageNet's and random ones (the AVX2 path replaces the divisions by a
// corrected reciprocal only for constants it has checked on every byte value).
TEST(ClipImageTest, Uint8OutputIsTheCropBeforeNormalisation) {
  std::string jpeg = sharding::EncodeTestJpeg(64, 48, 3);
  std::mt19937 rng(5);
  std::uniform_real_distribution<float> mean(0.f, 1.f), stdev(0.05f, 2.f);
  for (int set = 0; set < 40; ++set) {
    ImageOptions o;
    o.size = 32;
    if (set == 1) {
      const float m[3] = {0.485f, 0.456f, 0.406f}, sd[3] = {0.229f, 0.224f, 0.225f};
      std::copy(m, m + 3, o.mean);
      std::copy(sd, sd + 3, o.std);
    } else if (set > 1) {
      for (int c = 0; c < 3; ++c) o.mean[c] = mean(rng), o.std[c] = stdev(rng);
    }
    std::vector<float> f(3 * 32 * 32);
    std::vector<uint8_t> u(3 * 32 * 32);
    ASSERT_TRUE(DecodeClipFloat(jpeg, o, f.data()).ok());
    ASSERT_TRUE(DecodeClipUint8(jpeg, o, u.data()).ok());
    for (int c = 0; c < 3; ++c)
      for (int i = 0; i < 32 * 32; ++i) {
        const float want = (u[c * 1024 + i] / 255.0f - o.mean[c]) / o.std[c];
        ASSERT_EQ(std::memcmp(&f[c * 1024 + i], &want, sizeof want), 0)
            << "set " << set << " channel " << c << ": " << f[c * 1024 + i] << " vs " << want;
      }
  }
}

TEST(ClipImageTest, UndecodableImagesAreErrorsNotCrashes) {
  ImageOptions o;
  std::vector<float> out(3 * 224 * 224);
  std::string good = sharding::EncodeTestJpeg(300, 300, 1);
  for (std::string bad : {std::string(), std::string("GIF89a..."), good.substr(0, good.size() / 2), good.substr(0, 40)}) {
    auto r = DecodeClipFloat(bad, o, out.data());
    EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument) << r.status().ToString();
  }
  EXPECT_TRUE(DecodeClipFloat(good, o, out.data()).ok()) << "a good image after failures still decodes";
}

}  // namespace
}  // namespace vlorch::dataflow
