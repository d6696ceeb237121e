// The tiny VPGTrans recipe (jobs/recipes/vpgtrans-tiny.yaml) end to end under mpirun -np 2:
// what each stage may and may not change, the projector's 5x learning rate in stage 1, the
// transform's fused projector, and kill -9 in a training stage, in the transform and in its
// commit: re-running the job resumes where it was, never re-runs a sealed stage, and ends with
// the bytes of an uninterrupted run.
#include <sys/wait.h>

#include <filesystem>
#include <fstream>
#include <map>

#include <fmt/format.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include "jobs/job_state.h"
#include "sharding/dataset_gen.h"
#include "sharding/ingest.h"
#include "sharding/shard_store.h"
#include "worker/checkpoint/checkpoint.h"
#include "worker/transforms/transfer_vpg.h"

namespace vlorch {
namespace {
namespace fs = std::filesystem;

const char* const kStages[] = {"source_lm", "target_lm", "source_vpg", "transfer", "projector_warmup", "vpg_train"};

std::string ReadAll(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

void Ingest(const std::vector<std::string>& files, sharding::SourceFormat format, const fs::path& store_dir,
            uint64_t expect) {
  sharding::ShardStoreOptions so;
  so.shard_size = 64;
  auto store = sharding::ShardStore::Open(store_dir.string(), so);
  ASSERT_TRUE(store.ok()) << store.status().ToString();
  sharding::IngestOptions io;
  io.sources = files;
  io.format = format;
  io.threads = 1;
  auto report = sharding::Ingest(**store, io);
  ASSERT_TRUE(report.ok()) << report.status().ToString();
  ASSERT_EQ((*store)->num_samples(), expect);
}

class MpirunVpgTrans : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    root_ = fs::temp_directory_path() / fmt::format("vlorch-vpgtrans-{}", ::getpid());
    fs::remove_all(root_);
    sharding::Img2DatasetGenOptions g;
    g.dir = (root_ / "data" / "src").string();
    g.shards = 2, g.per_shard = 32, g.bad_cases = false, g.failed_downloads = 0, g.min_px = 32, g.max_px = 48;
    g.grounded = true;
    auto images = sharding::MakeImg2Dataset(g);
    ASSERT_TRUE(images.ok()) << images.status().ToString();
    Ingest(images->files, sharding::SourceFormat::kImg2Dataset, root_ / "data" / "captions", 64);
    sharding::JsonlGenOptions t;
    t.path = (root_ / "data" / "text.jsonl").string();
    t.lines = 256, t.bad_cases = false, t.grounded = true;
    auto text = sharding::MakeJsonl(t);
    ASSERT_TRUE(text.ok()) << text.status().ToString();
    Ingest(text->files, sharding::SourceFormat::kJsonl, root_ / "data" / "text", 256);
    fs::copy_file(fs::path(VLORCH_SOURCE_DIR) / "jobs" / "recipes" / "vpgtrans-tiny.yaml", root_ / "job.yaml");
  }
  static void TearDownTestSuite() {
    if (!::testing::Test::HasFailure()) fs::remove_all(root_);
  }

  static int Run(const std::string& run, const std::string& env, std::string* log) {
    const fs::path out = root_ / "last-run.log";
    const std::string cmd = fmt::format(
        "env VLORCH_OVERSUBSCRIBE=1 {} {}/ops/mpirun.sh -np 2 {} --job {} --run-dir {} --collective-timeout 60 > {} 2>&1",
        env, VLORCH_SOURCE_DIR, VLORCH_WORKER, (root_ / "job.yaml").string(), (root_ / run).string(), out.string());
    const int rc = std::system(cmd.c_str());
    *log = ReadAll(out);
    return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
  }

  static const std::string& Reference() {
    static const std::string run = [] {
      std::string log;
      EXPECT_EQ(Run("ref", "", &log), 0) << log;
      return std::string("ref");
    }();
    return run;
  }

