// DeviceMesh under mpirun: group membership and rank order for every layout that fits the
// world (np = 1..4), collectives inside each dp/tp/ep/edp group, and validation that fails
// on every rank before any communication.
#include "worker/comm/device_mesh.h"

#include <gtest/gtest.h>

#include "tests/worker/comm/mpi_test_env.h"
#include "worker/comm/mpi_runtime.h"
#include "worker/comm/nccl_communicator.h"
#include "worker/comm_check.h"

namespace vlorch::testing {
namespace {

int World() { return comm::MpiSession::Get()->world_size(); }

std::unique_ptr<comm::DeviceMesh> MakeMesh(const ParallelLayout& layout) {
  comm::DeviceMeshOptions o;
  o.comm.timeout = kTestTimeout;
  auto mesh = comm::DeviceMesh::Create(layout, o);
  EXPECT_TRUE(mesh.ok()) << mesh.status().ToString();
  return mesh.ok() ? std::move(mesh).value() : nullptr;
}

// All-gathering each rank's world rank inside a group yields the group's members in the
// documented order, and the group rank equals the mesh coordinate.
void ExpectGroupsMatchLayout(const comm::DeviceMesh& mesh) {
  const MeshCoords& c = mesh.coords();
  for (MeshDim dim : {MeshDim::kWorld, MeshDim::kDp, MeshDim::kTp, MeshDim::kEp, MeshDim::kEdp}) {
    comm::Communicator& g = mesh.group(dim);
    std::vector<int> want = GroupMembers(mesh.layout(), dim, mesh.rank());
    ASSERT_EQ(g.size(), static_cast<int>(want.size())) << MeshDimName(dim);
    EXPECT_EQ(g.name(), MeshDimName(dim));
    int coord = dim == MeshDim::kDp ? c.dp_rank : dim == MeshDim::kTp ? c.tp_rank
              : dim == MeshDim::kEp ? c.ep_rank : dim == MeshDim::kEdp ? c.edp_rank : c.rank;
    EXPECT_EQ(g.rank(), coord) << MeshDimName(dim);
    at::Tensor mine = at::full({1}, mesh.rank(), at::kLong);
    at::Tensor all = at::empty({g.size()}, at::kLong);
    ASSERT_TRUE(g.AllGather(mine, all).ok());
    std::vector<int> got(all.data_ptr<int64_t>(), all.data_ptr<int64_t>() + all.numel());
    EXPECT_EQ(got, want) << "members of the " << MeshDimName(dim) << " group of rank " << mesh.rank()
                         << " in " << mesh.layout().ToString();
  }
}

TEST(DeviceMeshTest, TwoByTwo) {
  if (World() != 4) GTEST_SKIP() << "needs 4 ranks";
  auto mesh = MakeMesh({2, 2, 1});
  ASSERT_NE(mesh, nullptr);
  ExpectGroupsMatchLayout(*mesh);
  // A sum inside the tp group adds exactly the two tp partners: {0,1} -> 1, {2,3} -> 5.
  at::Tensor x = at::full({3}, mesh->rank(), at::kFloat);
  ASSERT_TRUE(mesh->tp().AllReduce(x, comm::ReduceOp::kSum).ok());
  EXPECT_EQ(x[0].item<float>(), mesh->rank() < 2 ? 1.0f : 5.0f);
  // ... and inside the dp group the ranks with the same tp index: {0,2} -> 2, {1,3} -> 4.
  at::Tensor y = at::full({3}, mesh->rank(), at::kFloat);
  ASSERT_TRUE(mesh->dp().AllReduce(y, comm::ReduceOp::kSum).ok());
  EXPECT_EQ(y[0].item<float>(), mesh->rank() % 2 == 0 ? 2.0f : 4.0f);
}

TEST(DeviceMeshTest, FourByOneWithExperts) {
  if (World() != 4) GTEST_SKIP() << "needs 4 ranks";
  for (int ep : {1, 2, 4}) {
    auto mesh = MakeMesh({4, 1, ep});
    ASSERT_NE(mesh, nullptr);
    EXPECT_EQ(mesh->dp().size(), 4);
    EXPECT_EQ(mesh->tp().size(), 1);
    EXPECT_EQ(mesh->ep().size(), ep);
    EXPECT_EQ(mesh->edp().size(), 4 / ep);
    ExpectGroupsMatchLayout(*mesh);
  }
}

// Every layout that fits this world: membership, plus the full collective self-check.
TEST(DeviceMeshTest, EveryLayoutThatFits) {
  const int n = World();
  for (int tp = 1; tp <= n; ++tp) {
    if (n % tp) continue;
    for (int ep = 1; ep <= n; ++ep) {
      if (n % ep) continue;
      auto mesh = MakeMesh({0, tp, ep});
      ASSERT_NE(mesh, nullptr);
      ExpectGroupsMatchLayout(*mesh);
      CommCheckOptions small;
      small.allreduce_elements = 1 << 12;
      small.iterations = 1;
      auto r = RunCommCheck(*mesh, small);
      ASSERT_TRUE(r.ok()) << r.status().ToString();
      EXPECT_EQ(r->checked.size(), 5u * 4u);  // 5 groups x (2 allreduce + allgather + alltoall)
    }
  }
}

TEST(DeviceMeshTest, InvalidLayoutFailsEverywhereWithoutCommunicating) {
  const int n = World();
  comm::DeviceMeshOptions o;
  auto mesh = comm::DeviceMesh::Create({0, n + 1, 1}, o);
  ASSERT_FALSE(mesh.ok());
  EXPECT_EQ(mesh.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(mesh.status().message().find("world size " + std::to_string(n) + " is not divisible by tp=" +
                                         std::to_string(n + 1)),
            std::string::npos)
      << mesh.status().message();
  auto bad_dp = comm::DeviceMesh::Create({n + 1, 1, 1}, o);
  EXPECT_EQ(bad_dp.status().code(), StatusCode::kInvalidArgument);
}

TEST(DeviceMeshTest, NcclWithoutGpuIsAClearError) {
  if (comm::NcclUsable()) GTEST_SKIP() << "a GPU is present";
  comm::DeviceMeshOptions o;
  o.backend = comm::CommBackend::kNccl;
  auto mesh = comm::DeviceMesh::Create({0, 1, 1}, o);
  ASSERT_FALSE(mesh.ok());
  EXPECT_EQ(mesh.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(mesh.status().message().find("use backend mpi"), std::string::npos) << mesh.status().message();
}

}  // namespace
}  // namespace vlorch::testing
