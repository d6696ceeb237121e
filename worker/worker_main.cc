// vlorch-worker: what mpirun starts on every rank.
//
//   mpirun -np 4 vlorch-worker check-comm --tp 2      verify MPI/NCCL and the mesh groups
//
// Exit codes (docs/cli.md): 0 success, 2 bad input (flags, layout), 3 a failure worth
// restarting (communication, timeout, lost peer).
#include <cstdio>
#include <string>

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include "common/logging.h"
#include "worker/comm/device_mesh.h"
#include "worker/comm/mpi_runtime.h"
#include "worker/comm_check.h"

namespace {

constexpr int kExitBadInput = 2;
constexpr int kExitRestartable = 3;

int ExitCodeFor(const vlorch::Status& s) {
  switch (s.code()) {
    case vlorch::StatusCode::kOk: return 0;
    case vlorch::StatusCode::kInvalidArgument:
    case vlorch::StatusCode::kNotFound:
    case vlorch::StatusCode::kFailedPrecondition:
      return kExitBadInput;
    default:
      return kExitRestartable;
  }
}

int RunCheckComm(const vlorch::ParallelLayout& layout, const std::string& backend, double timeout_s,
                 const vlorch::CommCheckOptions& options) {
  vlorch::comm::DeviceMeshOptions mo;
  if (backend == "nccl") mo.backend = vlorch::comm::CommBackend::kNccl;
  mo.comm.timeout = std::chrono::milliseconds(static_cast<int64_t>(timeout_s * 1000));
  auto mesh = vlorch::comm::DeviceMesh::Create(layout, mo);
  if (!mesh.ok()) {
    VLOG_ERROR("check-comm: {}", mesh.status().ToString());
    return ExitCodeFor(mesh.status());
  }
  auto result = vlorch::RunCommCheck(**mesh, options);
  if (!result.ok()) {
    VLOG_ERROR("check-comm FAILED: {}", result.status().ToString());
    return ExitCodeFor(result.status());
  }
  if ((*mesh)->rank() == 0) {
    std::printf("check-comm: %d ranks, %s, backend %s: %zu checks passed on rank 0\n",
                (*mesh)->world_size(), (*mesh)->layout().ToString().c_str(), backend.c_str(),
                result->checked.size());
    std::printf("check-comm: allreduce %.1f MiB f32 on world: %.2f ms, bus bandwidth %.2f GB/s\n",
                options.allreduce_elements * 4.0 / (1 << 20), result->allreduce_seconds * 1e3,
                result->allreduce_busbw_gbps);
    std::fflush(stdout);
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"vlorch-worker: one rank of a vlorch job (started by mpirun)"};
  app.require_subcommand(1);

  vlorch::ParallelLayout layout;
  std::string backend = "mpi";
  double timeout_s = 60;
  vlorch::CommCheckOptions check;
  auto* cc = app.add_subcommand("check-comm", "verify collectives on every group of the mesh");
  cc->add_option("--dp", layout.dp, "data-parallel size (default: world / tp)");
  cc->add_option("--tp", layout.tp, "tensor-parallel size")->capture_default_str();
  cc->add_option("--ep", layout.ep, "expert-parallel size")->capture_default_str();
  cc->add_option("--backend", backend, "mpi or nccl")->check(CLI::IsMember({"mpi", "nccl"}))->capture_default_str();
  cc->add_option("--timeout", timeout_s, "seconds before a collective counts as hung")->capture_default_str();
  cc->add_option("--elements", check.allreduce_elements, "f32 elements in the timed all-reduce")->capture_default_str();

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : kExitBadInput;
  }

  auto session = vlorch::comm::MpiSession::Init(&argc, &argv, vlorch::comm::MpiThreadLevel::kSerialized);
  if (!session.ok()) {
    std::fprintf(stderr, "vlorch-worker: %s\n", session.status().ToString().c_str());
    return kExitRestartable;
  }
  vlorch::LogOptions log;
  log.rank = (*session)->world_rank();
  vlorch::InitLogging(log);

  int rc = 0;
  if (app.got_subcommand(cc)) rc = RunCheckComm(layout, backend, timeout_s, check);
  return rc;
}
