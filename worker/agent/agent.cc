#include "worker/agent/agent.h"

#include <unistd.h>

#include <chrono>

#include <fmt/format.h>
#include <zmq.hpp>

#include "common/collective_trace.h"
#include "common/host.h"
#include "common/logging.h"

namespace vlorch::agent {
namespace {

}  // namespace

CoordinatorAgent::CoordinatorAgent(AgentOptions options) : options_(std::move(options)) {}

StatusOr<std::unique_ptr<CoordinatorAgent>> CoordinatorAgent::Connect(AgentOptions options) {
  if (options.endpoint.rfind("tcp://", 0) != 0 && options.endpoint.rfind("ipc://", 0) != 0)
    return InvalidArgumentError(fmt::format("--coordinator '{}' is not a ZeroMQ endpoint like tcp://host:7011",
                                            options.endpoint));
  if (!IsValidJobId(options.job_id))
    return InvalidArgumentError(fmt::format("job id '{}' is not valid ([A-Za-z0-9._-], 1-64 chars)", options.job_id));
  if (options.heartbeat_interval_s <= 0) options.heartbeat_interval_s = 1.0;
  if (!options.curve) {
    ASSIGN_OR_RETURN(options.curve, FindCurveCredentials(options.endpoint));
    if (!options.curve)
      VLOG_WARNING("coordinator agent: no control-plane credentials for {} ({} etc. unset, no {} on this machine): the "
                   "coordinator will refuse this rank; training goes on untracked",
                   options.endpoint, kCurveServerEnv, CurveDiscoveryPath(0).substr(0, CurveDiscoveryPath(0).size() - 1) + "<port>");
  }
  std::unique_ptr<CoordinatorAgent> a(new CoordinatorAgent(std::move(options)));
  // Connecting is asynchronous in ZeroMQ: an unreachable coordinator is not an error here;
  // the socket keeps retrying while the rank trains.
  a->thread_ = std::thread([p = a.get()] { p->Loop(); });
  return a;
}

CoordinatorAgent::~CoordinatorAgent() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

ControlMessage CoordinatorAgent::Base(MessageType type) const {
  ControlMessage m;
  m.type = type;
  m.job = options_.job_id;
  m.rank = options_.rank;
  m.incarnation = options_.incarnation;
  return m;
}

void CoordinatorAgent::Enqueue(const ControlMessage& m) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    queue_.push_back(EncodeMessage(m));
  }
  cv_.notify_all();
}

void CoordinatorAgent::Register(const std::string& stage) {
  ControlMessage m = Base(MessageType::kRegister);
  m.world = options_.world;
  m.host = HostName();
  m.pid = ::getpid();
  m.stage = stage;
  m.spec = options_.spec;
  m.run_dir = options_.run_dir;
  m.attach = options_.attach;
  Enqueue(m);
}

void CoordinatorAgent::Progress(const std::string& stage, int64_t step, int64_t total_steps, double loss,
                                double samples_per_second, double data_wait_seconds) {
  ControlMessage m = Base(MessageType::kProgress);
  m.stage = stage;
  m.step = step;
  m.total_steps = total_steps;
  m.loss = loss;
  m.samples_per_second = samples_per_second;
  m.data_wait_seconds = data_wait_seconds;
  {
    std::lock_guard<std::mutex> lock(mu_);
    progress_ = std::move(m);
  }
  cv_.notify_all();
}

void CoordinatorAgent::CheckpointCommitted(const std::string& stage, int64_t step, const std::string& path) {
  ControlMessage m = Base(MessageType::kCheckpoint);
  m.stage = stage;
  m.step = step;
  m.checkpoint = path;
  Enqueue(m);
}

void CoordinatorAgent::StageDone(const std::string& stage, int64_t step, const std::string& checkpoint) {
  {
    // The last progress first, so the coordinator's step count ends where the stage did.
    std::lock_guard<std::mutex> lock(mu_);
    if (progress_) queue_.push_back(EncodeMessage(*progress_)), progress_.reset();
  }
  ControlMessage m = Base(MessageType::kStageDone);
  m.stage = stage;
  m.step = step;
  m.checkpoint = checkpoint;
  Enqueue(m);
}

void CoordinatorAgent::Error(const std::string& stage, const std::string& cause) {
  ControlMessage m = Base(MessageType::kError);
  m.stage = stage;
  m.cause = cause.substr(0, 4000);
  Enqueue(m);
}

void CoordinatorAgent::Loop() {
  zmq::context_t ctx(1);
  zmq::socket_t sock(ctx, zmq::socket_type::dealer);
  sock.set(zmq::sockopt::linger, 2000);
  sock.set(zmq::sockopt::sndhwm, 10000);
  sock.set(zmq::sockopt::reconnect_ivl, 200);
  sock.set(zmq::sockopt::reconnect_ivl_max, 2000);
  try {
    if (options_.curve) {
      sock.set(zmq::sockopt::curve_serverkey, options_.curve->server_public);
      sock.set(zmq::sockopt::curve_publickey, options_.curve->public_key);
      sock.set(zmq::sockopt::curve_secretkey, options_.curve->secret_key);
    }
    sock.connect(options_.endpoint);
  } catch (const zmq::error_t& e) {
    VLOG_ERROR("coordinator agent: cannot connect to {}: {}; training goes on untracked", options_.endpoint, e.what());
    return;
  }
  const auto period = std::chrono::duration_cast<std::chrono::steady_clock::duration>(
      std::chrono::duration<double>(options_.heartbeat_interval_s));
  auto next_heartbeat = std::chrono::steady_clock::now();
  auto next_progress = next_heartbeat;
  auto send = [&](const std::string& bytes) {
    try {
      (void)sock.send(zmq::buffer(bytes), zmq::send_flags::dontwait);  // full queue: dropped
    } catch (const zmq::error_t& e) {
      VLOG_WARNING("coordinator agent: send failed: {}", e.what());
    }
  };
  std::unique_lock<std::mutex> lock(mu_);
  for (;;) {
    const auto wake = progress_ ? std::min(next_heartbeat, next_progress) : next_heartbeat;
    cv_.wait_until(lock, wake, [&] {
      return stop_ || !queue_.empty() || (progress_ && std::chrono::steady_clock::now() >= next_progress);
    });
    std::deque<std::string> out;
    out.swap(queue_);
    std::optional<ControlMessage> progress;
    const auto now = std::chrono::steady_clock::now();
    if (progress_ && now >= next_progress) {
      progress.swap(progress_);
      next_progress = now + period / 2;
    }
    const bool stopping = stop_;
    lock.unlock();
    for (const auto& m : out) send(m);
    if (progress) send(EncodeMessage(*progress));
    if (now >= next_heartbeat) {
      ControlMessage hb = Base(MessageType::kHeartbeat);
      const CollectiveTraceEntry c = CurrentCollective();
      if (c.any) {
        CollectiveState s;
        s.group = c.group;
        s.op = c.op;
        s.seq = c.seq;
        s.inside = c.inside;
        s.seconds = std::chrono::duration<double>(now - c.since).count();
        s.group_size = c.group_size;
        hb.collective = s;
      }
      send(EncodeMessage(hb));
      next_heartbeat = now + period;
    }
    lock.lock();
    if (stopping && queue_.empty()) break;
  }
  lock.unlock();
  sock.close();  // linger: queued messages get up to 2 s to leave
}

}  // namespace vlorch::agent
