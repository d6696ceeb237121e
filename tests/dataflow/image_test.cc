// JPEG decode + CLIP preprocessing against torchvision's transform (run through Debian's
// Python), bit for bit without DCT scaling, and close with it.
#include "dataflow/image.h"

#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <fstream>

#include <gtest/gtest.h>

#include "sharding/dataset_gen.h"

namespace vlorch::dataflow {
namespace {

constexpr const char* kPython = "/usr/bin/python3";

struct Shape { int w, h; };
const Shape kShapes[] = {{224, 224}, {300, 200}, {200, 300}, {257, 513}, {640, 481},
                         {97, 150},  {1024, 768}, {225, 224}, {2000, 1800}};

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

TEST(ClipImageTest, Uint8OutputIsTheCropBeforeNormalisation) {
  ImageOptions o;
  o.size = 32;
  std::string jpeg = sharding::EncodeTestJpeg(64, 48, 3);
  std::vector<float> f(3 * 32 * 32);
  std::vector<uint8_t> u(3 * 32 * 32);
  ASSERT_TRUE(DecodeClipFloat(jpeg, o, f.data()).ok());
  ASSERT_TRUE(DecodeClipUint8(jpeg, o, u.data()).ok());
  for (int c = 0; c < 3; ++c)
    for (int i = 0; i < 32 * 32; ++i)
      ASSERT_EQ(f[c * 1024 + i], (u[c * 1024 + i] / 255.0f - o.mean[c]) / o.std[c]);
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
