// The worker's side of the control plane: a ZeroMQ DEALER that registers the rank with the
// coordinator, heartbeats (with the communicator call the rank is in, for hang detection),
// and reports progress, committed checkpoints, finished stages and errors.
//
// Sends never block training: messages go through a queue to one background thread; when the
// coordinator is away they wait in ZeroMQ's queue (reconnecting on their own) up to its high-
// water mark, after which heartbeats and progress are dropped. No LibTorch.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>

#include "common/status.h"
#include "jobs/control_keys.h"
#include "jobs/control_protocol.h"

namespace vlorch::agent {

struct AgentOptions {
  std::string endpoint;        // tcp://host:port of the coordinator's ROUTER
  std::string job_id;          // the coordinator's id; attach mode: the job's name
  int64_t incarnation = 0;     // from the coordinator; attach mode: 0
  bool attach = false;         // started by the user's mpirun, not by the coordinator
  int rank = 0;
  int world = 1;
  std::string spec;            // job spec path (attach mode lets the coordinator read stages)
  std::string run_dir;
  // Heartbeat period. Default 1 s. Progress goes out at most twice per period.
  double heartbeat_interval_s = 1.0;
  // The CURVE credentials to connect with (jobs/control_keys.h). Default: none given, so
  // Connect looks them up with FindCurveCredentials(endpoint); without any the coordinator
  // refuses the rank (it trains on, untracked, and says so).
  std::optional<CurveCredentials> curve;
};

class CoordinatorAgent {
 public:
  static StatusOr<std::unique_ptr<CoordinatorAgent>> Connect(AgentOptions options);
  ~CoordinatorAgent();  // sends what is queued (waits up to 2 s), then closes

  void Register(const std::string& stage);
  // Keeps the latest; the agent thread sends it (rate-limited).
  void Progress(const std::string& stage, int64_t step, int64_t total_steps, double loss, double samples_per_second,
                double data_wait_seconds);
  void CheckpointCommitted(const std::string& stage, int64_t step, const std::string& path);
  void StageDone(const std::string& stage, int64_t step, const std::string& checkpoint);
  void Error(const std::string& stage, const std::string& cause);

 private:
  explicit CoordinatorAgent(AgentOptions options);
  ControlMessage Base(MessageType type) const;
  void Enqueue(const ControlMessage& m);
  void Loop();

  AgentOptions options_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::string> queue_;
  std::optional<ControlMessage> progress_;
  bool stop_ = false;
  std::thread thread_;
};

}  // namespace vlorch::agent
