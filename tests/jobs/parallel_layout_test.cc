#include "jobs/parallel_layout.h"

#include <set>

#include <gtest/gtest.h>

namespace vlorch {
namespace {

std::string Error(const ParallelLayout& l, int world) { return l.Validate(world).message(); }

TEST(ParallelLayoutTest, InfersDp) {
  auto l = ParallelLayout{0, 2, 1}.Resolve(8);
  ASSERT_TRUE(l.ok());
  EXPECT_EQ(l->dp, 4);
  EXPECT_EQ(l->world(), 8);
}

TEST(ParallelLayoutTest, ErrorsSayWhatToChange) {
  EXPECT_EQ(Error({0, 4, 1}, 6),
            "world size 6 is not divisible by tp=4: use a tp that divides 6 (1, 2, 3, 6) or launch a "
            "multiple of 4 ranks");
  EXPECT_EQ(Error({3, 2, 1}, 4),
            "dp=3 x tp=2 needs 6 ranks but the world has 4: set dp=2 or leave dp unset to infer it");
  EXPECT_EQ(Error({0, 1, 3}, 4),
            "ep=3 does not divide dp x tp = 4: expert parallelism folds over the dp x tp ranks, so use "
            "one of 1, 2, 4");
  EXPECT_EQ(Error({0, 0, 1}, 4), "tp must be >= 1 (got 0)");
  EXPECT_EQ(Error({0, 1, 0}, 4), "ep must be >= 1 (got 0)");
  EXPECT_EQ(Error({-1, 1, 1}, 4), "dp must be >= 1, or 0 to infer it (got -1)");
  EXPECT_EQ(Error({0, 1, 1}, 0), "world size must be >= 1 (got 0)");
}

TEST(ParallelLayoutTest, TpVariesFastest) {
  ParallelLayout l{2, 2, 1};
  EXPECT_EQ(GroupMembers(l, MeshDim::kTp, 0), (std::vector<int>{0, 1}));
  EXPECT_EQ(GroupMembers(l, MeshDim::kTp, 3), (std::vector<int>{2, 3}));
  EXPECT_EQ(GroupMembers(l, MeshDim::kDp, 1), (std::vector<int>{1, 3}));
  MeshCoords c = CoordsOf(l, 3);
  EXPECT_EQ(c.dp_rank, 1);
  EXPECT_EQ(c.tp_rank, 1);
}

TEST(ParallelLayoutTest, ExpertGroupsFoldOverThePlane) {
  ParallelLayout l{4, 1, 2};
  EXPECT_EQ(GroupMembers(l, MeshDim::kEp, 2), (std::vector<int>{2, 3}));
  EXPECT_EQ(GroupMembers(l, MeshDim::kEdp, 2), (std::vector<int>{0, 2}));
  EXPECT_EQ(CoordsOf(l, 3).ep_rank, 1);
  EXPECT_EQ(CoordsOf(l, 3).edp_rank, 1);
}

// Every dimension partitions the world: each rank in exactly one group, groups equal-sized,
// and a rank's index inside its group equals its coordinate.
TEST(ParallelLayoutTest, EveryDimensionPartitionsTheWorld) {
  for (int world : {1, 2, 3, 4, 6, 8, 12}) {
    for (int tp = 1; tp <= world; ++tp) {
      if (world % tp) continue;
      for (int ep = 1; ep <= world; ++ep) {
        if (world % ep) continue;
        auto l = ParallelLayout{0, tp, ep}.Resolve(world);
        ASSERT_TRUE(l.ok()) << l.status().ToString();
        for (MeshDim dim : {MeshDim::kWorld, MeshDim::kDp, MeshDim::kTp, MeshDim::kEp, MeshDim::kEdp}) {
          std::multiset<int> seen;
          size_t group_size = GroupMembers(*l, dim, 0).size();
          for (int r = 0; r < world; ++r) {
            auto m = GroupMembers(*l, dim, r);
            EXPECT_EQ(m.size(), group_size);
            if (m.front() == r) seen.insert(m.begin(), m.end());
            int index = std::find(m.begin(), m.end(), r) - m.begin();
            MeshCoords c = CoordsOf(*l, r);
            int want = dim == MeshDim::kDp ? c.dp_rank : dim == MeshDim::kTp ? c.tp_rank
                     : dim == MeshDim::kEp ? c.ep_rank : dim == MeshDim::kEdp ? c.edp_rank : r;
            EXPECT_EQ(index, want) << MeshDimName(dim) << " world=" << world << " tp=" << tp << " ep=" << ep;
          }
          EXPECT_EQ(seen.size(), static_cast<size_t>(world));
          for (int r = 0; r < world; ++r) EXPECT_EQ(seen.count(r), 1u);
        }
      }
    }
  }
}

}  // namespace
}  // namespace vlorch
