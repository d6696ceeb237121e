#include <fcntl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <csignal>
#include <cstring>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <gtest/gtest.h>

#include "common/host.h"
#include "jobs/job_state.h"
#include "tests/common/small_filesystem.h"
#include "worker/checkpoint/checkpoint.h"
#include "worker/checkpoint/run_dir_lock.h"
#include "worker/checkpoint/trainer_state.h"

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

  // Saves steps 1 and 2 (synchronously) into dir_.
  void SaveTwo(const CheckpointOptions& base = {}) {
    CheckpointOptions o = base;
    o.async = false;
    o.keep = 5;
    auto m = CheckpointManager::Open(dir_.string(), o);
    ASSERT_TRUE(m.ok()) << m.status().ToString();
    ASSERT_TRUE((*m)->Save(1, Payload(1)).ok());
    ASSERT_TRUE((*m)->Save(2, Payload(2)).ok());
  }

  fs::path dir_;
};

void WriteAll(const fs::path& p, const std::string& text) {
  fs::permissions(p, fs::perms::owner_write, fs::perm_options::add);
  std::ofstream(p, std::ios::binary | std::ios::trunc) << text;
}

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

// Every field of manifest.json damaged in turn: the checkpoint is skipped with a message naming
// the file and the field, the previous good one is found, and nothing throws (nlohmann's
// get<>() and value() throw type_error on a wrong type; std::stoul threw on a bad CRC).
TEST_F(CheckpointTest, EveryDamagedManifestFieldSkipsTheCheckpointWithoutThrowing) {
  CheckpointOptions o;
  o.stage = "s";
  SaveTwo(o);
  const fs::path manifest = dir_ / "step-00000002" / "manifest.json";
  const std::string good = ReadAll(manifest);
  ASSERT_NE(good.find("\"stage\": \"s\""), std::string::npos) << good;
  using Edit = std::function<void(nlohmann::json&)>;
  struct Case {
    std::string what;
    Edit edit;            // applied to the parsed manifest, or
    std::string raw;      // written as the whole file when `edit` is empty
    std::string expect;   // in the message
  };
  auto json_case = [](std::string what, Edit e, std::string expect) { return Case{what, e, "", expect}; };
  std::string invalid_utf8 = good;
  invalid_utf8.replace(invalid_utf8.find("\"stage\": \"s\""), 12, "\"stage\": \"\xff\xfe\"");
  const std::vector<Case> cases = {
      json_case("format wrong type", [](auto& j) { j["format"] = 7; }, "field \"format\" is a JSON number"),
      json_case("format missing", [](auto& j) { j.erase("format"); }, "field \"format\" is missing"),
      json_case("version string", [](auto& j) { j["version"] = "1"; }, "field \"version\" is a JSON string"),
      json_case("stage wrong type", [](auto& j) { j["stage"] = 5; }, "field \"stage\" is a JSON number"),
      json_case("stage missing", [](auto& j) { j.erase("stage"); }, "field \"stage\" is missing"),
      json_case("step string", [](auto& j) { j["step"] = "2"; }, "field \"step\" is a JSON string"),
      json_case("step missing", [](auto& j) { j.erase("step"); }, "field \"step\" is missing"),
      json_case("step negative", [](auto& j) { j["step"] = -2; }, "field \"step\" is -2"),
      json_case("step huge", [](auto& j) { j["step"] = UINT64_MAX; }, "field \"step\" is 18446744073709551615"),
      json_case("step float", [](auto& j) { j["step"] = 1e30; }, "field \"step\" is 1e+30"),
      json_case("step not the directory's", [](auto& j) { j["step"] = 3; }, "\"step\" is 3 but the directory is step-00000002"),
      json_case("files object", [](auto& j) { j["files"] = nlohmann::json::object(); }, "field \"files\" is a JSON object"),
      json_case("files missing", [](auto& j) { j.erase("files"); }, "field \"files\" is missing"),
      json_case("files entry string", [](auto& j) { j["files"][0] = "model.safetensors"; }, "field \"files[0]\" is a JSON string"),
      json_case("name wrong type", [](auto& j) { j["files"][1]["name"] = 3; }, "field \"files[1].name\" is a JSON number"),
      json_case("name escapes", [](auto& j) { j["files"][0]["name"] = "../step-00000001/model.safetensors"; },
                "field \"files[0].name\" is not a plain file name"),
      json_case("name dot-dot", [](auto& j) { j["files"][0]["name"] = ".."; }, "field \"files[0].name\" is not a plain"),
      json_case("name empty", [](auto& j) { j["files"][0]["name"] = ""; }, "field \"files[0].name\" is not a plain"),
      json_case("name twice", [](auto& j) { j["files"][1]["name"] = j["files"][0]["name"]; }, "a second time"),
      json_case("bytes missing", [](auto& j) { j["files"][0].erase("bytes"); }, "field \"files[0].bytes\" is missing"),
      json_case("bytes negative", [](auto& j) { j["files"][0]["bytes"] = -5; }, "field \"files[0].bytes\" is -5"),
      json_case("bytes string", [](auto& j) { j["files"][0]["bytes"] = "100"; }, "field \"files[0].bytes\" is a JSON string"),
      json_case("bytes huge", [](auto& j) { j["files"][0]["bytes"] = UINT64_MAX; }, "field \"files[0].bytes\" is 18446744073709551615"),
      json_case("bytes float", [](auto& j) { j["files"][0]["bytes"] = 1e300; }, "field \"files[0].bytes\" is 1e+300"),
      json_case("crc not hex", [](auto& j) { j["files"][2]["crc32c"] = "zzzzzzzz"; }, "field \"files[2].crc32c\" is not 8 hex"),
      json_case("crc too long", [](auto& j) { j["files"][2]["crc32c"] = "123456789"; }, "field \"files[2].crc32c\" is not 8 hex"),
      json_case("crc number", [](auto& j) { j["files"][2]["crc32c"] = 1234; }, "field \"files[2].crc32c\" is a JSON number"),
      json_case("top-level array", [](auto& j) { j = nlohmann::json::array({1, 2}); }, "a JSON array, not an object"),
      Case{"truncated", nullptr, good.substr(0, good.size() / 2), "not valid JSON"},
      Case{"empty", nullptr, "", "not valid JSON"},
      Case{"invalid UTF-8", nullptr, invalid_utf8, "not valid JSON"},
      Case{"trailing bytes", nullptr, good + "}", "not valid JSON"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.what);
    std::string text = c.raw;
    if (c.edit) {
      nlohmann::json j = nlohmann::json::parse(good);
      c.edit(j);
      text = j.dump(2);
    }
    WriteAll(manifest, text);
    std::vector<std::string> skipped;
    StatusOr<std::optional<FoundCheckpoint>> found = std::optional<FoundCheckpoint>();
    EXPECT_NO_THROW(found = FindLatest(dir_.string(), &skipped));
    ASSERT_TRUE(found.ok()) << found.status().ToString();
    ASSERT_TRUE(found->has_value());
    EXPECT_EQ((*found)->manifest.step, 1);
    ASSERT_EQ(skipped.size(), 1u);
    EXPECT_EQ(skipped[0].rfind("step-00000002: ", 0), 0u) << skipped[0];
    EXPECT_NE(skipped[0].find(c.expect), std::string::npos) << skipped[0];
    if (c.edit) {
      EXPECT_NE(skipped[0].find("manifest.json"), std::string::npos) << skipped[0];
    }
    auto v = VerifyCheckpoint((dir_ / "step-00000002").string());
    EXPECT_EQ(v.status().code(), StatusCode::kCorruption) << v.status().ToString();
  }
  // A FIFO where the manifest belongs is refused without blocking the reader.
  fs::remove(manifest);
  ASSERT_EQ(::mkfifo(manifest.c_str(), 0644), 0);
  std::vector<std::string> skipped;
  auto found = FindLatest(dir_.string(), &skipped);
  ASSERT_TRUE(found.ok() && found->has_value());
  EXPECT_EQ((*found)->manifest.step, 1);
  ASSERT_EQ(skipped.size(), 1u);
  EXPECT_NE(skipped[0].find("is not a regular file"), std::string::npos) << skipped[0];
}

