// vlorch-worker under real mpirun: dp equivalence, kill -9 and resume, a crash inside a
// checkpoint write, SIGTERM preemption, and a damaged shard. Every run trains the same tiny
// BLIP-2-style model on JPEGs generated here, on CPU, where training is bitwise reproducible.
#include <fcntl.h>
#include <sys/statvfs.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>

#include <fmt/format.h>
#include <gtest/gtest.h>

#include "sharding/dataset_gen.h"
#include "sharding/ingest.h"
#include "sharding/shard_store.h"
#include "tests/common/small_filesystem.h"
#include "common/host.h"
#include "worker/checkpoint/checkpoint.h"
#include "worker/checkpoint/run_dir_lock.h"

namespace vlorch {
namespace {
namespace fs = std::filesystem;

std::string ReadAll(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

struct JobParams {
  int steps = 12;
  int batch = 4;
  int every = 4;
  std::string store = "store";
  std::string extra_stage;  // appended to the stage
};

class MpirunTrain : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    root_ = fs::temp_directory_path() / fmt::format("vlorch-train-{}", ::getpid());
    fs::remove_all(root_);
    sharding::Img2DatasetGenOptions g;
    g.dir = (root_ / "src").string();
    g.shards = 2;
    g.per_shard = 60;
    g.bad_cases = false;
    g.failed_downloads = 0;
    g.min_px = 24;
    g.max_px = 64;
    auto made = sharding::MakeImg2Dataset(g);
    ASSERT_TRUE(made.ok()) << made.status().ToString();
    sharding::ShardStoreOptions so;
    so.shard_size = 32;
    auto store = sharding::ShardStore::Open((root_ / "store").string(), so);
    ASSERT_TRUE(store.ok()) << store.status().ToString();
    sharding::IngestOptions io;
    io.sources = made->files;
    io.threads = 1;
    auto report = sharding::Ingest(**store, io);
    ASSERT_TRUE(report.ok()) << report.status().ToString();
    ASSERT_EQ((*store)->num_samples(), 120u);
  }
  static void TearDownTestSuite() {
    if (!::testing::Test::HasFailure()) fs::remove_all(root_);
  }

  static std::string WriteJob(const std::string& name, const JobParams& p) {
    const std::string path = (root_ / (name + ".yaml")).string();
    std::ofstream(path) << fmt::format(R"(name: {0}
seed: 42
model:
  vision: {{image_size: 32, patch_size: 8, hidden: 32, layers: 2, heads: 4, intermediate: 64}}
  qformer: {{num_queries: 4, hidden: 32, layers: 2, heads: 4, intermediate: 64}}
  projector: {{kind: linear}}
  llm: {{kind: opt, vocab_size: 264, hidden: 32, layers: 2, heads: 4, intermediate: 64, max_positions: 128}}
data:
  stores: [{1}]
  template: blip2_caption
  tokenizer: {{kind: byte}}
  max_len: 64
  workers: 1
  shuffle_window: 64
stages:
  - name: train
    trainable: ["*"]
    optimizer: {{lr: 3.0e-3, weight_decay: 0.05}}
    schedule: {{kind: cosine, warmup_steps: 2, min_lr: 1.0e-4}}
    steps: {2}
    batch_size: {3}
    clip_grad_norm: 1.0
    checkpoint: {{every_steps: {4}, keep: 5}}
{5})",
                                       name, p.store, p.steps, p.batch, p.every, p.extra_stage);
    return path;
  }

  // Runs vlorch-worker under ops/mpirun.sh; returns its exit code, output in *log.
  static int Run(int np, const std::string& job, const std::string& run_dir, const std::string& env = "",
                 std::string* log = nullptr) {
    const fs::path out = root_ / "last-run.log";
    const std::string cmd =
        fmt::format("env VLORCH_OVERSUBSCRIBE=1 {} {}/ops/mpirun.sh -np {} {} --job {} --run-dir {} --trace-samples "
                    "--collective-timeout 60 > {} 2>&1",
                    env, VLORCH_SOURCE_DIR, np, VLORCH_WORKER, job, run_dir, out.string());
    const int rc = std::system(cmd.c_str());
    if (log) *log = ReadAll(out);
    return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
  }

  static fs::path Ckpt(const std::string& run, int step) {
    return root_ / run / "stages" / "train" / "checkpoints" / fmt::format("step-{:08d}", step);
  }

