#include <unistd.h>

#include <filesystem>
#include <fstream>

#include <fmt/format.h>

#include <gtest/gtest.h>

#include "worker/checkpoint/checkpoint.h"

namespace vlorch::checkpoint {
namespace {
namespace fs = std::filesystem;

std::string ReadAll(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

class CheckpointTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / fmt::format("vlorch-ckpt-{}-{}", ::getpid(),
                                                   ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  CheckpointPayload Payload(float v) {
    CheckpointPayload p;
    p.model = {{"a.weight", torch::full({64, 32}, v)}, {"b.bias", torch::arange(10).to(torch::kFloat32) + v}};
    p.optimizer = {{"a.weight.exp_avg", torch::full({64, 32}, v / 2)}};
    p.optimizer_metadata = {{"steps", "3"}};
    p.trainer_state_json = fmt::format("{{\"step\": {}}}\n", v);
    return p;
  }

  fs::path dir_;
};

TEST_F(CheckpointTest, AsyncWritesTheSameBytesAsSync) {
  CheckpointOptions sync, async;
  sync.async = false;
  async.async = true;
  auto a = CheckpointManager::Open((dir_ / "sync").string(), sync);
  auto b = CheckpointManager::Open((dir_ / "async").string(), async);
  ASSERT_TRUE(a.ok() && b.ok());
  CheckpointPayload p = Payload(1.5f);
  ASSERT_TRUE((*a)->Save(7, p).ok());
  ASSERT_TRUE((*b)->Save(7, p).ok());
  // The snapshot is taken inside Save: changing the live tensors now must not leak in.
  p.model[0].second.fill_(99);
  ASSERT_TRUE((*b)->Wait().ok());
  for (const char* f : {"model.safetensors", "optimizer.safetensors", "trainer_state.json", "manifest.json"})
    EXPECT_EQ(ReadAll(dir_ / "sync" / "step-00000007" / f), ReadAll(dir_ / "async" / "step-00000007" / f)) << f;
  EXPECT_EQ(ReadAll(dir_ / "async" / "latest"), "step-00000007\n");
  auto t = ReadTensors((dir_ / "async" / "step-00000007" / "model.safetensors").string(), nullptr);
  ASSERT_TRUE(t.ok());
  EXPECT_TRUE(torch::equal((*t)[0].second, torch::full({64, 32}, 1.5f)));
}

TEST_F(CheckpointTest, KeepsTheNewestKAndRemovesUnfinishedSaves) {
  CheckpointOptions o;
  o.keep = 2;
  {
    auto m = CheckpointManager::Open(dir_.string(), o);
    for (int s = 1; s <= 4; ++s) ASSERT_TRUE((*m)->Save(s * 10, Payload(s)).ok());
    ASSERT_TRUE((*m)->Wait().ok());
  }
  EXPECT_FALSE(fs::exists(dir_ / "step-00000020"));
  EXPECT_TRUE(fs::exists(dir_ / "step-00000030"));
  EXPECT_TRUE(fs::exists(dir_ / "step-00000040"));
  fs::create_directories(dir_ / ".tmp-step-00000050");  // a save that crashed
  auto m = CheckpointManager::Open(dir_.string(), o);
  EXPECT_FALSE(fs::exists(dir_ / ".tmp-step-00000050"));
}

TEST_F(CheckpointTest, FindLatestSkipsDamagedAndPartialCheckpoints) {
  CheckpointOptions o;
  o.keep = 5;
  {
    auto m = CheckpointManager::Open(dir_.string(), o);
    for (int s = 1; s <= 4; ++s) ASSERT_TRUE((*m)->Save(s, Payload(s)).ok());
  }
  std::vector<std::string> skipped;
  auto found = FindLatest(dir_.string(), &skipped);
  ASSERT_TRUE(found.ok() && found->has_value());
  EXPECT_EQ((*found)->manifest.step, 4);

  {  // step 4: one flipped byte in the model
    std::fstream f(dir_ / "step-00000004" / "model.safetensors", std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(200);
    char c;
    f.read(&c, 1);
    c ^= 0x10;
    f.seekp(200);
    f.write(&c, 1);
  }
  fs::resize_file(dir_ / "step-00000003" / "optimizer.safetensors", 100);  // step 3: truncated
  fs::remove(dir_ / "step-00000002" / "manifest.json");                   // step 2: never finished
  skipped.clear();
  found = FindLatest(dir_.string(), &skipped);
  ASSERT_TRUE(found.ok() && found->has_value());
  EXPECT_EQ((*found)->manifest.step, 1);
  ASSERT_EQ(skipped.size(), 3u);
  EXPECT_NE(skipped[0].find("step-00000004: "), std::string::npos);
  EXPECT_NE(skipped[0].find("model.safetensors has CRC32C"), std::string::npos) << skipped[0];
  EXPECT_NE(skipped[1].find("optimizer.safetensors has 100 bytes but the manifest says"), std::string::npos) << skipped[1];
  EXPECT_NE(skipped[2].find("manifest.json is missing"), std::string::npos) << skipped[2];

  std::ofstream(dir_ / "step-00000001" / "manifest.json") << "{\"format\": \"vlorch-checkpoint\", \"version\": 99}";
  skipped.clear();
  found = FindLatest(dir_.string(), &skipped);
  ASSERT_TRUE(found.ok());
  EXPECT_FALSE(found->has_value());
  EXPECT_NE(skipped.back().find("unsupported \"version\""), std::string::npos) << skipped.back();
}

}  // namespace
}  // namespace vlorch::checkpoint
