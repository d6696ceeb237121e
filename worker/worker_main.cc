// vlorch-worker: what mpirun starts on every rank.
//
//   mpirun -np 4 vlorch-worker check-comm --tp 2      verify MPI/NCCL and the mesh groups
//   mpirun -np 2 vlorch-worker --job job.yaml [--stage NAME] [--run-dir DIR]
//                                                     train one stage (or every stage in order)
//   mpirun -np 2 vlorch-worker --job job.yaml --coordinator tcp://host:7011
//                                                     the same, tracked by a coordinator (attach
//                                                     mode; the coordinator passes --job-id and
//                                                     --incarnation when it launches)
//   mpirun -np 2 vlorch-worker evaluate --job job.yaml --stage NAME --store DIR
//                                                     held-out loss of each of its checkpoints
//
// Exit codes (docs/cli.md): 0 success (or preempted by SIGTERM after committing a checkpoint;
// --preempted-exit-code changes that), 2 bad input (flags, spec, layout, weights, a run
// directory another writer holds), 3 a failure worth restarting (communication, timeout, lost
// peer, I/O).
#include <cstdio>
#include <filesystem>
#include <memory>
#include <string>

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include "common/fault.h"
#include "common/logging.h"
#include "worker/comm/device_mesh.h"
#include "worker/comm/mpi_runtime.h"
#include "jobs/job_spec.h"
#include "jobs/job_state.h"
#include "worker/comm_check.h"
#include "worker/train/evaluate.h"
#include "worker/train/stage_runner.h"
#include "worker/agent/agent.h"