  // (step, key) pairs every rank traced.
  static std::set<std::pair<int, std::string>> Trained(const std::string& run) {
    std::set<std::pair<int, std::string>> out;
    for (const auto& e : fs::directory_iterator(root_ / run / "stages" / "train" / "trace")) {
      std::ifstream in(e.path());
      int step;
      std::string key;
      while (in >> step >> key) out.emplace(step, key);
    }
    return out;
  }

  // The uninterrupted reference run (np 2), made once.
  static const std::string& Reference() {
    static const std::string run = [] {
      const std::string job = WriteJob("ref", JobParams{});
      std::string log;
      EXPECT_EQ(Run(2, job, (root_ / "ref").string(), "", &log), 0) << log;
      return std::string("ref");
    }();
    return run;
  }

  static void ExpectSameFinalState(const std::string& run, int step) {
    for (const char* f : {"model.safetensors", "optimizer.safetensors"}) {
      const std::string a = ReadAll(Ckpt(Reference(), step) / f), b = ReadAll(Ckpt(run, step) / f);
      ASSERT_FALSE(a.empty());
      EXPECT_TRUE(a == b) << f << " differs from the uninterrupted run's";
    }
  }

  static fs::path root_;
};
fs::path MpirunTrain::root_;

double MaxAbsDiff(const fs::path& a, const fs::path& b, std::string* worst) {
  auto ta = checkpoint::ReadTensors(a.string(), nullptr), tb = checkpoint::ReadTensors(b.string(), nullptr);
  EXPECT_TRUE(ta.ok() && tb.ok());
  double m = 0;
  for (size_t i = 0; i < ta->size(); ++i) {
    EXPECT_EQ((*ta)[i].first, (*tb)[i].first);
    const double d = ((*ta)[i].second - (*tb)[i].second).abs().max().item<double>();
    if (d > m) m = d, *worst = (*ta)[i].first;
  }
  return m;
}

// np = 4 with per-rank batch 2 trains like np = 1 with batch 8: the loss is normalised by
// the global label-token count and gradients are summed, so only float summation order
// differs (rank-local sums, then the all-reduce). After 6 AdamW steps at lr 3e-3 on weights
// of scale 0.02 that rounding stays below 1e-5 in every tensor; any real difference (a lost
// or doubled gradient, a wrong normalisation, another data order) moves weights by ~lr.
TEST_F(MpirunTrain, FourRanksTrainLikeOneRankWithTheGlobalBatch) {
  JobParams one, four;
  one.steps = four.steps = 6;
  one.batch = 8;
  four.batch = 2;
  std::string log;
  ASSERT_EQ(Run(1, WriteJob("dp1", one), (root_ / "dp1").string(), "", &log), 0) << log;
  ASSERT_EQ(Run(4, WriteJob("dp4", four), (root_ / "dp4").string(), "", &log), 0) << log;
  std::string worst;
  const double diff = MaxAbsDiff(Ckpt("dp1", 6) / "model.safetensors", Ckpt("dp4", 6) / "model.safetensors", &worst);
  std::printf("dp=1 x 8 vs dp=4 x 2 after 6 steps: max |dw| = %.3g (%s)\n", diff, worst.c_str());
  EXPECT_LT(diff, 1e-5) << worst;
  // And the weights did move: the comparison is not of two untouched models.
  const double moved = MaxAbsDiff(Ckpt("dp1", 6) / "model.safetensors", Ckpt("dp1", 4) / "model.safetensors", &worst);
  EXPECT_GT(moved, 1e-4);
  EXPECT_EQ(Trained("dp1"), Trained("dp4"));
}

TEST_F(MpirunTrain, KillNineOfOneRankThenResumeEndsBitwiseIdentical) {
  const std::string job = WriteJob("kill", JobParams{});
  std::string log;
  EXPECT_NE(Run(2, job, (root_ / "kill").string(), "VLORCH_FAULT=kill:rank=1:step=6", &log), 0) << log;
  EXPECT_NE(log.find("VLORCH_FAULT point reached, sending SIGKILL"), std::string::npos) << log;
  EXPECT_FALSE(fs::exists(root_ / "kill" / "stages" / "train" / "state.json"));
  ASSERT_EQ(Run(2, job, (root_ / "kill").string(), "", &log), 0) << log;
  EXPECT_NE(log.find("resuming from"), std::string::npos) << log;
  EXPECT_NE(log.find("(step 4)"), std::string::npos) << log;
  ExpectSameFinalState("kill", 12);
  EXPECT_EQ(Trained("kill"), Trained(Reference()));
}

