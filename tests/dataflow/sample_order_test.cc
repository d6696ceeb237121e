#include "dataflow/sample_order.h"

#include <algorithm>
#include <cstdint>
#include <map>
#include <random>
#include <set>

#include <gtest/gtest.h>

namespace vlorch::dataflow {
namespace {

OrderOptions Opts(uint64_t n, uint64_t shard, uint64_t window, uint64_t seed) {
  OrderOptions o;
  o.num_samples = n;
  o.shard_size = shard;
  o.window = window;
  o.seed = seed;
  return o;
}

TEST(SampleOrderTest, EachEpochIsAPermutationAndEpochsDiffer) {
  for (uint64_t n : {1ull, 7ull, 100ull, 1001ull}) {
    auto order = SampleOrder::Create(Opts(n, 64, 50, 9));
    ASSERT_TRUE(order.ok());
    std::vector<uint64_t> e0, e1;
    for (uint64_t p = 0; p < n; ++p) {
      e0.push_back(order->At(0, p));
      e1.push_back(order->At(1, p));
    }
    std::set<uint64_t> s0(e0.begin(), e0.end()), s1(e1.begin(), e1.end());
    EXPECT_EQ(s0.size(), n);
    EXPECT_EQ(s1.size(), n);
    EXPECT_EQ(*s0.rbegin(), n - 1);
    if (n > 10) {
      EXPECT_NE(e0, e1) << "epochs must be shuffled differently";
    }
  }
}

TEST(SampleOrderTest, DeterministicAndSeeded) {
  auto a = *SampleOrder::Create(Opts(5000, 128, 300, 1));
  auto b = *SampleOrder::Create(Opts(5000, 128, 300, 1));
  auto c = *SampleOrder::Create(Opts(5000, 128, 300, 2));
  int same_c = 0;
  for (uint64_t p = 0; p < 5000; p += 7) {
    EXPECT_EQ(a.At(3, p), b.At(3, p));
    same_c += a.At(3, p) == c.At(3, p);
  }
  EXPECT_LT(same_c, 50) << "another seed gives another order";
}

// The window bounds how far the shuffle moves a sample: with window 1 the order is whole
// shards in permuted order.
TEST(SampleOrderTest, WindowOneKeepsShardsContiguous) {
  auto o = *SampleOrder::Create(Opts(1000, 100, 1, 5));
  for (uint64_t p = 0; p < 1000; ++p) {
    if (p % 100) {
      EXPECT_EQ(o.At(0, p), o.At(0, p - 1) + 1);
    }
  }
}

TEST(CursorTest, SerializeParse) {
  Cursor c;
  c.slot = 12345;
  c.taken = {100, 0, 7};
  EXPECT_EQ(c.Serialize(), "v1;slot=12345;taken=100,0,7");
  auto back = Cursor::Parse(c.Serialize());
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(*back, c);
  for (const char* bad : {"", "v2;slot=1;taken=1", "v1;slot=x;taken=1", "v1;slot=1;taken=", "v1;slot=1;taken=1,a"})
    EXPECT_EQ(Cursor::Parse(bad).status().code(), StatusCode::kInvalidArgument) << bad;
}

// Runs `steps` steps at `dp` ranks x `batch`, collecting every rank's samples.
Cursor RunSteps(const MixedStream& m, Cursor c, int dp, uint64_t batch, int steps,
           std::vector<std::pair<uint64_t, uint64_t>>* seen) {
  for (int t = 0; t < steps; ++t) {
    Cursor next;
    const std::vector<SourceSample> group = m.NextGroupStep(c, dp, batch, &next);
    for (int r = 0; r < dp; ++r) {
      const auto [lo, hi] = RankSlice(group.size(), dp, r);
      EXPECT_LE(hi - lo, batch);
      for (uint64_t k = lo; k < hi; ++k) seen->push_back({group[k].epoch, group[k].index});
    }
    c = next;
  }
  return c;
}

// Checkpoint at dp = 2 mid-epoch, resume at dp = 4 (and 4 -> 1, 3 -> 2): every sample of the
// epoch is trained on exactly once, and a serialised cursor resumes identically.
TEST(PlacementTest, ResumeAtAnotherDpSizeCoversTheEpochExactlyOnce) {
  const uint64_t n = 1000;
  auto m = *MixedStream::Create({Opts(n, 64, 128, 3)}, {1.0}, 3);
  struct Case { int dp1; uint64_t b1; int steps1; int dp2; uint64_t b2; };
  for (Case k : {Case{2, 3, 37, 4, 5}, Case{4, 8, 11, 1, 7}, Case{3, 5, 20, 2, 9}}) {
    std::vector<std::pair<uint64_t, uint64_t>> seen;
    Cursor c = RunSteps(m, m.Start(), k.dp1, k.b1, k.steps1, &seen);
    auto restored = Cursor::Parse(c.Serialize());
    ASSERT_TRUE(restored.ok());
    // Until the epoch ends (the last step is short, split evenly over ranks).
    while (restored->taken[0] < n) *restored = RunSteps(m, *restored, k.dp2, k.b2, 1, &seen);
    EXPECT_EQ(restored->taken[0], n);
    std::map<uint64_t, int> count;
    for (auto [epoch, idx] : seen) {
      EXPECT_EQ(epoch, 0u);
      ++count[idx];
    }
    EXPECT_EQ(count.size(), n) << "dp " << k.dp1 << " -> " << k.dp2;
    for (auto [idx, times] : count) EXPECT_EQ(times, 1) << "sample " << idx;
  }
}

// The order a rank sees does not depend on the world size: dp = 1 with batch 12 and dp = 4
// with batch 3 consume the same global sequence.
TEST(PlacementTest, GlobalSequenceIndependentOfWorldSize) {
  auto m = *MixedStream::Create({Opts(500, 32, 64, 11)}, {1.0}, 11);
  std::vector<std::pair<uint64_t, uint64_t>> one, four;
  RunSteps(m, m.Start(), 1, 12, 10, &one);
  RunSteps(m, m.Start(), 4, 3, 10, &four);
  EXPECT_EQ(one, four);
}

// MM1's caption : interleaved : text = 5 : 5 : 1. Over every window of 1,000 consecutive
// slots each source's share is within 0.3 % of its weight (the scheduler's bound is about
// 2 samples); sources wrap into new epochs independently.
TEST(MixtureTest, ProportionsHoldInEveryThousandSlotWindow) {
  auto m = *MixedStream::Create({Opts(900, 64, 100, 1), Opts(2000, 64, 100, 2), Opts(150, 64, 100, 3)},
                                {5, 5, 1}, 42);
  const double w[] = {5.0 / 11, 5.0 / 11, 1.0 / 11};
  std::vector<int> src;
  Cursor c = m.Start();
  std::vector<uint64_t> max_epoch(3, 0);
  for (int k = 0; k < 20000; ++k) {
    SourceSample s = m.Take(&c);
    src.push_back(s.source);
    max_epoch[s.source] = std::max(max_epoch[s.source], s.epoch);
  }
  for (size_t start = 0; start + 1000 <= src.size(); start += 37) {
    int cnt[3] = {0, 0, 0};
    for (size_t k = start; k < start + 1000; ++k) ++cnt[src[k]];
    for (int i = 0; i < 3; ++i) EXPECT_NEAR(cnt[i] / 1000.0, w[i], 0.003) << "window at " << start << " source " << i;
  }
  EXPECT_GE(max_epoch[2], 10u) << "the small text source cycles through many epochs";
  EXPECT_EQ(c.taken[0] + c.taken[1] + c.taken[2], 20000u);
  // Resuming from the cursor continues exactly where an uninterrupted stream would.
  Cursor a = m.Start();
  for (int k = 0; k < 777; ++k) m.Take(&a);
  Cursor b = *Cursor::Parse(a.Serialize());
  for (int k = 0; k < 500; ++k) {
    SourceSample x = m.Take(&a), y = m.Take(&b);
    EXPECT_EQ(x.source, y.source);
    EXPECT_EQ(x.index, y.index);
  }
}

TEST(MixtureTest, BadSpecsAreErrors) {
  EXPECT_FALSE(MixedStream::Create({}, {}, 1).ok());
  EXPECT_FALSE(MixedStream::Create({Opts(10, 4, 4, 1)}, {1, 2}, 1).ok());
  EXPECT_FALSE(MixedStream::Create({Opts(10, 4, 4, 1)}, {0}, 1).ok());
  EXPECT_FALSE(MixedStream::Create({Opts(0, 4, 4, 1)}, {1}, 1).ok());
  EXPECT_FALSE(SampleOrder::Create(Opts(10, 0, 4, 1)).ok());
}

// The ranks' slices of a group step tile it in rank order, each within the batch, and an
// epoch's short tail is split as evenly as possible.
TEST(PlacementTest, RankSlicesTileTheGroupStep) {
  for (uint64_t slots : {0ull, 1ull, 7ull, 12ull, 13ull, 50ull})
    for (int dp : {1, 2, 3, 4}) {
      uint64_t at = 0, lo_size = UINT64_MAX, hi_size = 0;
      for (int r = 0; r < dp; ++r) {
        const auto [lo, hi] = RankSlice(slots, dp, r);
        EXPECT_EQ(lo, at) << slots << " / " << dp << " rank " << r;
        ASSERT_GE(hi, lo);
        at = hi;
        lo_size = std::min(lo_size, hi - lo), hi_size = std::max(hi_size, hi - lo);
      }
      EXPECT_EQ(at, slots);
      EXPECT_LE(hi_size - lo_size, 1u) << slots << " / " << dp;
    }
  // A full step of 3 x 4: rank r takes [4r, 4r + 4).
  EXPECT_EQ(RankSlice(12, 3, 1), (std::pair<uint64_t, uint64_t>{4, 8}));
}

TEST(BalanceSlotsTest, KeepsCapacitiesAndEvensTheLoads) {
  std::mt19937_64 rng{11};
  for (int trial = 0; trial < 200; ++trial) {
    const int ranks = 2 + trial % 7;
    std::vector<uint64_t> capacity;
    uint64_t total = 0;
    for (int r = 0; r < ranks; ++r) capacity.push_back(1 + rng() % 9), total += capacity.back();
    std::vector<int64_t> cost(total);
    int64_t biggest = 0;
    for (auto& c : cost) c = 20 + static_cast<int64_t>(rng() % 200), biggest = std::max(biggest, c);
    std::vector<int> owner = BalanceSlots(cost, capacity);
    ASSERT_EQ(owner.size(), total);
    std::vector<uint64_t> got(ranks, 0);
    std::vector<int64_t> load(ranks, 0);
    for (size_t k = 0; k < total; ++k) {
      ASSERT_GE(owner[k], 0);
      ASSERT_LT(owner[k], ranks);
      ++got[owner[k]];
      load[owner[k]] += cost[k];
    }
    EXPECT_EQ(got, capacity) << "trial " << trial;
    if (std::all_of(capacity.begin(), capacity.end(), [&](uint64_t c) { return c == capacity[0]; })) {
      // Equal counts: longest-first leaves the ranks within one sample of each other.
      auto [lo, hi] = std::minmax_element(load.begin(), load.end());
      EXPECT_LE(*hi - *lo, biggest) << "trial " << trial;
    }
    EXPECT_EQ(BalanceSlots(cost, capacity), owner) << "deterministic";
  }
  // Costs already balanced by position: unchanged loads; ties go to the lower rank.
  EXPECT_EQ(BalanceSlots({5, 5, 5, 5}, {2, 2}), (std::vector<int>{0, 1, 0, 1}));
  EXPECT_EQ(BalanceSlots({9, 1, 8, 2}, {2, 2}), (std::vector<int>{0, 0, 1, 1}));  // 10 and 10
}

}  // namespace
}  // namespace vlorch::dataflow