// Directory names: steps sort as numbers past 8 digits; other "step-*" entries are reported.
TEST_F(CheckpointTest, FindLatestOrdersStepsNumericallyAndReportsStrayNames) {
  CheckpointOptions o;
  o.async = false;
  o.keep = 5;
  {
    auto m = CheckpointManager::Open(dir_.string(), o);
    ASSERT_TRUE((*m)->Save(99999999, Payload(1)).ok());
    ASSERT_TRUE((*m)->Save(100000000, Payload(2)).ok());
  }
  EXPECT_EQ(ParseStepDirName("step-00000040"), 40);
  EXPECT_EQ(ParseStepDirName("step-40"), std::nullopt);
  EXPECT_EQ(ParseStepDirName("step-000000040"), std::nullopt);
  EXPECT_EQ(ParseStepDirName("step-0000004x"), std::nullopt);
  fs::create_directories(dir_ / "step-00000040.bak");
  std::vector<std::string> skipped;
  auto found = FindLatest(dir_.string(), &skipped);
  ASSERT_TRUE(found.ok() && found->has_value());
  EXPECT_EQ((*found)->manifest.step, 100000000);
  ASSERT_EQ(skipped.size(), 1u);
  EXPECT_NE(skipped[0].find("step-00000040.bak: not a checkpoint directory name"), std::string::npos) << skipped[0];
}

