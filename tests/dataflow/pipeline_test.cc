// The pipeline on a real store built from generated CC595K data: exact resume from a
// cursor (same keys, same tensors), dp = 2 ranks covering an epoch exactly once, metrics.
#include "dataflow/pipeline.h"

#include <unistd.h>

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <climits>
#include <map>
#include <set>

#include "sharding/dataset_gen.h"
#include "sharding/ingest.h"
#include "tests/dataflow/byte_tokenizer.h"

namespace vlorch::dataflow {
namespace {

const std::string& Store() {
  static std::string dir = [] {
    std::string root = ::testing::TempDir() + "/pipeline_" + std::to_string(getpid());
    EXPECT_EQ(std::system(("rm -rf " + root).c_str()), 0);
    sharding::LlavaGenOptions g;
    g.dir = root + "/cc";
    g.records = 120;
    g.min_px = 16;
    g.max_px = 48;
    g.bad_cases = false;
    EXPECT_TRUE(sharding::MakeLlava(g).ok());
    sharding::ShardStoreOptions so;
    so.shard_size = 16;
    auto store = sharding::ShardStore::Open(root + "/store", so);
    EXPECT_TRUE(store.ok());
    sharding::IngestOptions io;
    io.format = sharding::SourceFormat::kLlava;
    io.sources = {g.dir};
    EXPECT_TRUE(sharding::Ingest(**store, io).ok());
    return root + "/store";
  }();
  return dir;
}

const testing::ByteTokenizer kTok;

PipelineOptions Options(int dp, int rank, const Cursor& start = {}) {
  PipelineOptions o;
  o.stores = {Store()};
  o.seed = 7;
  o.shuffle_window = 32;
  o.dp = dp;
  o.rank = rank;
  o.batch_size = 5;
  o.prompt_template = *BuiltinTemplate("tinygpt_v");
  o.prompt_template.image_tokens = 4;
  o.prompt_template.bos_id = 1;
  o.prompt_template.eos_id = 2;
  o.tokenizer = &kTok;
  o.collate.image.size = 16;
  o.workers = 2;
  o.prefetch = 3;
  o.start = start;
  return o;
}

std::vector<PipelineBatch> Take(DataPipeline& p, int n) {
  std::vector<PipelineBatch> out;
  for (int i = 0; i < n; ++i) {
    auto b = p.Next();
    EXPECT_TRUE(b.ok()) << b.status().ToString();
    out.push_back(std::move(b).value());
  }
  return out;
}

void ExpectSameBatch(const PipelineBatch& a, const PipelineBatch& b, int step) {
  EXPECT_EQ(a.batch.keys, b.batch.keys) << "step " << step;
  EXPECT_TRUE(at::equal(a.batch.input_ids, b.batch.input_ids)) << "step " << step;
  EXPECT_TRUE(at::equal(a.batch.labels, b.batch.labels)) << "step " << step;
  EXPECT_TRUE(at::equal(a.batch.images, b.batch.images)) << "step " << step;
  EXPECT_TRUE(at::equal(a.batch.image_positions, b.batch.image_positions)) << "step " << step;
  EXPECT_EQ(a.cursor_after, b.cursor_after) << "step " << step;
}

TEST(PipelineTest, ResumeFromACursorGivesExactlyTheRemainingBatches) {
  auto full = DataPipeline::Open(Options(1, 0));
  ASSERT_TRUE(full.ok()) << full.status().ToString();
  auto all = Take(**full, 10);
  Cursor saved;
  {
    auto first = DataPipeline::Open(Options(1, 0));
    ASSERT_TRUE(first.ok());
    auto head = Take(**first, 4);
    for (int i = 0; i < 4; ++i) ExpectSameBatch(head[i], all[i], i);
    saved = *Cursor::Parse(head[3].cursor_after.Serialize());  // as a checkpoint stores it
  }  // the first pipeline is destroyed mid-prefetch, like a killed run
  auto resumed = DataPipeline::Open(Options(1, 0, saved));
  ASSERT_TRUE(resumed.ok());
  auto tail = Take(**resumed, 6);
  for (int i = 0; i < 6; ++i) ExpectSameBatch(tail[i], all[4 + i], 4 + i);
  EXPECT_EQ(all[0].batch.input_ids.size(0), 5);
  EXPECT_EQ(all[0].batch.images.sizes(), (std::vector<int64_t>{5, 3, 16, 16}));
}

TEST(PipelineTest, TwoRanksCoverTheEpochExactlyOnce) {
  auto r0 = DataPipeline::Open(Options(2, 0));
  auto r1 = DataPipeline::Open(Options(2, 1));
  ASSERT_TRUE(r0.ok() && r1.ok());
  sharding::ShardStoreOptions ro;
  ro.read_only = true;
  const uint64_t n = (*sharding::ShardStore::Open(Store(), ro))->num_samples();
  std::map<std::string, int> seen;
  Cursor c0, c1;
  while (c0.taken.empty() || c0.taken[0] < n) {
    auto a = (*r0)->Next();
    auto b = (*r1)->Next();
    ASSERT_TRUE(a.ok() && b.ok());
    EXPECT_EQ(a->cursor_after, b->cursor_after) << "both ranks must agree on the cursor";
    for (const auto& k : a->batch.keys) ++seen[k];
    for (const auto& k : b->batch.keys) ++seen[k];
    c0 = a->cursor_after;
  }
  EXPECT_EQ(seen.size(), n);
  for (const auto& [k, times] : seen) EXPECT_EQ(times, 1) << k;
  auto m = (*r0)->metrics();
  EXPECT_GT(m.batches, 0u);
  EXPECT_GT(m.samples, 0u);
  EXPECT_LE(m.queue_depth, 3);
  EXPECT_GE(m.wait_seconds, 0.0);
  EXPECT_EQ(m.skipped_images + m.skipped_samples, 0u);
}

// Checkpoint a dp = 2 run after 3 steps, resume at dp = 4 (and a dp = 4 run at dp = 1) with
// real pipelines: every sample of the epoch is trained on exactly once across both phases.
TEST(PipelineTest, ResumeAtAnotherDpSizeCoversTheEpochExactlyOnce) {
  sharding::ShardStoreOptions ro;
  ro.read_only = true;
  const uint64_t n = (*sharding::ShardStore::Open(Store(), ro))->num_samples();
  for (auto [dp1, dp2] : {std::pair<int, int>{2, 4}, std::pair<int, int>{4, 1}}) {
    std::map<std::string, int> seen;
    // Runs `dp` ranks for `steps` steps (0: to the end of the epoch) from `start`.
    auto run = [&](int dp, const Cursor& start, int steps) {
      std::vector<std::unique_ptr<DataPipeline>> ranks;
      for (int r = 0; r < dp; ++r) ranks.push_back(std::move(DataPipeline::Open(Options(dp, r, start))).value());
      Cursor c = start;
      for (int t = 0; steps == 0 ? (c.taken.empty() || c.taken[0] < n) : t < steps; ++t) {
        Cursor agreed;
        for (int r = 0; r < dp; ++r) {
          auto b = ranks[r]->Next();
          EXPECT_TRUE(b.ok());
          for (const auto& k : b->batch.keys) ++seen[k];
          if (r == 0) agreed = b->cursor_after;
          else EXPECT_EQ(b->cursor_after, agreed);
        }
        c = agreed;
      }
      return c;
    };
    Cursor checkpoint = run(dp1, Cursor(), 3);
    EXPECT_GT(checkpoint.taken[0], 0u);
    EXPECT_LT(checkpoint.taken[0], n);
    run(dp2, *Cursor::Parse(checkpoint.Serialize()), 0);
    EXPECT_EQ(seen.size(), n) << "dp " << dp1 << " -> " << dp2;
    for (const auto& [k, times] : seen) EXPECT_EQ(times, 1) << k << " (dp " << dp1 << " -> " << dp2 << ")";
  }
}

int64_t RealTokens(const Batch& b) { return b.keys.empty() ? 0 : b.attention_mask.sum().item<int64_t>(); }

// Token balancing moves samples between the ranks of a step and nothing else: each step
// consumes the same samples with the same per-rank counts as contiguous placement, and the
// ranks' token counts end up much closer (this store's samples range over ~2x in length).
TEST(PipelineTest, TokenBalancingKeepsEachStepsSamplesAndEvensTheRanksTokens) {
  for (int dp : {2, 3}) {
    std::vector<std::unique_ptr<DataPipeline>> bal, plain;
    for (int r = 0; r < dp; ++r) {
      PipelineOptions o = Options(dp, r);
      bal.push_back(std::move(DataPipeline::Open(o)).value());
      o.balance_tokens = false;
      plain.push_back(std::move(DataPipeline::Open(o)).value());
    }
    int64_t spread_bal = 0, spread_plain = 0;
    for (int t = 0; t < 6; ++t) {
      std::multiset<std::string> keys_bal, keys_plain;
      int64_t lo_b = INT64_MAX, hi_b = 0, lo_p = INT64_MAX, hi_p = 0;
      for (int r = 0; r < dp; ++r) {
        auto b = bal[r]->Next();
        auto p = plain[r]->Next();
        ASSERT_TRUE(b.ok() && p.ok());
        EXPECT_EQ(b->cursor_after, p->cursor_after) << "step " << t;
        EXPECT_EQ(b->batch.keys.size(), p->batch.keys.size()) << "rank " << r << " step " << t;
        keys_bal.insert(b->batch.keys.begin(), b->batch.keys.end());
        keys_plain.insert(p->batch.keys.begin(), p->batch.keys.end());
        lo_b = std::min(lo_b, RealTokens(b->batch)), hi_b = std::max(hi_b, RealTokens(b->batch));
        lo_p = std::min(lo_p, RealTokens(p->batch)), hi_p = std::max(hi_p, RealTokens(p->batch));
      }
      EXPECT_EQ(keys_bal, keys_plain) << "dp " << dp << " step " << t;
      spread_bal += hi_b - lo_b;
      spread_plain += hi_p - lo_p;
    }
    EXPECT_GT(spread_plain, 0);
    EXPECT_LT(spread_bal * 3, spread_plain) << "dp " << dp << ": balanced " << spread_bal << " vs contiguous " << spread_plain;
  }
}

TEST(PipelineTest, BadOptionsAreErrors) {
  auto o = Options(2, 2);
  EXPECT_EQ(DataPipeline::Open(o).status().code(), StatusCode::kInvalidArgument);
  o = Options(1, 0);
  o.tokenizer = nullptr;
  EXPECT_EQ(DataPipeline::Open(o).status().code(), StatusCode::kInvalidArgument);
  o = Options(1, 0);
  o.stores = {"/nonexistent/store"};
  EXPECT_EQ(DataPipeline::Open(o).status().code(), StatusCode::kNotFound);
}

}  // namespace
}  // namespace vlorch::dataflow