namespace {

constexpr int kExitBadInput = 2;
constexpr int kExitRestartable = 3;
// A disk (checkpoints) ran out of space: a restart would only fail again until someone frees
// space, so the coordinator does not spend restarts on it.
constexpr int kExitOutOfSpace = 4;

int ExitCodeFor(const vlorch::Status& s) {
  switch (s.code()) {
    case vlorch::StatusCode::kOk: return 0;
    case vlorch::StatusCode::kInvalidArgument:
    case vlorch::StatusCode::kNotFound:
    case vlorch::StatusCode::kFailedPrecondition:
      return kExitBadInput;
    case vlorch::StatusCode::kResourceExhausted:
      return kExitOutOfSpace;
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

struct AgentFlags {
  std::string endpoint, job_id;
  int64_t incarnation = 0;
  double heartbeat_interval_s = 1.0;
};

int RunTraining(const std::string& job_path, const std::string& stage, vlorch::train::StageRunOptions options,
                double timeout_s, int preempted_exit_code, const AgentFlags& af) {
  auto job = vlorch::LoadJobSpec(job_path);
  if (!job.ok()) {
    VLOG_ERROR("{}", job.status().ToString());
    return ExitCodeFor(job.status());
  }
  vlorch::comm::DeviceMeshOptions mo;
  mo.comm.timeout = std::chrono::milliseconds(static_cast<int64_t>(timeout_s * 1000));
  auto mesh = vlorch::comm::DeviceMesh::Create(job->layout, mo);
  if (!mesh.ok()) {
    VLOG_ERROR("{}: {}", job_path, mesh.status().ToString());
    return ExitCodeFor(mesh.status());
  }
  vlorch::train::InstallPreemptionHandler();
  std::vector<std::string> stages;
  if (!stage.empty()) stages.push_back(stage);
  else for (const auto& s : job->stages) stages.push_back(s.name);

  std::unique_ptr<vlorch::agent::CoordinatorAgent> agent;
  if (!af.endpoint.empty()) {
    vlorch::agent::AgentOptions ao;
    ao.endpoint = af.endpoint;
    ao.attach = af.job_id.empty();
    ao.job_id = ao.attach ? job->name : af.job_id;
    ao.incarnation = af.incarnation;
    ao.rank = (*mesh)->rank();
    ao.world = (*mesh)->world_size();
    ao.spec = std::filesystem::absolute(job_path).string();
    ao.run_dir = options.run_dir.empty() ? job->run_dir : options.run_dir;
    ao.heartbeat_interval_s = af.heartbeat_interval_s;
    auto a = vlorch::agent::CoordinatorAgent::Connect(ao);
    if (!a.ok()) {
      VLOG_ERROR("{}", a.status().ToString());
      return ExitCodeFor(a.status());
    }
    agent = std::move(*a);
    agent->Register(stages.front());
    auto* ag = agent.get();
    options.on_step = [ag](const vlorch::train::StepReport& s) {
      ag->Progress(s.stage, s.step, s.total_steps, s.loss, s.samples_per_second, s.data_wait_seconds);
    };
    options.on_checkpoint = [ag](const std::string& st, int64_t step, const std::string& dir) {
      ag->CheckpointCommitted(st, step, dir);
    };
  }
  // Rank 0 writes the run directory; it holds the directory's lock from here to exit (each
  // stage takes it again), so a second writer on the same directory stops with exit code 2.
  auto run_dir_lock = vlorch::train::LockRunDir(options.run_dir.empty() ? job->run_dir : options.run_dir,
                                                fmt::format("vlorch-worker, job '{}'", job->name), **mesh);
  if (!run_dir_lock.ok()) {
    VLOG_ERROR("{}", run_dir_lock.status().ToString());
    if (agent) agent->Error(stages.front(), run_dir_lock.status().ToString());
    return ExitCodeFor(run_dir_lock.status());
  }
  for (const auto& name : stages) {
    auto r = vlorch::train::RunStage(*job, name, **mesh, options);
    if (!r.ok()) {
      VLOG_ERROR("stage '{}' FAILED: {}", name, r.status().ToString());
      if (agent) agent->Error(name, r.status().ToString());
      return ExitCodeFor(r.status());
    }
    if (agent && (*mesh)->rank() == 0 && r->outcome != vlorch::train::StageOutcome::kPreempted)
      agent->StageDone(name, r->steps, r->checkpoint);
    if ((*mesh)->rank() == 0) {
      switch (r->outcome) {
        case vlorch::train::StageOutcome::kAlreadyDone:
          std::printf("stage '%s' is already done (%lld steps, %s)\n", name.c_str(), static_cast<long long>(r->steps),
                      r->checkpoint.c_str());
          break;
        case vlorch::train::StageOutcome::kDone:
          std::printf("stage '%s' done: %lld steps, loss %.4f, mean step %.1f ms, checkpoint %s\n", name.c_str(),
                      static_cast<long long>(r->steps), r->last_loss, r->mean_step_seconds * 1e3, r->checkpoint.c_str());
          break;
        case vlorch::train::StageOutcome::kPreempted:
          std::printf("stage '%s' preempted after step %lld; committed %s\n", name.c_str(),
                      static_cast<long long>(r->steps), r->checkpoint.c_str());
          break;
      }
      std::fflush(stdout);
    }
    if (r->outcome == vlorch::train::StageOutcome::kPreempted) {
      if ((*mesh)->rank() == 0) {
        const std::string run_dir = options.run_dir.empty() ? job->run_dir : options.run_dir;
        vlorch::Status s = vlorch::WritePreemptionRecord(run_dir, name, {af.incarnation, r->steps, r->checkpoint});
        if (!s.ok()) VLOG_WARNING("{}", s.ToString());  // the checkpoint is committed all the same
      }
      return preempted_exit_code;
    }
  }
  return 0;
}

// Prints one JSON line per checkpoint on rank 0.
int RunEvaluate(const std::string& job_path, const std::string& stage, const vlorch::train::EvaluateOptions& options) {
  auto job = vlorch::LoadJobSpec(job_path);
  if (!job.ok()) {
    VLOG_ERROR("{}", job.status().ToString());
    return ExitCodeFor(job.status());
  }
  vlorch::ParallelLayout world;  // evaluation is data-parallel over every rank
  auto mesh = vlorch::comm::DeviceMesh::Create(world, {});
  if (!mesh.ok()) {
    VLOG_ERROR("{}", mesh.status().ToString());
    return ExitCodeFor(mesh.status());
  }
  auto points = vlorch::train::EvaluateStage(*job, stage, **mesh, options);
  if (!points.ok()) {
    VLOG_ERROR("evaluate: {}", points.status().ToString());
    return ExitCodeFor(points.status());
  }
  if ((*mesh)->rank() == 0) {
    for (const auto& p : *points)
      std::printf("{\"stage\": \"%s\", \"step\": %lld, \"val_loss\": %.6f, \"tokens\": %lld, \"samples\": %lld}\n",
                  stage.c_str(), static_cast<long long>(p.step), p.loss, static_cast<long long>(p.tokens),
                  static_cast<long long>(p.samples));
    std::fflush(stdout);
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"vlorch-worker: one rank of a vlorch job (started by mpirun)"};
  app.require_subcommand(0, 1);

  std::string job_path, stage;
  vlorch::train::StageRunOptions run;
  int preempted_exit_code = 0;
  double train_timeout_s = 300;
  app.add_option("--job", job_path, "job spec (YAML) to train");
  app.add_option("--stage", stage, "the stage to run (default: every stage in order, skipping finished ones)");
  app.add_option("--run-dir", run.run_dir, "run directory (default: the spec's run_dir)");
  app.add_flag("--trace-samples", run.trace_samples, "write every trained sample's key to <stage>/trace/rank-R.tsv");
  app.add_option("--max-steps", run.max_steps, "stop the stage after this many steps in total (0: its own length)");
  bool reduce_after_backward = false;
  app.add_flag("--grad-reduce-after-backward", reduce_after_backward,
               "reduce gradients after backward instead of overlapped with it (benchmark baseline)");
  app.add_option("--preempted-exit-code", preempted_exit_code, "exit code after a SIGTERM stop (default 0)");
  app.add_option("--collective-timeout", train_timeout_s, "seconds before a collective counts as hung")
      ->capture_default_str();
  AgentFlags agent;
  app.add_option("--coordinator", agent.endpoint, "report to the coordinator at this ZeroMQ endpoint (tcp://host:7011)");
  app.add_option("--job-id", agent.job_id, "the coordinator's job id (set by the coordinator; default: attach mode)");
  app.add_option("--incarnation", agent.incarnation, "launch number (set by the coordinator)")->capture_default_str();
  app.add_option("--heartbeat-interval", agent.heartbeat_interval_s, "seconds between heartbeats")->capture_default_str();

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

  vlorch::train::EvaluateOptions eval;
  std::string eval_job, eval_stage;
  auto* ev = app.add_subcommand("evaluate", "held-out loss of every committed checkpoint of a stage (JSON lines)");
  ev->add_option("--job", eval_job, "job spec (YAML)")->required();
  ev->add_option("--stage", eval_stage, "stage whose checkpoints to evaluate")->required();
  ev->add_option("--store", eval.store, "held-out shard store")->required();
  ev->add_option("--run-dir", eval.run_dir, "run directory (default: the spec's run_dir)");
  ev->add_option("--max-samples", eval.max_samples, "evaluate at most this many samples (0: all)")->capture_default_str();
  ev->add_option("--batch-size", eval.batch_size, "per rank")->capture_default_str();

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

  if (app.got_subcommand(cc)) return RunCheckComm(layout, backend, timeout_s, check);
  if (app.got_subcommand(ev)) return RunEvaluate(eval_job, eval_stage, eval);
  if (job_path.empty()) {
    if (log.rank == 0) std::fprintf(stderr, "vlorch-worker: give --job job.yaml to train, or a subcommand (see --help)\n");
    return kExitBadInput;
  }
  run.overlap_grad_reduce = !reduce_after_backward;
  vlorch::SetFaultContext("incarnation", agent.incarnation);
  return RunTraining(job_path, stage, run, train_timeout_s, preempted_exit_code, agent);
}