TrainerState GoodTrainerState(int64_t step) {
  TrainerState ts;
  ts.job = "j";
  ts.stage = "s";
  ts.step = step;
  ts.optimizer_steps = step;
  ts.total_steps = 10;
  ts.cursor.slot = 8;
  ts.cursor.taken = {5, 3};
  ts.samples = 8;
  ts.tokens = 100;
  ts.lr = 1e-3;
  ts.loss = std::numeric_limits<double>::quiet_NaN();
  ts.seed = UINT64_MAX;
  ts.dp = 2;
  ts.rng_state = {0x00, 0x7f, 0x80, 0xff};
  return ts;
}

TEST_F(CheckpointTest, TrainerStateRoundTripsAndEachDamagedFieldSkipsTheCheckpoint) {
  {  // the round trip
    fs::create_directories(dir_);
    std::ofstream(dir_ / "trainer_state.json") << TrainerStateJson(GoodTrainerState(7));
    auto ts = ReadTrainerState(dir_.string(), 7, 4);
    ASSERT_TRUE(ts.ok()) << ts.status().ToString();
    EXPECT_EQ(ts->cursor, GoodTrainerState(7).cursor);
    EXPECT_EQ(ts->rng_state, GoodTrainerState(7).rng_state);
    EXPECT_EQ(ts->seed, UINT64_MAX);
    EXPECT_TRUE(std::isnan(ts->loss));
    EXPECT_EQ(ts->dp, 2);
    fs::remove_all(dir_);
  }
  auto check = [](const std::string& path, const CheckpointManifest& m) {
    return ReadTrainerState(path, m.step, 4).status();
  };
  using Edit = std::function<void(nlohmann::json&)>;
  const std::vector<std::pair<Edit, std::string>> cases = {
      {[](auto& j) { j["step"] = "2"; }, "field \"step\" is a JSON string"},
      {[](auto& j) { j["step"] = 3; }, "field \"step\" is 3 but the manifest says 2"},
      {[](auto& j) { j.erase("optimizer_steps"); }, "field \"optimizer_steps\" is missing"},
      {[](auto& j) { j["optimizer_steps"] = -1; }, "field \"optimizer_steps\" is -1"},
      {[](auto& j) { j["samples"] = -8; }, "field \"samples\" is -8"},
      {[](auto& j) { j["tokens"] = 1e30; }, "field \"tokens\" is 1e+30"},
      {[](auto& j) { j["cursor"] = 5; }, "field \"cursor\" is a JSON number"},
      {[](auto& j) { j["cursor"] = "v1;slot=x;taken=1"; }, "field \"cursor\" is not a data cursor"},
      {[](auto& j) { j["seed"] = -1; }, "field \"seed\" is -1"},
      {[](auto& j) { j["dp"] = 0; }, "field \"dp\" is 0"},
      {[](auto& j) { j["lr"] = "fast"; }, "field \"lr\" is a JSON string"},
      {[](auto& j) { j["rng_state"] = "zz00ff11"; }, "field \"rng_state\" is not hex"},
      {[](auto& j) { j["rng_state"] = "abc"; }, "odd number"},
      {[](auto& j) { j["rng_state"] = "00112233aa"; }, "holds 5 bytes"},
      {[](auto& j) { j.erase("rng_state"); }, "field \"rng_state\" is missing"},
      {[](auto& j) { j = "state"; }, "a JSON string, not an object"},
  };
  for (size_t i = 0; i < cases.size(); ++i) {
    SCOPED_TRACE(cases[i].second);
    fs::remove_all(dir_);
    CheckpointOptions o;
    o.async = false;
    o.keep = 5;
    auto m = CheckpointManager::Open(dir_.string(), o);
    CheckpointPayload p1 = Payload(1), p2 = Payload(2);
    p1.trainer_state_json = TrainerStateJson(GoodTrainerState(1));
    nlohmann::json j = nlohmann::json::parse(TrainerStateJson(GoodTrainerState(2)));
    cases[i].first(j);
    p2.trainer_state_json = j.dump(2);  // committed with a matching CRC: only the content check sees it
    ASSERT_TRUE((*m)->Save(1, p1).ok());
    ASSERT_TRUE((*m)->Save(2, p2).ok());
    std::vector<std::string> skipped;
    auto found = FindLatest(dir_.string(), &skipped, check);
    ASSERT_TRUE(found.ok() && found->has_value()) << found.status().ToString();
    EXPECT_EQ((*found)->manifest.step, 1);
    ASSERT_EQ(skipped.size(), 1u);
    EXPECT_NE(skipped[0].find("trainer_state.json: "), std::string::npos) << skipped[0];
    EXPECT_NE(skipped[0].find(cases[i].second), std::string::npos) << skipped[0];
  }
}