TEST_F(MpirunTrain, CrashDuringCheckpointWriteResumesFromThePreviousOne) {
  const std::string job = WriteJob("crash", JobParams{});
  std::string log;
  EXPECT_NE(Run(2, job, (root_ / "crash").string(), "VLORCH_FAULT=kill:rank=0:step=8:during=checkpoint-write", &log), 0)
      << log;
  const fs::path ck = root_ / "crash" / "stages" / "train" / "checkpoints";
  EXPECT_TRUE(fs::exists(ck / ".tmp-step-00000008" / "model.safetensors"));  // half written
  EXPECT_FALSE(fs::exists(ck / "step-00000008"));
  EXPECT_EQ(ReadAll(ck / "latest"), "step-00000004\n");
  ASSERT_EQ(Run(2, job, (root_ / "crash").string(), "", &log), 0) << log;
  EXPECT_NE(log.find("(step 4)"), std::string::npos) << log;
  EXPECT_FALSE(fs::exists(ck / ".tmp-step-00000008"));
  ExpectSameFinalState("crash", 12);
}

// The run directory on a small filesystem made here (a tmpfs; mounting needs root, and the
// test says so and skips elsewhere). A first run is stopped after step 6 (step 4 committed);
// the filesystem is then filled until half a checkpoint is left. The resumed run fails at
// step 8's save with an error naming the checkpoint directory, the space it needs and the
// space free, and leaves step 4 committed and no partial save. Once the filler is gone the
// same command resumes from step 4 and ends bitwise identical to the uninterrupted run.
TEST_F(MpirunTrain, DiskFullAtACheckpointFailsWithTheSpaceNeededThenResumesWhenSpaceReturns) {
  const fs::path mnt = root_ / "small-fs";
  test_support::SmallFilesystem small(mnt, "size=32m");
  if (!small.ok()) GTEST_SKIP() << small.why();
  const std::string job = WriteJob("full", JobParams{});
  const std::string run = "small-fs/run";
  std::string log;
  EXPECT_NE(Run(2, job, (root_ / run).string(), "VLORCH_FAULT=kill:rank=1:step=6", &log), 0) << log;
  const fs::path ck = root_ / run / "stages" / "train" / "checkpoints";
  ASSERT_TRUE(fs::exists(Ckpt(run, 4) / "manifest.json")) << log;
  uint64_t ckpt_bytes = 0;
  for (const auto& e : fs::directory_iterator(Ckpt(run, 4))) ckpt_bytes += fs::file_size(e.path());

  // Leave half a checkpoint free.
  struct statvfs st;
  ASSERT_EQ(::statvfs(mnt.c_str(), &st), 0);
  const uint64_t free_bytes = uint64_t{st.f_bavail} * st.f_frsize;
  ASSERT_GT(free_bytes, ckpt_bytes);
  const fs::path filler = mnt / "filler";
  {
    const int fd = ::open(filler.c_str(), O_CREAT | O_WRONLY, 0644);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(::posix_fallocate(fd, 0, static_cast<off_t>(free_bytes - ckpt_bytes / 2)), 0);
    ::close(fd);
  }
  EXPECT_EQ(Run(2, job, (root_ / run).string(), "", &log), 4) << log;  // out of space: not worth a restart
  EXPECT_NE(log.find("checkpoint step 8 of stage 'train' needs"), std::string::npos) << log;
  EXPECT_NE(log.find("on the filesystem of " + ck.string() + ", which has"), std::string::npos) << log;
  EXPECT_NE(log.find("resume the job"), std::string::npos) << log;
  EXPECT_FALSE(fs::exists(ck / ".tmp-step-00000008"));
  EXPECT_FALSE(fs::exists(ck / "step-00000008"));
  EXPECT_EQ(ReadAll(ck / "latest"), "step-00000004\n");

  fs::remove(filler);
  ASSERT_EQ(Run(2, job, (root_ / run).string(), "", &log), 0) << log;
  EXPECT_NE(log.find("(step 4)"), std::string::npos) << log;
  ExpectSameFinalState(run, 12);
}

TEST_F(MpirunTrain, DamagedNewestCheckpointIsSkippedWithAMessage) {
  const std::string job = WriteJob("damaged", JobParams{});
  std::string log;
  EXPECT_NE(Run(2, job, (root_ / "damaged").string(), "VLORCH_FAULT=kill:rank=1:step=9", &log), 0) << log;
  const fs::path m = Ckpt("damaged", 8) / "model.safetensors";
  ASSERT_TRUE(fs::exists(m));
  fs::resize_file(m, fs::file_size(m) - 10);
  ASSERT_EQ(Run(2, job, (root_ / "damaged").string(), "", &log), 0) << log;
  EXPECT_NE(log.find("skipping damaged checkpoint step-00000008"), std::string::npos) << log;
  EXPECT_NE(log.find("(step 4)"), std::string::npos) << log;
  ExpectSameFinalState("damaged", 12);
}