  static fs::path Sealed(const std::string& run, const std::string& stage) {
    auto seal = ReadStageSeal((root_ / run).string(), stage);
    EXPECT_TRUE(seal.ok() && seal->has_value()) << run << "/" << stage << " is not sealed";
    return seal.ok() && seal->has_value() ? fs::path((*seal)->checkpoint) : fs::path();
  }

  static std::map<std::string, torch::Tensor> Model(const std::string& run, const std::string& stage) {
    auto t = checkpoint::ReadTensors((Sealed(run, stage) / "model.safetensors").string(), nullptr);
    EXPECT_TRUE(t.ok()) << t.status().ToString();
    std::map<std::string, torch::Tensor> out;
    if (t.ok())
      for (auto& [n, v] : *t) out[n] = v;
    return out;
  }

  // Names (with `prefix`) whose tensors differ between a and b.
  static std::vector<std::string> Changed(const std::map<std::string, torch::Tensor>& a,
                                          const std::map<std::string, torch::Tensor>& b, const std::string& prefix) {
    std::vector<std::string> out;
    for (const auto& [n, t] : a)
      if (n.rfind(prefix, 0) == 0 && (!b.count(n) || !torch::equal(t, b.at(n)))) out.push_back(n);
    return out;
  }
  static size_t Count(const std::map<std::string, torch::Tensor>& a, const std::string& prefix) {
    size_t n = 0;
    for (const auto& [name, t] : a) n += name.rfind(prefix, 0) == 0;
    return n;
  }