// A re-save of a committed step whose write fails midway (here: a tensor the format cannot
// hold, after model.safetensors was written) leaves the committed directory as it was. The
// old writer deleted it before writing the new one.
TEST_F(CheckpointTest, FailedResaveOfACommittedStepLeavesItIntact) {
  CheckpointOptions o;
  o.async = false;
  auto m = CheckpointManager::Open(dir_.string(), o);
  ASSERT_TRUE((*m)->Save(5, Payload(1)).ok());
  const std::string before = ReadAll(dir_ / "step-00000005" / "model.safetensors");
  CheckpointPayload bad = Payload(2);
  bad.optimizer = {{"a.weight.exp_avg", torch::zeros({4}, torch::kInt16)}};
  Status s = (*m)->Save(5, bad);
  EXPECT_FALSE(s.ok());
  EXPECT_NE(s.message().find("no safetensors dtype"), std::string::npos) << s.ToString();
  auto v = VerifyCheckpoint((dir_ / "step-00000005").string());
  ASSERT_TRUE(v.ok()) << v.status().ToString();
  EXPECT_EQ(ReadAll(dir_ / "step-00000005" / "model.safetensors"), before);
  EXPECT_EQ(ReadAll(dir_ / "latest"), "step-00000005\n");

  // A re-save that completes replaces it, leaving nothing aside.
  ASSERT_TRUE((*m)->Save(5, Payload(2)).ok());
  ASSERT_TRUE(VerifyCheckpoint((dir_ / "step-00000005").string()).ok());
  EXPECT_NE(ReadAll(dir_ / "step-00000005" / "model.safetensors"), before);
  EXPECT_FALSE(fs::exists(dir_ / ".replaced-step-00000005"));
  EXPECT_FALSE(fs::exists(dir_ / ".tmp-step-00000005"));
}

// Crash tests: the crashing save runs in a child that gtest's "threadsafe" death-test style
// starts afresh (it re-executes this binary into this test), so VLORCH_FAULT is read by that
// child's first kill point. The parent prepares the directory and names it in
// VLORCH_TEST_CKPT_DIR; the child, finding that set, skips the preparation.
class CheckpointCrashTest : public CheckpointTest {
 protected:
  // The directory to use, and whether this is the child.
  std::pair<fs::path, bool> Where() {
    const char* d = std::getenv("VLORCH_TEST_CKPT_DIR");
    return d ? std::make_pair(fs::path(d), true) : std::make_pair(dir_, false);
  }
  // Runs `resave` in a fresh child with VLORCH_FAULT=`fault`; expects it killed there.
  void ExpectKilledDuring(const std::string& fault, const std::function<void()>& resave) {
    GTEST_FLAG_SET(death_test_style, "threadsafe");
    ::setenv("VLORCH_TEST_CKPT_DIR", dir_.c_str(), 1);
    ::setenv("VLORCH_FAULT", fault.c_str(), 1);
    EXPECT_EXIT(
        {
          resave();
          std::_Exit(0);
        },
        ::testing::KilledBySignal(SIGKILL), "VLORCH_FAULT point reached");
    ::unsetenv("VLORCH_FAULT");
    ::unsetenv("VLORCH_TEST_CKPT_DIR");
  }
  std::string ModelOf(const fs::path& dir, int64_t step) {
    return ReadAll(dir / StepDirName(step) / "model.safetensors");
  }
};