TEST_F(MpirunTrain, SigtermFinishesTheStepCommitsAndExitsZero) {
  const std::string job = WriteJob("term", JobParams{});
  std::string log;
  // Only rank 0 gets the signal (after step 3); the stop vote in the next step's first
  // all-reduce brings rank 1 along, so both stop after step 4.
  ASSERT_EQ(Run(2, job, (root_ / "term").string(), "VLORCH_FAULT=term:rank=0:step=3", &log), 0) << log;
  EXPECT_NE(log.find("preempted after step 4"), std::string::npos) << log;
  EXPECT_TRUE(fs::exists(Ckpt("term", 4) / "manifest.json"));
  EXPECT_FALSE(fs::exists(root_ / "term" / "stages" / "train" / "state.json"));
  ASSERT_EQ(Run(2, job, (root_ / "term").string(), "", &log), 0) << log;
  ExpectSameFinalState("term", 12);
  // A finished stage is not re-run.
  ASSERT_EQ(Run(2, job, (root_ / "term").string(), "", &log), 0) << log;
  EXPECT_NE(log.find("already done"), std::string::npos) << log;
}

TEST_F(MpirunTrain, DamagedShardRecordIsSkippedNotFatal) {
  fs::copy(root_ / "store", root_ / "bad-store", fs::copy_options::recursive);
  fs::path blob;
  for (const auto& e : fs::directory_iterator(root_ / "bad-store"))
    if (e.path().extension() == ".blob" && (blob.empty() || e.file_size() > fs::file_size(blob))) blob = e.path();
  ASSERT_FALSE(blob.empty()) << "the store keeps images in blob files";
  {
    std::fstream f(blob, std::ios::in | std::ios::out | std::ios::binary);
    const auto at = static_cast<std::streamoff>(fs::file_size(blob) / 2);
    f.seekg(at);
    char c;
    f.read(&c, 1);
    c ^= 0x5a;
    f.seekp(at);
    f.write(&c, 1);
  }
  JobParams p;
  p.store = "bad-store";
  p.steps = 15;  // one epoch: every sample is read
  p.every = 100;
  std::string log;
  ASSERT_EQ(Run(2, WriteJob("badshard", p), (root_ / "badshard").string(), "", &log), 0) << log;
  EXPECT_NE(log.find("skipping sample"), std::string::npos) << log;
  EXPECT_NE(log.find("bad-store"), std::string::npos) << log;
  const auto trained = Trained("badshard");
  EXPECT_GE(trained.size(), 110u);
  EXPECT_LT(trained.size(), 120u);
}

TEST_F(MpirunTrain, BadInputExitsTwoWithTheReason) {
  JobParams p;
  p.extra_stage = "    init: {weights: [{path: nowhere.safetensors}]}\n";
  std::string log;
  EXPECT_EQ(Run(2, WriteJob("badinit", p), (root_ / "badinit").string(), "", &log), 2) << log;
  EXPECT_NE(log.find("nowhere.safetensors do not exist"), std::string::npos) << log;
}

// A second writer on a run directory (here this test process holds its lock, as a running
// job's rank 0 would) stops before touching it: exit code 2 and the holder's pid and host.
TEST_F(MpirunTrain, SecondWriterOnALockedRunDirExitsTwoNamingTheHolder) {
  const std::string run = (root_ / "locked").string();
  auto lock = checkpoint::RunDirLock::Acquire(run, "the test, standing in for a running job");
  ASSERT_TRUE(lock.ok()) << lock.status().ToString();
  std::string log;
  EXPECT_EQ(Run(2, WriteJob("locked", JobParams{}), run, "", &log), 2) << log;
  EXPECT_NE(log.find(fmt::format("is in use by another writer: pid {} on host {}", ::getpid(), HostName())),
            std::string::npos)
      << log;
  // Rank 1 learns it from rank 0 at once instead of timing out in its first collective.
  EXPECT_NE(log.find("rank 0 could not take the lock of run directory"), std::string::npos) << log;
  EXPECT_EQ(log.find("TimedOut"), std::string::npos) << log;
  EXPECT_FALSE(fs::exists(root_ / "locked" / "stages" / "train" / "checkpoints")) << "the second writer wrote";
}

}  // namespace
}  // namespace vlorch