  static inline fs::path root_;
};

TEST_F(MpirunVpgTrans, EachStageChangesOnlyWhatItTrains) {
  const std::string& ref = Reference();
  const auto src = Model(ref, "source_vpg"), lm = Model(ref, "target_lm"), xfer = Model(ref, "transfer");
  const auto warm = Model(ref, "projector_warmup"), final = Model(ref, "vpg_train");
  ASSERT_FALSE(xfer.empty());

  // The transform: vision encoder and VPG from the source, the LLM from target_lm, and the
  // projector = converter . source projector, with the converter it committed.
  for (const char* p : {"vision_model.", "qformer.", "query_tokens"}) {
    EXPECT_TRUE(Changed(xfer, src, p).empty()) << p << " differs from the source VPG";
    EXPECT_GT(Count(xfer, p), 0u);
  }
  EXPECT_TRUE(Changed(xfer, lm, "language_model.").empty());
  auto converter = checkpoint::FindLatest((root_ / ref / "stages" / "transfer" / "converter").string(), nullptr);
  ASSERT_TRUE(converter.ok() && converter->has_value());
  auto conv = checkpoint::ReadTensors((fs::path((*converter)->path) / "model.safetensors").string(), nullptr);
  ASSERT_TRUE(conv.ok());
  std::map<std::string, torch::Tensor> c, src_proj;
  for (auto& [n, t] : *conv) c[n] = t;
  for (const auto& [n, t] : src)
    if (n.rfind("language_projection", 0) == 0) src_proj[n] = t;
  auto fused = transforms::FuseProjector(ProjectorKind::kLinear, src_proj, c["converter.weight"], c["converter.bias"]);
  ASSERT_TRUE(fused.ok());
  EXPECT_TRUE(torch::equal(fused->at("language_projection.weight"), xfer.at("language_projection.weight")));
  EXPECT_TRUE(torch::equal(fused->at("language_projection.bias"), xfer.at("language_projection.bias")));
  EXPECT_EQ(xfer.at("language_projection.weight").size(0), 64);  // the target LLM's width

  // Stage 1: only the projector moves, at 5x the base learning rate.
  EXPECT_EQ(Changed(warm, xfer, "").size(), 2u);
  EXPECT_EQ(Changed(warm, xfer, "language_projection.").size(), 2u);
  std::ifstream metrics(root_ / ref / "stages" / "projector_warmup" / "metrics.jsonl");
  std::string line;
  int lines = 0;
  while (std::getline(metrics, line)) {
    const auto j = nlohmann::json::parse(line);
    EXPECT_DOUBLE_EQ(j["lr"].get<double>(), 1e-3);
    EXPECT_DOUBLE_EQ(j["lr_by_module"]["language_projection"].get<double>(), 5e-3);
    EXPECT_EQ(j["lr_by_module"].size(), 1u);
    ++lines;
  }
  EXPECT_EQ(lines, 2);  // one epoch: 64 samples / (2 ranks x 16)

  // Stage 2: VPG and projector move, the LLM never does.
  EXPECT_TRUE(Changed(final, warm, "language_model.").empty());
  EXPECT_TRUE(Changed(final, lm, "language_model.").empty());
  EXPECT_FALSE(Changed(final, warm, "qformer.").empty());
  EXPECT_FALSE(Changed(final, warm, "query_tokens").empty());
  EXPECT_FALSE(Changed(final, warm, "language_projection.").empty());

  // Running the finished job again re-runs nothing.
  std::map<std::string, std::string> before;
  for (const char* s : kStages) before[s] = ReadAll(root_ / ref / "stages" / s / "metrics.jsonl");
  std::string log;
  ASSERT_EQ(Run(ref, "", &log), 0) << log;
  for (const char* s : kStages) {
    EXPECT_NE(log.find(fmt::format("stage '{}' is already done", s)), std::string::npos) << s << "\n" << log;
    EXPECT_EQ(ReadAll(root_ / ref / "stages" / s / "metrics.jsonl"), before[s]) << s;
  }
}

TEST_F(MpirunVpgTrans, KilledAnywhereResumesToTheSameBytes) {
  const std::string& ref = Reference();
  struct Kill {
    std::string fault;
    std::vector<std::string> sealed_before;  // must not run again in this attempt
    std::string expect_in_log;               // proof of resuming, when there is something to resume
  };
  const std::vector<Kill> kills = {
      {"kill:rank=1:stage=source_vpg:step=5", {}, ""},
      {"kill:rank=1:stage=transfer:step=30", {"source_lm", "target_lm"}, "stage 'source_vpg': resuming from"},
      {"kill:rank=0:stage=transfer:during=commit", {"source_lm", "target_lm", "source_vpg"},
       "resuming the converter fit from"},
      {"kill:rank=0:stage=projector_warmup:step=1", {"source_vpg"}, "resuming the converter fit from"},
      {"kill:rank=1:stage=vpg_train:step=4", {"source_vpg", "transfer"}, ""},
      {"", {"source_vpg", "transfer", "projector_warmup"}, "stage 'vpg_train': resuming from"},
  };
  const std::string run = "killed";
  for (const Kill& k : kills) {
    std::string log;
    const int rc = Run(run, k.fault.empty() ? "" : "VLORCH_FAULT=" + k.fault, &log);
    if (k.fault.empty()) {
      ASSERT_EQ(rc, 0) << log;
    } else {
      ASSERT_NE(rc, 0) << k.fault << " did not fire:\n" << log;
    }
    for (const auto& s : k.sealed_before)
      EXPECT_NE(log.find(fmt::format("stage '{}' is already done", s)), std::string::npos)
          << s << " ran again with " << k.fault << "\n" << log;
    if (!k.expect_in_log.empty()) {
      EXPECT_NE(log.find(k.expect_in_log), std::string::npos) << "with " << k.fault << "\n" << log;
    }
  }
  for (const char* s : kStages) {
    const std::string a = ReadAll(Sealed(ref, s) / "model.safetensors"), b = ReadAll(Sealed(run, s) / "model.safetensors");
    ASSERT_FALSE(a.empty()) << s;
    EXPECT_TRUE(a == b) << s << ": model differs from the uninterrupted run's";
  }
}

}  // namespace
}  // namespace vlorch