TEST_F(CheckpointCrashTest, ResaveKilledMidWriteLeavesTheCommittedStepIntact) {
  auto [dir, child] = Where();
  CheckpointOptions o;
  o.async = false;
  o.stage = "crash-mid-write";
  std::string before;
  if (!child) {
    auto m = CheckpointManager::Open(dir.string(), o);
    ASSERT_TRUE((*m)->Save(4, Payload(1)).ok());
    ASSERT_TRUE((*m)->Save(5, Payload(1)).ok());
    before = ModelOf(dir, 5);
  }
  ExpectKilledDuring("kill:stage=crash-mid-write:step=5:during=checkpoint-write", [&, dir = dir] {
    auto m = CheckpointManager::Open(dir.string(), o);
    (*m)->Save(5, Payload(2)).IgnoreError();
  });
  EXPECT_TRUE(fs::exists(dir / ".tmp-step-00000005"));  // the crash happened where it should
  auto v = VerifyCheckpoint((dir / "step-00000005").string());
  ASSERT_TRUE(v.ok()) << v.status().ToString();
  EXPECT_EQ(ModelOf(dir, 5), before);
  auto found = FindLatest(dir.string(), nullptr);
  ASSERT_TRUE(found.ok() && found->has_value());
  EXPECT_EQ((*found)->manifest.step, 5);
}

TEST_F(CheckpointCrashTest, ResaveKilledBetweenItsRenamesIsRestoredByOpen) {
  auto [dir, child] = Where();
  CheckpointOptions o;
  o.async = false;
  o.keep = 1;  // no older checkpoint to fall back to: step 5 itself must survive
  o.stage = "crash-between-renames";
  std::string before;
  if (!child) {
    auto m = CheckpointManager::Open(dir.string(), o);
    ASSERT_TRUE((*m)->Save(5, Payload(1)).ok());
    before = ModelOf(dir, 5);
  }
  ExpectKilledDuring("kill:stage=crash-between-renames:during=checkpoint-replace", [&, dir = dir] {
    auto m = CheckpointManager::Open(dir.string(), o);
    (*m)->Save(5, Payload(2)).IgnoreError();
  });
  // Killed with the committed step aside and the complete new one not yet renamed in.
  EXPECT_FALSE(fs::exists(dir / "step-00000005"));
  EXPECT_TRUE(fs::exists(dir / ".replaced-step-00000005"));
  EXPECT_TRUE(fs::exists(dir / ".tmp-step-00000005"));
  // The next writer's Open puts it back before anything reads the directory.
  auto m = CheckpointManager::Open(dir.string(), o);
  ASSERT_TRUE(m.ok()) << m.status().ToString();
  EXPECT_FALSE(fs::exists(dir / ".replaced-step-00000005"));
  EXPECT_FALSE(fs::exists(dir / ".tmp-step-00000005"));
  auto found = FindLatest(dir.string(), nullptr);
  ASSERT_TRUE(found.ok() && found->has_value());
  EXPECT_EQ((*found)->manifest.step, 5);
  EXPECT_EQ(ModelOf(dir, 5), before);
}

// A child process that takes the lock of `dir`, says so on a pipe, and holds it until the
// parent closes `release` (or kills it).
struct LockHolder {
  pid_t pid = -1;
  int release = -1;
};

LockHolder StartLockHolder(const std::string& dir) {
  int ready[2], release[2];
  EXPECT_EQ(::pipe(ready), 0);
  EXPECT_EQ(::pipe(release), 0);
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::close(ready[0]);
    ::close(release[1]);
    auto lock = RunDirLock::Acquire(dir, "the test's holder");
    const char c = lock.ok() ? '1' : '0';
    if (::write(ready[1], &c, 1) != 1) std::_Exit(3);
    char x;
    while (::read(release[0], &x, 1) > 0) {
    }
    std::_Exit(0);  // no destructors: the kernel drops the lock with the process
  }
  ::close(ready[1]);
  ::close(release[0]);
  char c = 0;
  EXPECT_EQ(::read(ready[0], &c, 1), 1);
  ::close(ready[0]);
  EXPECT_EQ(c, '1') << "the child could not take the lock";
  return {pid, release[1]};
}

int Reap(pid_t pid) {
  int status = 0;
  ::waitpid(pid, &status, 0);
  return status;
}

TEST_F(CheckpointTest, SecondWriterOnARunDirIsRefusedNamingTheHoldersPidAndHost) {
  LockHolder holder = StartLockHolder(dir_.string());
  auto second = RunDirLock::Acquire(dir_.string(), "second");
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), StatusCode::kFailedPrecondition);  // vlorch-worker: exit code 2
  const std::string msg = second.status().message();
  EXPECT_NE(msg.find(fmt::format("pid {} on host {}", holder.pid, HostName())), std::string::npos) << msg;
  EXPECT_NE(msg.find("the test's holder"), std::string::npos) << msg;
  EXPECT_NE(msg.find((dir_ / "lock").string()), std::string::npos) << msg;
  EXPECT_NE(msg.find(fmt::format("kill {}", holder.pid)), std::string::npos) << msg;

  // The holder ends (_exit, no clean-up): the lock is free again, its text replaced by ours.
  ::close(holder.release);
  Reap(holder.pid);
  auto again = RunDirLock::Acquire(dir_.string(), "after");
  ASSERT_TRUE(again.ok()) << again.status().ToString();
  auto text = nlohmann::json::parse(ReadAll(dir_ / "lock"));
  EXPECT_EQ(text["pid"], ::getpid());
  EXPECT_EQ(text["what"], "after");
}

TEST_F(CheckpointTest, LockOfAHolderKilledWithSigkillIsTakenAgain) {
  LockHolder holder = StartLockHolder(dir_.string());
  ASSERT_FALSE(RunDirLock::Acquire(dir_.string(), "second").ok());
  ASSERT_EQ(::kill(holder.pid, SIGKILL), 0);
  const int status = Reap(holder.pid);
  EXPECT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
  ::close(holder.release);
  EXPECT_NE(ReadAll(dir_ / "lock").find(fmt::format("\"pid\":{}", holder.pid)), std::string::npos)
      << "the dead holder's text is still there";
  auto again = RunDirLock::Acquire(dir_.string(), "after");
  ASSERT_TRUE(again.ok()) << again.status().ToString();
  EXPECT_EQ(nlohmann::json::parse(ReadAll(dir_ / "lock"))["pid"], ::getpid());
}

TEST_F(CheckpointTest, RunDirLockIsSharedWithinAProcessAndReleasedWithItsLastHandle) {
  {
    auto a = RunDirLock::Acquire(dir_.string(), "worker");
    ASSERT_TRUE(a.ok()) << a.status().ToString();
    auto b = RunDirLock::Acquire(dir_.string(), "stage");  // the stage inside the worker
    ASSERT_TRUE(b.ok()) << b.status().ToString();
    EXPECT_EQ(nlohmann::json::parse(ReadAll(dir_ / "lock"))["what"], "worker");
    // Another process is refused while either handle lives.
    const pid_t pid = ::fork();
    if (pid == 0) std::_Exit(RunDirLock::Acquire(dir_.string(), "child").ok() ? 0 : 7);
    const int status = Reap(pid);
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 7);
  }
  EXPECT_EQ(ReadAll(dir_ / "lock"), "") << "released: the holder's text is cleared";
  // A damaged lock file left behind is simply overwritten.
  std::ofstream(dir_ / "lock") << "\xff\xfe{garbage";
  LockHolder holder = StartLockHolder(dir_.string());
  ::close(holder.release);
  Reap(holder.pid);
  std::ofstream(dir_ / "lock") << "{\"pid\": \"x\"";
  auto c = RunDirLock::Acquire(dir_.string(), "c");
  ASSERT_TRUE(c.ok()) << c.status().ToString();
}

// The stage seal and `latest`, the other run-directory metadata read back from disk: a damaged
// value is a Corruption naming the file and the field (or, for the `latest` hint, no step),
// never a type_error thrown out of nlohmann.
TEST_F(CheckpointTest, DamagedSealAndLatestAreReportedNotThrown) {
  const std::string run = dir_.string();
  const fs::path stage_dir = fs::path(StageDir(run, "s"));
  fs::create_directories(stage_dir / "checkpoints");
  const std::string ck = (stage_dir / "checkpoints" / "step-00000004").string();
  const nlohmann::json good = {{"status", "sealed"}, {"stage", "s"}, {"kind", "train"}, {"checkpoint", ck},
                               {"manifest_crc32c", 12345}, {"steps", 4}, {"loss", 0.5}};
  using Edit = std::function<void(nlohmann::json&)>;
  const std::vector<std::pair<Edit, std::string>> cases = {
      {[](auto& j) { j["status"] = 1; }, "\"status\""},
      {[](auto& j) { j["kind"] = 5; }, "\"kind\""},
      {[](auto& j) { j["steps"] = "4"; }, "\"steps\""},
      {[](auto& j) { j["steps"] = -4; }, "\"steps\""},
      {[](auto& j) { j["loss"] = "low"; }, "\"loss\""},
      {[](auto& j) { j["checkpoint"] = 5; }, "\"checkpoint\""},
      {[](auto& j) { j["checkpoint"] = "/etc"; }, "\"checkpoint\" does not name a checkpoint of the stage"},
      {[](auto& j) { j["manifest_crc32c"] = uint64_t{1} << 40; }, "\"manifest_crc32c\""},
      {[](auto& j) { j["manifest_crc32c"] = "3039"; }, "\"manifest_crc32c\""},
  };
  for (const auto& [edit, expect] : cases) {
    SCOPED_TRACE(expect);
    nlohmann::json j = good;
    edit(j);
    std::ofstream(stage_dir / "state.json", std::ios::trunc) << j.dump();
    StatusOr<std::optional<StageSeal>> seal = std::optional<StageSeal>();
    EXPECT_NO_THROW(seal = ReadStageSeal(run, "s"));
    EXPECT_EQ(seal.status().code(), StatusCode::kCorruption);
    EXPECT_NE(seal.status().message().find("state.json"), std::string::npos) << seal.status().message();
    EXPECT_NE(seal.status().message().find(expect), std::string::npos) << seal.status().message();
  }
  std::ofstream(stage_dir / "state.json", std::ios::trunc) << good.dump();
  auto seal = ReadStageSeal(run, "s");
  ASSERT_TRUE(seal.ok() && seal->has_value()) << seal.status().ToString();
  EXPECT_EQ((*seal)->steps, 4);
  fs::remove(stage_dir / "state.json");

  JobSpec job;
  job.stages.emplace_back();
  job.stages.back().name = "s";
  for (const std::string latest : {"step-00000040\n", "step-0000abcd\n", "garbage", "step-99999999999999999999999\n", ""}) {
    std::ofstream(stage_dir / "checkpoints" / "latest", std::ios::trunc) << latest;
    auto progress = ReadJobProgress(job, run);
    ASSERT_TRUE(progress.ok()) << progress.status().ToString();
    EXPECT_EQ((*progress)[0].status, StageStatus::kInProgress);
    EXPECT_EQ((*progress)[0].latest_step, latest == "step-00000040\n" ? 40 : -1) << latest;
  }
  // preempted.json with a step past int64 is no record rather than a negative step.
  std::ofstream(stage_dir / "preempted.json") << "{\"incarnation\": 1, \"step\": 18446744073709551615, \"checkpoint\": \"x\"}";
  EXPECT_FALSE(ReadPreemptionRecord(run, "s").has_value());
}

using vlorch::test_support::SmallFilesystem;

// About 1.25 MiB: two 640 KiB tensors.
CheckpointPayload LargePayload(float v) {
  CheckpointPayload p;
  p.model = {{"w", torch::full({160 * 1024}, v)}};
  p.optimizer = {{"w.exp_avg", torch::full({160 * 1024}, v / 2)}};
  p.optimizer_metadata = {{"steps", "1"}};
  p.trainer_state_json = fmt::format("{{\"step\": {}}}\n", v);
  return p;
}

// The next save does not fit the space left: refused before a byte is written, with the
// directory, the bytes needed and the bytes free; the committed step is untouched; once
// space is freed the same save commits.
TEST_F(CheckpointTest, SaveThatCannotFitIsRefusedNamingTheSpaceAndTheCommittedStepStays) {
  SmallFilesystem small(dir_, "size=2m");
  if (!small.ok()) GTEST_SKIP() << small.why();
  CheckpointOptions o;
  o.stage = "s";
  auto m = CheckpointManager::Open((dir_ / "ck").string(), o);
  ASSERT_TRUE(m.ok()) << m.status().ToString();
  ASSERT_TRUE((*m)->Save(1, LargePayload(1)).ok());
  ASSERT_TRUE((*m)->Wait().ok());
  ASSERT_TRUE((*m)->Save(2, LargePayload(2)).ok());  // asynchronous: the error comes from Wait
  Status s = (*m)->Wait();
  ASSERT_EQ(s.code(), StatusCode::kResourceExhausted) << s.ToString();
  EXPECT_NE(s.message().find("checkpoint step 2 of stage 's' needs 1.3 MiB"), std::string::npos) << s.message();
  EXPECT_NE(s.message().find("on the filesystem of " + (dir_ / "ck").string() + ", which has"), std::string::npos)
      << s.message();
  EXPECT_NE(s.message().find("the committed checkpoints are intact"), std::string::npos) << s.message();
  EXPECT_FALSE(fs::exists(dir_ / "ck" / ".tmp-step-00000002"));
  EXPECT_EQ(ReadAll(dir_ / "ck" / "latest"), "step-00000001\n");
  ASSERT_TRUE(VerifyCheckpoint((dir_ / "ck" / "step-00000001").string()).ok());

  // Space returns (the older checkpoint is removed by hand): the save commits.
  fs::remove_all(dir_ / "ck" / "step-00000001");
  ASSERT_TRUE((*m)->Save(2, LargePayload(2)).ok());
  ASSERT_TRUE((*m)->Wait().ok());
  ASSERT_TRUE(VerifyCheckpoint((dir_ / "ck" / "step-00000002").string()).ok());
  EXPECT_EQ(ReadAll(dir_ / "ck" / "latest"), "step-00000002\n");
}

// The space check passes but the filesystem still fills part-way (here: it runs out of
// inodes after the first file, as it would when another writer takes the space): the save
// fails with the same kind of error, removes its partial files, and the committed step stays.
TEST_F(CheckpointTest, SaveThatRunsOutOfSpacePartWayRemovesItsFilesAndKeepsTheCommittedStep) {
  SmallFilesystem small(dir_, "size=64m,nr_inodes=64");
  if (!small.ok()) GTEST_SKIP() << small.why();
  CheckpointOptions o;
  o.async = false;
  auto m = CheckpointManager::Open((dir_ / "ck").string(), o);
  ASSERT_TRUE(m.ok()) << m.status().ToString();
  ASSERT_TRUE((*m)->Save(1, Payload(1)).ok());
  // Take every free inode, then give two back: the temporary directory and one file.
  std::vector<fs::path> fillers;
  for (int i = 0; i < 1000; ++i) {
    const fs::path f = dir_ / fmt::format("filler-{}", i);
    const int fd = ::open(f.c_str(), O_CREAT | O_WRONLY, 0644);
    if (fd < 0) {
      ASSERT_EQ(errno, ENOSPC) << std::strerror(errno);
      break;
    }
    ::close(fd);
    fillers.push_back(f);
  }
  ASSERT_GE(fillers.size(), 2u);
  fs::remove(fillers.back()), fillers.pop_back();
  fs::remove(fillers.back()), fillers.pop_back();
  Status s = (*m)->Save(2, Payload(2));
  ASSERT_EQ(s.code(), StatusCode::kResourceExhausted) << s.ToString();
  EXPECT_NE(s.message().find("checkpoint step 2 ran out of space on the filesystem of " + (dir_ / "ck").string()),
            std::string::npos)
      << s.message();
  EXPECT_NE(s.message().find(std::strerror(ENOSPC)), std::string::npos) << s.message();
  EXPECT_FALSE(fs::exists(dir_ / "ck" / ".tmp-step-00000002"));
  EXPECT_EQ(ReadAll(dir_ / "ck" / "latest"), "step-00000001\n");
  ASSERT_TRUE(VerifyCheckpoint((dir_ / "ck" / "step-00000001").string()).ok());

  for (const auto& f : fillers) fs::remove(f);
  ASSERT_TRUE((*m)->Save(2, Payload(2)).ok());
  ASSERT_TRUE(VerifyCheckpoint((dir_ / "ck" / "step-00000002").string()).ok());
}

}  // namespace
}  // namespace vlorch::checkpoint
