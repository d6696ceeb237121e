#include "coordinator/coordinator.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <initializer_list>
#include <fstream>
#include <regex>
#include <sstream>

#include <fmt/format.h>
#include <zmq.hpp>
#include <zmq_addon.hpp>

#include "common/durable_file.h"
#include "common/host.h"
#include "common/logging.h"
#include "common/secret.h"
#include "common/utf8.h"
#include "coordinator/http_client.h"
#include "coordinator/http_server.h"
#include "coordinator/job_env.h"
#include "coordinator/launcher.h"
#include "coordinator/state_store.h"
#include "jobs/job_plan.h"
#include "jobs/job_spec.h"
#include "jobs/job_state.h"

namespace vlorch::coord {
namespace fs = std::filesystem;
namespace {

constexpr size_t kMaxJobs = 100000;
constexpr size_t kMaxAttachNames = 4096;
constexpr int kMaxRanksPerJob = 65536;
// Text from worker messages kept in records and events (causes, stage names, paths).
constexpr size_t kMaxCauseBytes = 2000;
constexpr int64_t kMaxLogRead = 1 << 20;

std::string Dump(const nlohmann::json& j) { return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace); }

HttpResponse JsonOk(const nlohmann::json& j, int status = 200) {
  HttpResponse r;
  r.status = status;
  r.body = Dump(j);
  return r;
}

HttpResponse FromStatus(const Status& s) {
  switch (s.code()) {
    case StatusCode::kInvalidArgument: return JsonError(400, s.message());
    case StatusCode::kNotFound: return JsonError(404, s.message());
    case StatusCode::kFailedPrecondition: return JsonError(409, s.message());
    case StatusCode::kUnavailable: return JsonError(503, s.message());
    default: return JsonError(500, s.message());
  }
}

// "localhost" or a loopback IP address, parsed (so "127.0.0.1.evil.example" is not one).
bool IsLoopback(const std::string& address) {
  if (address == "localhost") return true;
  in_addr v4{};
  if (::inet_pton(AF_INET, address.c_str(), &v4) == 1) return (ntohl(v4.s_addr) >> 24) == 127;
  in6_addr v6{};
  return ::inet_pton(AF_INET6, address.c_str(), &v6) == 1 && IN6_IS_ADDR_LOOPBACK(&v6);
}

std::string DefaultWorkerBinary() {
  std::error_code ec;
  const fs::path self = fs::read_symlink("/proc/self/exe", ec);
  if (!ec) {
    for (const fs::path& p : {self.parent_path() / "vlorch-worker", self.parent_path().parent_path() / "worker" / "vlorch-worker"}) {
      if (fs::exists(p, ec)) return p.string();
    }
  }
  return "vlorch-worker";
}

std::string Sanitize(const std::string& name) {
  std::string out;
  for (char c : name) out += IsJobIdChar(c) ? c : '-';
  while (!out.empty() && out[0] == '.') out.erase(0, 1);
  if (out.empty()) out = "job";
  return out.substr(0, 48);
}

// Host header without its port: "127.0.0.1:7010" -> "127.0.0.1", "[::1]:7010" -> "::1".
std::string HostOnly(const std::string& header) {
  if (!header.empty() && header[0] == '[') {
    const auto close = header.find(']');
    return close == std::string::npos ? header : header.substr(1, close - 1);
  }
  const auto colon = header.find(':');
  if (colon != std::string::npos && header.find(':', colon + 1) == std::string::npos) return header.substr(0, colon);
  return header;
}

// A worker message's text fields as they may be kept: valid UTF-8, bounded.
ControlMessage Sanitized(ControlMessage m) {
  for (std::string* s : {&m.host, &m.stage, &m.spec, &m.run_dir, &m.checkpoint})
    *s = SanitizeUtf8(*s, 1024);
  m.cause = SanitizeUtf8(m.cause, kMaxCauseBytes);
  if (m.collective) {
    m.collective->group = SanitizeUtf8(m.collective->group, 256);
    m.collective->op = SanitizeUtf8(m.collective->op, 256);
  }
  return m;
}

std::string JoinArgv(const std::vector<std::string>& argv) {
  std::string out;
  for (const auto& a : argv) {
    if (!out.empty()) out += ' ';
    out += a.find_first_of(" \t'\"") == std::string::npos ? a : "'" + a + "'";
  }
  return out;
}

// The last line of mpirun's output that reads like an error from a rank.
// The last line of `log` holding one of `needles`, cut to 600 bytes.
std::string LastLineWith(const std::string& log, std::initializer_list<const char*> needles) {
  std::istringstream ss(log);
  std::string line, last;
  while (std::getline(ss, line)) {
    for (const char* n : needles)
      if (line.find(n) != std::string::npos) {
        last = line;
        break;
      }
  }
  return last.substr(0, 600);
}

std::string LastErrorLine(const std::string& log) { return LastLineWith(log, {"FAILED", "rror"}); }

}  // namespace

Coordinator::Coordinator(CoordinatorOptions options) : options_(std::move(options)) {}

Coordinator::~Coordinator() { Stop(); }

StatusOr<std::unique_ptr<Coordinator>> Coordinator::Start(CoordinatorOptions options) {
  if (options.state_dir.empty()) return InvalidArgumentError("the coordinator needs a state directory (--state-dir)");
  RETURN_IF_ERROR(CheckOperatorAllowList(options.allow_env));
  if (options.max_attached_jobs < 0) return InvalidArgumentError("max_attached_jobs must be >= 0");
  if (options.worker_binary.empty()) options.worker_binary = DefaultWorkerBinary();
  // One connection per worker rank: thousands of descriptors for large jobs.
  rlimit lim{};
  if (::getrlimit(RLIMIT_NOFILE, &lim) == 0 && lim.rlim_cur < lim.rlim_max) {
    lim.rlim_cur = lim.rlim_max;
    ::setrlimit(RLIMIT_NOFILE, &lim);
  }
  std::error_code ec;
  fs::create_directories(options.state_dir, ec);
  if (ec) return IOError(fmt::format("cannot create state directory {}: {}", options.state_dir, ec.message()));

  std::unique_ptr<Coordinator> c(new Coordinator(std::move(options)));
  c->started_at_ = Now();
  ASSIGN_OR_RETURN(c->store_, StateStore::Open((fs::path(c->options_.state_dir) / "db").string()));
  RETURN_IF_ERROR(c->SetUpToken());
  RETURN_IF_ERROR(c->SetUpCurve());

  auto ctx = std::make_shared<zmq::context_t>(1);
  // The ZAP handler (RFC 27) must be bound before the ROUTER accepts a CURVE handshake.
  auto zap = std::make_shared<zmq::socket_t>(*ctx, zmq::socket_type::rep);
  try {
    zap->set(zmq::sockopt::linger, 0);
    zap->bind("inproc://zeromq.zap.01");
  } catch (const zmq::error_t& e) {
    return InternalError(fmt::format("cannot bind the control plane's ZAP handler: {}", e.what()));
  }
  auto sock = std::make_shared<zmq::socket_t>(*ctx, zmq::socket_type::router);
  try {
    sock->set(zmq::sockopt::curve_server, true);
    sock->set(zmq::sockopt::curve_secretkey, c->curve_server_secret_);
    sock->set(zmq::sockopt::zap_domain, "vlorch");
    sock->set(zmq::sockopt::maxmsgsize, static_cast<int64_t>(kMaxMessageBytes));
    sock->set(zmq::sockopt::linger, 0);
    sock->set(zmq::sockopt::rcvhwm, 100000);
    sock->bind(c->options_.zmq_endpoint);
    c->zmq_bound_ = sock->get(zmq::sockopt::last_endpoint);
  } catch (const zmq::error_t& e) {
    return UnavailableError(fmt::format("cannot bind the control plane to {}: {} (another coordinator running? pick "
                                        "another --zmq endpoint)",
                                        c->options_.zmq_endpoint, e.what()));
  }
  Coordinator* self = c.get();
  c->zap_ = std::thread([self, ctx, zap] {
    // One request at a time: [version, request id, domain, address, routing id, mechanism,
    // client key (32 bytes)] -> [version, request id, status, text, user id, metadata].
    zmq::pollitem_t item{static_cast<void*>(*zap), 0, ZMQ_POLLIN, 0};
    std::vector<zmq::message_t> req;
    while (!self->stop_) {
      try {
        if (zmq::poll(&item, 1, std::chrono::milliseconds(100)) == 0) continue;
        req.clear();
        if (!zmq::recv_multipart(*zap, std::back_inserter(req))) continue;
        std::string user;
        if (req.size() >= 7 && req[5].to_string_view() == "CURVE" && req[6].size() == 32) {
          char z85[41] = {};
          zmq_z85_encode(z85, static_cast<const uint8_t*>(req[6].data()), 32);
          user = self->CurveClient(z85);
        }
        if (user.empty()) ++self->peers_unauthenticated_;
        const std::string id = req.size() >= 2 ? req[1].to_string() : "";
        std::array<zmq::const_buffer, 6> reply = {zmq::str_buffer("1.0"), zmq::buffer(id),
                                                  user.empty() ? zmq::str_buffer("400") : zmq::str_buffer("200"),
                                                  user.empty() ? zmq::str_buffer("unknown key") : zmq::str_buffer("OK"),
                                                  zmq::buffer(user), zmq::str_buffer("")};
        zmq::send_multipart(*zap, reply);
      } catch (const zmq::error_t& e) {
        if (!self->stop_) VLOG_ERROR("control plane: ZAP handler: {}", e.what());
      }
    }
    zap->close();
  });
  // Recovery may launch a job's next stage, which needs the bound endpoint.
  RETURN_IF_ERROR(c->Recover());
  ASSIGN_OR_RETURN(c->http_, HttpServer::Start(c->options_.http_address, c->options_.http_port,
                                               [self](const HttpRequest& r) { return self->Route(r); }));
  if (const auto colon = c->zmq_bound_.rfind(':'); c->options_.publish_token && colon != std::string::npos) {
    c->published_curve_path_ = CurveDiscoveryPath(std::atoi(c->zmq_bound_.c_str() + colon + 1));
    Status published = WriteSecretFile(c->published_curve_path_, FormatCurveFile(c->attach_curve_));
    if (!published.ok()) {
      VLOG_WARNING("coordinator: cannot publish the attach credentials for local ranks ({})", published.message());
      c->published_curve_path_.clear();
    }
  }
  if (c->options_.publish_token) {
    c->published_token_path_ = TokenDiscoveryPath(c->http_->port());
    Status published = WriteSecretFile(c->published_token_path_, c->token_);
    if (!published.ok()) {
      VLOG_WARNING("coordinator: cannot publish the API token for local clients ({}); pass --token or set "
                   "VLORCH_TOKEN from {}",
                   published.message(), (fs::path(c->options_.state_dir) / "http-token").string());
      c->published_token_path_.clear();
    }
  }
  c->receiver_ = std::thread([self, ctx, sock]() mutable {
    zmq::pollitem_t item{static_cast<void*>(*sock), 0, ZMQ_POLLIN, 0};
    std::vector<zmq::message_t> parts;
    std::vector<ControlMessage> batch;
    std::vector<std::string> peers;
    while (!self->stop_) {
      try {
        zmq::poll(&item, 1, std::chrono::milliseconds(100));
        batch.clear();
        peers.clear();
        for (int i = 0; i < 256; ++i) {  // bounded, so HTTP readers wait for mu_ briefly
          parts.clear();
          auto n = zmq::recv_multipart(*sock, std::back_inserter(parts), zmq::recv_flags::dontwait);
          if (!n) break;
          if (parts.size() != 2) {
            ++self->msgs_malformed_;
            VLOG_WARNING("control plane: dropped a message of {} frames (expected one JSON frame)", parts.size() - 1);
            continue;
          }
          auto m = DecodeMessage(parts[1].to_string_view());
          if (!m.ok()) {
            ++self->msgs_malformed_;
            VLOG_WARNING("control plane: dropped a malformed message: {}", SanitizeUtf8(m.status().message(), 500));
            continue;
          }
          batch.push_back(Sanitized(std::move(*m)));
          // The ZAP handler's user id for this connection: which key it proved.
          const char* user = nullptr;
          try {
            user = parts[1].gets("User-Id");
          } catch (const zmq::error_t&) {
          }
          peers.emplace_back(user != nullptr ? user : "");
        }
        if (!batch.empty()) {
          const auto specs = self->PreloadAttachSpecs(batch);
          std::lock_guard<std::mutex> lock(self->mu_);
          for (size_t k = 0; k < batch.size(); ++k) {
            const ControlMessage& m = batch[k];
            try {
              self->Handle(m, peers[k], specs);
            } catch (const std::exception& e) {  // a bug, but never one that ends the daemon
              ++self->msgs_malformed_;
              VLOG_ERROR("control plane: a {} message of job {} rank {} failed: {}", MessageTypeName(m.type), m.job,
                         m.rank, e.what());
            }
          }
        }
        // A short batch means the queue is drained: let messages gather for a moment rather
        // than wake up (and make ZeroMQ's I/O thread signal) for each one. Heartbeats and
        // progress tolerate milliseconds; the CPU saved goes to API requests.
        if (batch.size() < 256) std::this_thread::sleep_for(std::chrono::milliseconds(5));
      } catch (const zmq::error_t& e) {
        VLOG_ERROR("control plane: {}", e.what());
      }
    }
    sock->close();
  });
  c->supervisor_ = std::thread([self] { self->SuperviseLoop(); });
  VLOG_INFO("coordinator: HTTP on {}:{}, workers on {}, state in {}", c->options_.http_address, c->http_->port(),
            c->zmq_bound_, c->options_.state_dir);
  return c;
}

void Coordinator::Stop() {
  if (stop_.exchange(true)) return;
  RequestShutdown();
  if (http_) http_->Stop();
  if (!published_token_path_.empty()) {
    // Only our own publication: a later coordinator on the port may have replaced it.
    auto current = ReadSecretFile(published_token_path_);
    if (current.ok() && *current == token_) ::unlink(published_token_path_.c_str());
  }
  if (receiver_.joinable()) receiver_.join();
  if (zap_.joinable()) zap_.join();
  if (!published_curve_path_.empty()) {
    auto current = ReadSecretFile(published_curve_path_);
    if (current.ok() && current->find(attach_curve_.public_key) != std::string::npos) ::unlink(published_curve_path_.c_str());
  }
  if (supervisor_.joinable()) supervisor_.join();
  std::vector<std::pair<std::string, std::vector<RankInfo>>> metrics;
  {
    std::lock_guard<std::mutex> lock(mu_);
    metrics = CollectMetrics();
  }
  WriteMetrics(metrics);
}

void Coordinator::RequestShutdown() {
  {
    std::lock_guard<std::mutex> lock(wait_mu_);
    shutdown_requested_ = true;
  }
  wait_cv_.notify_all();
}

void Coordinator::Wait() {
  std::unique_lock<std::mutex> lock(wait_mu_);
  wait_cv_.wait(lock, [this] { return shutdown_requested_; });
}

bool Coordinator::WaitFor(double seconds) {
  std::unique_lock<std::mutex> lock(wait_mu_);
  return wait_cv_.wait_for(lock, std::chrono::duration<double>(seconds), [this] { return shutdown_requested_; });
}

int Coordinator::http_port() const { return http_ ? http_->port() : 0; }

Status Coordinator::SetUpToken() {
  if (!options_.token.empty()) {
    if (options_.token.size() < 16)
      return InvalidArgumentError("the API token must be at least 16 characters (leave --token empty and the "
                                  "coordinator makes one)");
    token_ = options_.token;
    return Status::OK();
  }
  const std::string path = (fs::path(options_.state_dir) / "http-token").string();
  auto kept = ReadSecretFile(path);
  if (kept.ok() && kept->size() >= 32) {
    token_ = *kept;
    return Status::OK();
  }
  if (!kept.ok() && kept.status().code() != StatusCode::kNotFound) return kept.status();
  ASSIGN_OR_RETURN(token_, RandomHexToken(32));
  return WriteSecretFile(path, token_);
}

namespace {

StatusOr<std::pair<std::string, std::string>> NewCurveKeyPair() {
  char pub[41] = {}, sec[41] = {};
  if (zmq_curve_keypair(pub, sec) != 0)
    return InternalError(fmt::format("cannot make a CURVE key pair: {} (libzmq built without libsodium?)",
                                     zmq_strerror(zmq_errno())));
  return std::make_pair(std::string(pub), std::string(sec));
}

// A key pair kept in a secret file as "public <z85>\nsecret <z85>\n"; made when absent.
StatusOr<std::pair<std::string, std::string>> KeptKeyPair(const std::string& path) {
  auto text = ReadSecretFile(path);
  if (text.ok()) {
    std::istringstream in(*text);
    std::string k1, pub, k2, sec;
    in >> k1 >> pub >> k2 >> sec;
    if (k1 == "public" && k2 == "secret" && pub.size() == 40 && sec.size() == 40) return std::make_pair(pub, sec);
    return FailedPreconditionError(fmt::format("{} is not a key file (public/secret lines): remove it and a new key "
                                               "pair is made (ranks then need the new public key)",
                                               path));
  }
  if (text.status().code() != StatusCode::kNotFound) return text.status();
  ASSIGN_OR_RETURN(auto pair, NewCurveKeyPair());
  RETURN_IF_ERROR(WriteSecretFile(path, fmt::format("public {}\nsecret {}\n", pair.first, pair.second)));
  return pair;
}

std::string IncarnationUser(const std::string& job, int64_t incarnation) {
  return fmt::format("job:{}:{}", job, incarnation);
}

}  // namespace

Status Coordinator::SetUpCurve() {
  if (!zmq_has("curve"))
    return FailedPreconditionError("this libzmq has no CURVE support (built without libsodium): the control plane "
                                   "cannot authenticate workers; install Debian's libzmq5");
  ASSIGN_OR_RETURN(auto server, KeptKeyPair((fs::path(options_.state_dir) / "zmq-server-key").string()));
  ASSIGN_OR_RETURN(auto attach, KeptKeyPair((fs::path(options_.state_dir) / "zmq-attach-key").string()));
  curve_server_public_ = server.first;
  curve_server_secret_ = server.second;
  attach_curve_ = CurveCredentials{server.first, attach.first, attach.second};
  std::lock_guard<std::mutex> lock(curve_mu_);
  curve_clients_[attach.first] = "attach";
  return Status::OK();
}

std::string Coordinator::CurveClient(const std::string& client_key) {
  std::lock_guard<std::mutex> lock(curve_mu_);
  auto it = curve_clients_.find(client_key);
  return it == curve_clients_.end() ? "" : it->second;
}

Status Coordinator::IssueIncarnationKey(JobRecord& job, std::map<std::string, std::string>* env) {
  ASSIGN_OR_RETURN(auto pair, NewCurveKeyPair());
  {
    std::lock_guard<std::mutex> lock(curve_mu_);
    if (!job.curve_public.empty()) curve_clients_.erase(job.curve_public);  // the last incarnation's ranks are done
    curve_clients_[pair.first] = IncarnationUser(job.id, job.incarnation);
  }
  job.curve_public = pair.first;
  (*env)[kCurveServerEnv] = curve_server_public_;
  (*env)[kCurvePublicEnv] = pair.first;
  (*env)[kCurveSecretEnv] = pair.second;
  return Status::OK();
}

std::map<std::string, std::shared_ptr<const JobSpec>> Coordinator::PreloadAttachSpecs(
    const std::vector<ControlMessage>& batch) {
  std::map<std::string, std::string> wanted;  // job -> spec path
  for (const auto& m : batch) {
    if (m.type == MessageType::kRegister && m.attach && !m.spec.empty()) wanted.emplace(m.job, m.spec);
  }
  std::map<std::string, std::shared_ptr<const JobSpec>> out;
  if (wanted.empty()) return out;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto it = wanted.begin(); it != wanted.end();) it = Find(it->first) ? wanted.erase(it) : std::next(it);
  }
  // Outside mu_: the path comes from a peer. LoadJobSpec reads regular files only, bounded,
  // and never blocks on a FIFO or device.
  for (const auto& [job, path] : wanted) {
    auto spec = path[0] == '/' ? LoadJobSpec(path) : StatusOr<JobSpec>(InvalidArgumentError("relative spec path"));
    out[job] = spec.ok() ? std::make_shared<const JobSpec>(std::move(*spec)) : nullptr;
    if (!spec.ok()) VLOG_WARNING("control plane: attached job {}: spec {} not used: {}", job, path, spec.status().message());
  }
  return out;
}

JobRecord* Coordinator::Find(const std::string& id) {
  auto it = jobs_.find(id);
  return it == jobs_.end() ? nullptr : &it->second;
}

void Coordinator::Persist(JobRecord& job) {
  Status s = store_->PutJob(job);
  if (!s.ok()) VLOG_ERROR("coordinator: cannot persist job {}: {}", job.id, s.ToString());
  runtime_[job.id].job_dirty = false;
}

void Coordinator::Event(JobRecord& job, const std::string& kind, const std::string& message, nlohmann::json fields) {
  JobEvent e;
  e.time = Now();
  e.kind = kind;
  e.message = message;
  e.fields = std::move(fields);
  auto seq = store_->AppendEvent(job.id, e);
  if (!seq.ok()) VLOG_ERROR("coordinator: cannot append an event to {}: {}", job.id, seq.status().ToString());
  VLOG_INFO("job {}: {}: {}", job.id, kind, message);
}

void Coordinator::Transition(JobRecord& job, JobState to) {
  if (job.state == to) return;
  if (!CanTransition(job.state, to)) {
    VLOG_ERROR("job {}: refusing transition {} -> {}", job.id, JobStateName(job.state), JobStateName(to));
    return;
  }
  job.state = to;
  if (IsTerminal(to)) job.finished_at = Now();
  Persist(job);
}

Status Coordinator::Recover() {
  ASSIGN_OR_RETURN(std::vector<JobRecord> jobs, store_->LoadJobs());
  ASSIGN_OR_RETURN(std::set<std::string> attach_names, store_->LoadAttachNames());
  std::lock_guard<std::mutex> lock(mu_);
  attach_names_ = std::move(attach_names);
  const double now = Now();
  for (auto& loaded : jobs) {
    auto [it, inserted] = jobs_.emplace(loaded.id, std::move(loaded));
    JobRecord& job = it->second;
    auto ranks = store_->LoadRanks(job.id);
    if (ranks.ok()) {
      for (auto& r : *ranks) {
        if (r.incarnation != job.incarnation) continue;
        r.last_heartbeat = now;  // a grace period: workers reconnect on their own
        if (r.coll_inside) r.coll_since = now;
        job.ranks[r.rank] = r;
      }
    }
    Runtime& rt = runtime_[job.id];
    rt.all_registered = job.np > 0 && static_cast<int>(job.ranks.size()) >= job.np;
    if (!job.curve_public.empty() && !IsTerminal(job.state)) {
      std::lock_guard<std::mutex> keys(curve_mu_);
      curve_clients_[job.curve_public] = IncarnationUser(job.id, job.incarnation);  // adopted ranks reconnect
    }
    if (job.launcher_pid > 0) {
      if (StillRunning(static_cast<pid_t>(job.launcher_pid), job.launcher_start_ticks)) {
        rt.adopted = true;
        Event(job, "adopted",
              fmt::format("coordinator restarted; mpirun (pid {}) of incarnation {} still runs, tracking it again",
                          job.launcher_pid, job.incarnation));
      } else if (!IsTerminal(job.state) || job.state == JobState::kCancelled) {
        OnLauncherExit(job, -1, 0, false);
      }
    }
  }
  if (!jobs_.empty()) VLOG_INFO("coordinator: recovered {} jobs from {}", jobs_.size(), options_.state_dir);
  return Status::OK();
}

std::string Coordinator::DescribeRank(const JobRecord& job, int rank) const {
  auto it = job.ranks.find(rank);
  if (it == job.ranks.end()) return fmt::format("rank {}", rank);
  return fmt::format("rank {} (host {}, pid {})", rank, it->second.host, it->second.pid);
}

void Coordinator::Handle(const ControlMessage& m, const std::string& peer,
                         const std::map<std::string, std::shared_ptr<const JobSpec>>& attach_specs) {
  const double now = Now();
  // A launched incarnation's key speaks for that job and incarnation only; the attach key for
  // attached jobs only. Anything else is a peer claiming what it cannot prove.
  const bool attach_peer = peer == "attach";
  const bool registers_as_attached = m.type == MessageType::kRegister && m.attach;
  const bool registers_as_launched = m.type == MessageType::kRegister && !m.attach;
  if (attach_peer ? registers_as_launched : peer != IncarnationUser(m.job, m.incarnation) || registers_as_attached) {
    if (msgs_refused_++ % 1000 == 0)
      VLOG_WARNING("control plane: a {} message for job {} incarnation {} came on a connection authenticated as '{}': "
                   "dropped",
                   MessageTypeName(m.type), m.job, m.incarnation, peer.empty() ? "nobody" : peer);
    return;
  }
  JobRecord* job = Find(m.job);
  if (job != nullptr && job->attached != attach_peer) {
    ++msgs_refused_;
    return;
  }
  if (job == nullptr) {
    if (m.type != MessageType::kRegister || !m.attach || jobs_.size() >= kMaxJobs) {
      ++msgs_unknown_job_;
      return;
    }
    if (!options_.open_attach && attach_names_.count(m.job) == 0) {
      if (msgs_refused_++ % 1000 == 0)
        VLOG_WARNING("control plane: refused to attach job {}: the name is not registered (run `vlorch attach {}` "
                     "before starting its mpirun)",
                     m.job, m.job);
      return;
    }
    const int attached = static_cast<int>(std::count_if(jobs_.begin(), jobs_.end(), [](const auto& kv) {
      return kv.second.attached && !IsTerminal(kv.second.state);
    }));
    if (attached >= options_.max_attached_jobs || m.world > kMaxRanksPerJob) {
      if (msgs_refused_++ % 1000 == 0)
        VLOG_WARNING("control plane: refused to attach job {} ({} ranks): {} attached jobs run (limit {}), at most {} "
                     "ranks a job",
                     m.job, m.world, attached, options_.max_attached_jobs, kMaxRanksPerJob);
      return;
    }
    // Attach mode: the user started mpirun; track the job from its first registration.
    JobRecord j;
    j.id = m.job;
    j.name = m.job;
    j.spec_path = m.spec;
    j.run_dir = m.run_dir;
    j.np = m.world;
    j.attached = true;
    j.incarnation = m.incarnation;
    j.submitted_at = j.started_at = now;
    j.restart_budget = 0;
    if (auto it = attach_specs.find(m.job); it != attach_specs.end() && it->second) {
      const JobSpec& spec = *it->second;
      j.name = spec.name;
      for (const auto& s : spec.stages) {
        StageRecord st;
        st.name = s.name;
        j.stages.push_back(st);
      }
    }
    j.state = JobState::kRunning;
    job = &jobs_.emplace(j.id, std::move(j)).first->second;
    Persist(*job);
    Event(*job, "attached",
          fmt::format("{} ranks started outside the coordinator (attach mode); tracking only, no restarts", m.world));
  }
  if (job->attached && m.incarnation > job->incarnation) {
    if (m.type != MessageType::kRegister || m.world > kMaxRanksPerJob) {
      ++msgs_stale_;
      return;
    }
    job->incarnation = m.incarnation;
    job->np = m.world;
    job->ranks.clear();
    runtime_[job->id].all_registered = false;
    if (IsTerminal(job->state)) {
      job->state = JobState::kRunning;  // the user re-ran mpirun: a new attached run
      job->finished_at = 0;
    }
    Persist(*job);
  }
  if (m.incarnation != job->incarnation) {
    ++msgs_stale_;
    return;
  }
  // A rank outside the job's world (or a registration claiming another world) is not one of
  // its ranks: counted, never stored, so forged ranks cannot grow the table or the state DB.
  if (m.rank >= job->np || (m.type == MessageType::kRegister && m.world != job->np)) {
    if (msgs_refused_++ % 1000 == 0)
      VLOG_WARNING("control plane: job {} has {} ranks; dropped a {} message from rank {} (world {})", job->id, job->np,
                   MessageTypeName(m.type), m.rank, m.world);
    return;
  }
  ++msgs_ok_;
  Runtime& rt = runtime_[job->id];
  RankInfo& r = job->ranks[m.rank];
  r.rank = m.rank;
  r.incarnation = m.incarnation;
  r.last_heartbeat = now;
  rt.ranks_dirty = true;
  auto stage_record = [&](const std::string& name) -> StageRecord* {
    for (auto& s : job->stages)
      if (s.name == name) return &s;
    return nullptr;
  };
  switch (m.type) {
    case MessageType::kRegister: {
      r.host = m.host;
      r.pid = m.pid;
      r.pid_start_ticks = m.host == HostName() && m.pid > 0 ? ProcessStartTicks(static_cast<pid_t>(m.pid)) : 0;
      r.registered_at = now;
      r.stage = m.stage;
      const int registered = static_cast<int>(std::count_if(job->ranks.begin(), job->ranks.end(),
                                                            [](const auto& kv) { return kv.second.registered_at > 0; }));
      if (!rt.all_registered && registered >= std::max(job->np, m.world)) {
        rt.all_registered = true;
        std::map<std::string, int> hosts;
        for (const auto& [_, info] : job->ranks) ++hosts[info.host];
        std::string where;
        for (const auto& [h, n] : hosts) where += fmt::format("{}{} ({})", where.empty() ? "" : ", ", h, n);
        if (job->state == JobState::kLaunching) Transition(*job, JobState::kRunning);
        if (StageRecord* s = stage_record(m.stage)) s->status = "running";
        Event(*job, "running",
              fmt::format("incarnation {}: all {} ranks registered on {}; stage '{}'", job->incarnation, m.world, where,
                          m.stage),
              {{"incarnation", job->incarnation}, {"stage", m.stage}});
        Persist(*job);
      }
      break;
    }
    case MessageType::kHeartbeat:
      if (m.collective) {
        r.coll_group = m.collective->group;
        r.coll_op = m.collective->op;
        r.coll_seq = m.collective->seq;
        r.coll_inside = m.collective->inside;
        r.coll_since = now - m.collective->seconds;
        r.coll_group_size = m.collective->group_size;
      }
      break;
    case MessageType::kProgress: {
      r.stage = m.stage;
      r.step = m.step;
      r.loss = m.loss;
      r.samples_per_second = m.samples_per_second;
      r.data_wait_seconds = m.data_wait_seconds;
      if (m.rank != 0) break;
      if (StageRecord* s = stage_record(m.stage)) {
        s->step = m.step;
        if (m.total_steps > 0) s->total_steps = m.total_steps;
        s->status = "running";
      }
      job->loss = m.loss;
      job->samples_per_second = m.samples_per_second;
      if (job->last_progress_step >= 0 && m.step > job->last_progress_step && now > job->last_progress_at) {
        const double inst = static_cast<double>(m.step - job->last_progress_step) / (now - job->last_progress_at);
        job->steps_per_second = job->steps_per_second > 0 ? 0.7 * job->steps_per_second + 0.3 * inst : inst;
      }
      if (m.step != job->last_progress_step) job->last_progress_step = m.step, job->last_progress_at = now;
      rt.job_dirty = true;
      break;
    }
    case MessageType::kCheckpoint:
      if (StageRecord* s = stage_record(m.stage)) {
        s->last_checkpoint = m.checkpoint;
        s->last_checkpoint_step = m.step;
      }
      Event(*job, "checkpoint", fmt::format("stage '{}' step {} committed: {}", m.stage, m.step, m.checkpoint),
            {{"stage", m.stage}, {"step", m.step}, {"checkpoint", m.checkpoint}});
      Persist(*job);
      break;
    case MessageType::kStageDone:
      if (m.rank != 0) break;
      if (StageRecord* s = stage_record(m.stage)) {
        s->status = "done";
        s->step = m.step;
        s->last_checkpoint = m.checkpoint;
        s->last_checkpoint_step = m.step;
      }
      Event(*job, "stage_done", fmt::format("stage '{}' sealed after {} steps: {}", m.stage, m.step, m.checkpoint),
            {{"stage", m.stage}, {"step", m.step}, {"checkpoint", m.checkpoint}});
      if (job->attached && !job->stages.empty() && job->stages.back().name == m.stage) {
        Transition(*job, JobState::kSucceeded);
        Event(*job, "succeeded", "the last stage is sealed");
      }
      Persist(*job);
      break;
    case MessageType::kError: {
      const std::string cause = fmt::format("{} reported: {}", DescribeRank(*job, m.rank), m.cause);
      Event(*job, "error", cause, {{"rank", m.rank}, {"stage", m.stage}});
      if (job->pending_cause.empty()) job->pending_cause = cause;
      if (job->attached) {
        job->failure_causes.push_back(cause);
        Transition(*job, JobState::kFailed);
      }
      Persist(*job);
      break;
    }
  }
}

void Coordinator::Launch(JobRecord& job) {
  Runtime& rt = runtime_[job.id];
  auto fail = [&](const std::string& cause) {
    job.failure_causes.push_back(cause);
    Transition(job, JobState::kLaunching);
    Transition(job, JobState::kFailed);
    Event(job, "failed", cause);
    Persist(job);
  };
  auto spec = LoadJobSpec(job.spec_path);
  if (!spec.ok()) return fail(fmt::format("cannot launch: {}", spec.status().message()));
  auto progress = ReadJobProgress(*spec, job.run_dir);
  if (!progress.ok()) return fail(fmt::format("cannot read stage state: {}", progress.status().message()));
  int next = -1;
  for (size_t i = 0; i < progress->size(); ++i) {
    const auto& p = (*progress)[i];
    if (i < job.stages.size()) {
      if (p.status == StageStatus::kSealed) {
        job.stages[i].status = "done";
        job.stages[i].last_checkpoint = p.seal->checkpoint;
        job.stages[i].step = p.seal->steps;
        job.stages[i].last_checkpoint_step = p.seal->steps;
      } else if (p.latest_step >= 0) {
        job.stages[i].last_checkpoint_step = p.latest_step;
      }
    }
    if (next < 0 && p.status != StageStatus::kSealed) next = static_cast<int>(i);
  }
  if (next < 0) {
    job.current_stage = static_cast<int>(job.stages.size()) - 1;
    Transition(job, JobState::kLaunching);
    Transition(job, JobState::kRunning);
    Transition(job, JobState::kSucceeded);
    Event(job, "succeeded", "every stage is sealed");
    return;
  }
  job.current_stage = next;
  const std::string& stage = job.stages[next].name;
  job.incarnation += 1;
  job.ranks.clear();
  job.pending_cause.clear();
  job.last_progress_step = -1;
  job.steps_per_second = 0;
  rt = Runtime{};
  job.log_dir = (fs::path(job.run_dir) / "logs" / fmt::format("incarnation-{}", job.incarnation)).string();
  std::error_code ec;
  fs::create_directories(fs::path(job.log_dir) / "ranks", ec);
  if (ec) return fail(fmt::format("cannot create log directory {}: {}", job.log_dir, ec.message()));

  std::string endpoint = zmq_bound_;
  if (auto pos = endpoint.find("0.0.0.0"); pos != std::string::npos) endpoint.replace(pos, 7, HostName());
  LaunchCommand c;
  c.mpirun = options_.mpirun;
  c.np = job.np;
  c.hostfile = job.hostfile;
  c.output_dir = (fs::path(job.log_dir) / "ranks").string();
  c.env = DefaultForwardedEnv();
  for (const auto& [k, v] : job.env) c.env[k] = v;
  const unsigned cores = std::max(1u, std::thread::hardware_concurrency());
  c.oversubscribe = c.env.count("VLORCH_OVERSUBSCRIBE") ? c.env["VLORCH_OVERSUBSCRIBE"] == "1"
                                                        : job.hostfile.empty() && job.np > static_cast<int>(cores);
  c.env.erase("VLORCH_OVERSUBSCRIBE");
  if (Status keyed = IssueIncarnationKey(job, &c.env); !keyed.ok()) return fail(keyed.message());
  c.program = {options_.worker_binary,
               "--job", job.spec_path,
               "--stage", stage,
               "--run-dir", job.run_dir,
               "--coordinator", endpoint,
               "--job-id", job.id,
               "--incarnation", std::to_string(job.incarnation),
               "--heartbeat-interval", fmt::format("{}", options_.heartbeat_interval_s),
               "--preempted-exit-code", std::to_string(options_.preempted_exit_code)};
  const std::vector<std::string> argv = ComposeMpirun(c);
  auto proc = Spawn(argv, c.env, (fs::path(job.log_dir) / "mpirun.log").string());
  if (!proc.ok()) return fail(proc.status().message());
  job.launcher_pid = proc->pid;
  job.launcher_start_ticks = proc->start_ticks;
  if (job.started_at == 0) job.started_at = Now();
  Transition(job, JobState::kLaunching);
  Event(job, "launched",
        fmt::format("incarnation {}: stage '{}' ({}/{}) on {} ranks, mpirun pid {}", job.incarnation, stage, next + 1,
                    job.stages.size(), job.np, proc->pid),
        {{"incarnation", job.incarnation}, {"stage", stage}, {"command", JoinArgv(argv)}, {"log_dir", job.log_dir}});
  Persist(job);
}

void Coordinator::StopIncarnation(JobRecord& job, const std::string& cause) {
  if (!job.pending_cause.empty()) return;  // already stopping
  job.pending_cause = cause;
  Event(job, "failure_detected", cause + "; stopping the incarnation", {{"incarnation", job.incarnation}});
  Persist(job);
  // The ranks are broken: no graceful checkpoint, restart from the last committed one. A
  // rank's pid is signalled only when it is provably that rank's process: on this host, the
  // same process as at registration (start time) and a descendant of this incarnation's
  // mpirun. Checked before mpirun dies (its children are reparented then). A pid a peer
  // merely claimed is never signalled.
  const std::string host = HostName();
  std::vector<pid_t> provable;
  const pid_t launcher = static_cast<pid_t>(job.launcher_pid);
  for (const auto& [rank, info] : job.ranks) {
    if (info.host != host || info.pid <= 0) continue;
    const pid_t pid = static_cast<pid_t>(info.pid);
    const int64_t ticks = ProcessStartTicks(pid);
    if (launcher > 0 && ticks != 0 && ticks == info.pid_start_ticks && ticks >= job.launcher_start_ticks &&
        pid != launcher && IsDescendantOf(pid, launcher)) {
      provable.push_back(pid);
    } else if (ticks != 0) {
      ++kills_refused_;
      VLOG_WARNING("job {}: rank {} claims pid {}, which is not provably a process of incarnation {}'s mpirun: not "
                   "signalled",
                   job.id, rank, pid, job.incarnation);
    }
  }
  Terminate(launcher, /*force=*/true);
  for (pid_t pid : provable) ::kill(pid, SIGKILL);
  runtime_[job.id].stop_requested_at = Now();
}

void Coordinator::OnLauncherExit(JobRecord& job, int code, int signal, bool known) {
  Runtime& rt = runtime_[job.id];
  job.launcher_pid = 0;
  job.launcher_start_ticks = 0;
  rt.adopted = false;
  rt.stop_requested_at = 0;
  ExitStatus es{code, signal};
  const std::string how = known ? "mpirun " + es.ToString() : "mpirun ended while no coordinator watched it";
  if (job.state == JobState::kCancelled) {
    Event(job, "stopped", fmt::format("incarnation {} stopped ({})", job.incarnation, how));
    Persist(job);
    return;
  }
  if (job.current_stage < 0 || job.current_stage >= static_cast<int>(job.stages.size())) return;
  StageRecord& stage = job.stages[job.current_stage];
  auto seal = ReadStageSeal(job.run_dir, stage.name);
  if (seal.ok() && seal->has_value()) {
    if (stage.status != "done") {
      stage.status = "done";
      stage.step = (*seal)->steps;
      stage.last_checkpoint = (*seal)->checkpoint;
      stage.last_checkpoint_step = (*seal)->steps;
      Event(job, "stage_done", fmt::format("stage '{}' sealed after {} steps: {}", stage.name, (*seal)->steps,
                                           (*seal)->checkpoint));
    }
    if (job.current_stage + 1 == static_cast<int>(job.stages.size())) {
      if (job.state == JobState::kLaunching) Transition(job, JobState::kRunning);
      Transition(job, JobState::kSucceeded);
      Event(job, "succeeded", fmt::format("all {} stages sealed; {} restart{}", job.stages.size(), job.restarts, job.restarts == 1 ? "" : "s"));
      return;
    }
    if (job.state == JobState::kLaunching) Transition(job, JobState::kRunning);
    Launch(job);  // the next stage
    return;
  }
  // Preempted: the ranks exited with the preempted code, or (mpirun itself was signalled and
  // exited 1) rank 0 left a record of this incarnation's preemption checkpoint.
  auto preempted = ReadPreemptionRecord(job.run_dir, stage.name);
  if (preempted && preempted->incarnation != job.incarnation) preempted.reset();  // an earlier launch's
  if ((known && code == options_.preempted_exit_code) || preempted) {
    if (preempted && preempted->step > stage.last_checkpoint_step) {
      stage.last_checkpoint = preempted->checkpoint;
      stage.last_checkpoint_step = preempted->step;
    }
    Event(job, "preempted",
          fmt::format("incarnation {} was preempted (SIGTERM; {}) and committed a checkpoint at step {}; requeued",
                      job.incarnation, how, stage.last_checkpoint_step));
    Transition(job, JobState::kQueued);
    return;
  }
  std::string cause = job.pending_cause;
  const std::string log = ReadTail((fs::path(job.log_dir) / "mpirun.log").string(), 64 * 1024);
  if (cause.empty()) {
    std::string culprit = MpirunCulprit(log);
    std::smatch m;
    if (!culprit.empty() && std::regex_search(culprit, m, std::regex(R"(^rank (\d+))"))) {
      const int rank = std::stoi(m[1].str());
      auto it = job.ranks.find(rank);
      if (it != job.ranks.end()) culprit += fmt::format(" (pid {})", it->second.pid);
    }
    cause = culprit.empty() ? how : culprit;
  }
  cause += fmt::format(" in stage '{}'", stage.name);
  if (stage.last_checkpoint_step >= 0) cause += fmt::format(" (last committed step {})", stage.last_checkpoint_step);
  job.failure_causes.push_back(cause);
  if (known && code == 2 && job.pending_cause.empty()) {
    const std::string detail = LastErrorLine(log);
    Transition(job, JobState::kFailed);
    Event(job, "failed",
          fmt::format("bad input, not restarting: {}{}; fix it and run `vlorch resume {}`", cause,
                      detail.empty() ? "" : ": " + detail, job.id),
          {{"cause", cause}});
    return;
  }
  // Exit 4: a rank's disk ran out of space (worker_main.cc). Restarting cannot help until
  // someone frees space, and each try would fail the same way.
  if (known && code == 4 && job.pending_cause.empty()) {
    const std::string detail = LastLineWith(log, {"ResourceExhausted", "out of space", "free:"});
    Transition(job, JobState::kFailed);
    Event(job, "failed",
          fmt::format("out of disk space, not restarting: {}{}; free space and run `vlorch resume {}` (it continues "
                      "from the last committed checkpoint)",
                      cause, detail.empty() ? "" : ": " + detail, job.id),
          {{"cause", cause}});
    return;
  }
  if (job.restarts < job.restart_budget) {
    job.restarts += 1;
    const double delay =
        std::min(options_.backoff_max_s, options_.backoff_initial_s * std::pow(2.0, job.restarts - 1));
    job.next_launch_at = Now() + delay;
    Transition(job, JobState::kRestarting);
    Event(job, "restarting",
          fmt::format("{}; restart {}/{} in {:.1f} s from the last committed checkpoint", cause, job.restarts,
                      job.restart_budget, delay),
          {{"cause", cause}, {"restarts", job.restarts}, {"delay_s", delay}});
  } else {
    Transition(job, JobState::kFailed);
    Event(job, "failed",
          fmt::format("{}; the restart budget ({}) is spent; `vlorch resume {}` continues from the last committed "
                      "checkpoint",
                      cause, job.restart_budget, job.id),
          {{"cause", cause}});
  }
  Persist(job);
}

void Coordinator::CheckLiveness(JobRecord& job, double now) {
  if (!job.pending_cause.empty()) return;
  // Lost heartbeats.
  for (const auto& [rank, info] : job.ranks) {
    if (info.registered_at <= 0) continue;
    const double age = now - info.last_heartbeat;
    if (age > options_.heartbeat_timeout_s) {
      const std::string cause = fmt::format("{} sent no heartbeat for {:.1f} s (timeout {:g} s); last seen in stage "
                                            "'{}' at step {}",
                                            DescribeRank(job, rank), age, options_.heartbeat_timeout_s, info.stage, info.step);
      if (job.attached) {
        job.failure_causes.push_back(cause);
        Event(job, "failed", cause + " (attach mode: the coordinator does not restart jobs it did not launch)");
        Transition(job, JobState::kFailed);
      } else {
        StopIncarnation(job, cause);
      }
      return;
    }
  }
  // Hangs: ranks waiting in the same collective for longer than the timeout while others of
  // the group have not entered it.
  const RankInfo* oldest = nullptr;
  for (const auto& [rank, info] : job.ranks) {
    if (info.coll_inside && now - info.coll_since > options_.hang_timeout_s && (!oldest || info.coll_since < oldest->coll_since))
      oldest = &info;
  }
  if (oldest == nullptr) return;
  std::vector<int> waiting, missing;
  for (const auto& [rank, info] : job.ranks) {
    if (info.coll_inside && info.coll_group == oldest->coll_group && info.coll_seq == oldest->coll_seq) waiting.push_back(rank);
  }
  const int group_size = oldest->coll_group_size > 0 ? oldest->coll_group_size : std::max(job.np, static_cast<int>(job.ranks.size()));
  if (static_cast<int>(waiting.size()) >= group_size) return;  // all entered: slow, not hung (the communicator times out)
  // Candidates: ranks not waiting there; those furthest behind on that group first.
  std::vector<const RankInfo*> behind;
  for (const auto& [rank, info] : job.ranks) {
    if (std::find(waiting.begin(), waiting.end(), rank) == waiting.end()) behind.push_back(&info);
  }
  for (int r = 0; r < std::max(job.np, group_size); ++r) {
    if (job.ranks.count(r) == 0) missing.push_back(r);  // never reported at all
  }
  std::sort(behind.begin(), behind.end(), [&](const RankInfo* a, const RankInfo* b) {
    const uint64_t sa = a->coll_group == oldest->coll_group ? a->coll_seq : 0;
    const uint64_t sb = b->coll_group == oldest->coll_group ? b->coll_seq : 0;
    return sa < sb;
  });
  const size_t culprits = static_cast<size_t>(group_size) - waiting.size();
  std::vector<std::string> names;
  for (size_t i = 0; i < behind.size() && names.size() < culprits; ++i) {
    const RankInfo& b = *behind[i];
    std::string last = b.coll_op.empty()
                           ? "it has made no communicator call yet"
                           : fmt::format("its last call was {} #{} on group '{}', {} {:.1f} s ago", b.coll_op, b.coll_seq,
                                         b.coll_group, b.coll_inside ? "entered" : "left", now - b.coll_since);
    names.push_back(fmt::format("rank {} (host {}, pid {}; {}; stage '{}', step {})", b.rank, b.host, b.pid, last, b.stage,
                                b.step));
  }
  for (int r : missing) {
    if (names.size() < culprits) names.push_back(fmt::format("rank {} (never registered)", r));
  }
  std::string waiting_list;
  for (int r : waiting) waiting_list += (waiting_list.empty() ? "" : ", ") + std::to_string(r);
  StopIncarnation(job, fmt::format("hang: {} has not entered {} #{} on group '{}', where ranks {} have waited {:.1f} s "
                                   "(timeout {:g} s)",
                                   fmt::join(names, "; "), oldest->coll_op, oldest->coll_seq, oldest->coll_group,
                                   waiting_list, now - oldest->coll_since, options_.hang_timeout_s));
}

std::vector<std::pair<std::string, std::vector<RankInfo>>> Coordinator::CollectMetrics() {
  std::vector<std::pair<std::string, std::vector<RankInfo>>> out;
  for (auto& [id, job] : jobs_) {
    Runtime& rt = runtime_[id];
    if (rt.ranks_dirty) {
      std::vector<RankInfo> ranks;
      ranks.reserve(job.ranks.size());
      for (const auto& [r, info] : job.ranks) ranks.push_back(info);
      out.emplace_back(id, std::move(ranks));
      rt.ranks_dirty = false;
    }
    if (rt.job_dirty) Persist(job);  // job records stay ordered with the other writes under mu_
  }
  return out;
}

void Coordinator::WriteMetrics(const std::vector<std::pair<std::string, std::vector<RankInfo>>>& metrics) {
  // Only the supervisor (and Stop, after it) writes rank metrics, so these writes stay ordered
  // without holding mu_ while thousands of records are serialised.
  for (const auto& [id, ranks] : metrics) {
    Status s = store_->PutRanks(id, ranks);
    if (!s.ok()) VLOG_ERROR("coordinator: {}", s.ToString());
  }
}

void Coordinator::SuperviseLoop() {
  double last_flush = Now();
  while (!stop_) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    std::unique_lock<std::mutex> lock(mu_);
    const double now = Now();
    int active = 0;
    for (const auto& [id, job] : jobs_) {
      if (!job.attached && (job.state == JobState::kLaunching || job.state == JobState::kRunning)) ++active;
    }
    for (auto& [id, job] : jobs_) {
      Runtime& rt = runtime_[id];
      if (job.launcher_pid > 0) {
        const pid_t pid = static_cast<pid_t>(job.launcher_pid);
        if (rt.adopted) {
          if (!StillRunning(pid, job.launcher_start_ticks)) OnLauncherExit(job, -1, 0, false);
        } else if (auto exit = Reap(pid)) {
          OnLauncherExit(job, exit->code, exit->signal, exit->code >= 0 || exit->signal != 0);
        }
        if (job.launcher_pid > 0 && rt.stop_requested_at > 0 && now - rt.stop_requested_at > options_.terminate_grace_s) {
          Terminate(pid, /*force=*/true);
          rt.stop_requested_at = now;
        }
      }
      switch (job.state) {
        case JobState::kQueued:
          if (active < options_.max_running_jobs) {
            Launch(job);
            ++active;
          }
          break;
        case JobState::kRestarting:
          if (now >= job.next_launch_at) Launch(job);
          break;
        case JobState::kLaunching:
        case JobState::kRunning:
          if (job.attached || job.launcher_pid > 0) CheckLiveness(job, now);
          break;
        default:
          break;
      }
    }
    if (now - last_flush >= 1.0) {
      last_flush = now;
      auto metrics = CollectMetrics();
      lock.unlock();
      WriteMetrics(metrics);
    }
  }
}

StatusOr<std::string> Coordinator::Submit(const SubmitRequest& req) {
  if (req.spec_path.empty() || req.spec_path[0] != '/')
    return InvalidArgumentError(fmt::format("spec_path '{}' must be an absolute path the coordinator can read", req.spec_path));
  RETURN_IF_ERROR(CheckJobEnv(req.env, options_.allow_env));
  ASSIGN_OR_RETURN(JobSpec spec, LoadJobSpec(req.spec_path));
  ASSIGN_OR_RETURN(std::string yaml, ReadRegularFile(req.spec_path, kMaxJobSpecBytes));
  int np = req.np;
  if (!req.hostfile.empty()) {
    ASSIGN_OR_RETURN(std::vector<HostSlots> hosts, ParseHostfile(req.hostfile));
    const int slots = static_cast<int>(TotalSlots(hosts));  // <= kMaxHostfileSlots
    if (np == 0) np = slots;
    if (np > slots)
      return InvalidArgumentError(fmt::format("{} ranks asked but hostfile {} has {} slots: pass --np {} or add hosts",
                                              np, req.hostfile, slots, slots));
  }
  if (np == 0) np = std::max(1, spec.layout.tp * std::max(1, spec.layout.dp));
  if (np < 0 || np > kMaxRanksPerJob) return InvalidArgumentError(fmt::format("np {} is out of range", np));
  if (!options_.run_root.empty()) {
    std::error_code ec;
    const fs::path root = fs::weakly_canonical(options_.run_root, ec);
    const fs::path run = fs::weakly_canonical(spec.run_dir, ec);
    const auto [end, _] = std::mismatch(root.begin(), root.end(), run.begin(), run.end());
    if (ec || end != root.end())
      return InvalidArgumentError(fmt::format("{}: run_dir {} (resolved {}) is outside this coordinator's run root {}; "
                                              "set run_dir inside it",
                                              req.spec_path, spec.run_dir, run.string(), root.string()));
  }
  auto plan = PlanJob(spec, np);
  if (!plan.ok())
    return InvalidArgumentError(fmt::format("{} cannot run on {} ranks: {}", req.spec_path, np, plan.status().message()));
  std::lock_guard<std::mutex> lock(mu_);
  if (jobs_.size() >= kMaxJobs) return UnavailableError("the coordinator holds too many jobs");
  for (const auto& [id, other] : jobs_) {
    if (!IsTerminal(other.state) && other.run_dir == spec.run_dir)
      return FailedPreconditionError(fmt::format("job {} ({}) already uses run directory {}: cancel it, wait for it, "
                                                 "or set another run_dir in {}",
                                                 id, JobStateName(other.state), spec.run_dir, req.spec_path));
  }
  ASSIGN_OR_RETURN(int64_t number, store_->NextJobNumber());
  JobRecord job;
  job.id = fmt::format("{}-{}", Sanitize(spec.name), number);
  job.name = SanitizeUtf8(spec.name, 256);
  job.spec_path = SanitizeUtf8(req.spec_path);
  job.spec_yaml = SanitizeUtf8(yaml, 256 * 1024);  // a Latin-1 comment is kept as U+FFFD
  job.run_dir = spec.run_dir;
  job.np = np;
  job.hostfile = req.hostfile;
  job.env = req.env;
  job.restart_budget = req.restart_budget >= 0 ? req.restart_budget : options_.default_restart_budget;
  job.submitted_at = Now();
  for (size_t i = 0; i < spec.stages.size(); ++i) {
    StageRecord s;
    s.name = spec.stages[i].name;
    if (i < plan->stages.size() && plan->stages[i].steps > 0) s.total_steps = plan->stages[i].steps;
    job.stages.push_back(s);
  }
  const std::string id = job.id;
  JobRecord& stored = jobs_.emplace(id, std::move(job)).first->second;
  Persist(stored);
  Event(stored, "submitted",
        fmt::format("{} ({} stages) on {} ranks{}, restart budget {}", req.spec_path, stored.stages.size(), np,
                    req.hostfile.empty() ? "" : " from " + req.hostfile, stored.restart_budget),
        {{"np", np}, {"layout", plan->layout.ToString()}});
  return id;
}

Status Coordinator::RegisterAttach(const std::string& name) {
  if (!IsValidJobId(name))
    return InvalidArgumentError(fmt::format("'{}' is not a job name (letters, digits, '.', '_', '-'; not starting "
                                            "with '.')",
                                            SanitizeUtf8(name, 80)));
  std::lock_guard<std::mutex> lock(mu_);
  if (attach_names_.count(name)) return Status::OK();
  if (attach_names_.size() >= kMaxAttachNames)
    return UnavailableError(fmt::format("{} job names are registered for attach mode, the most this coordinator "
                                        "keeps",
                                        kMaxAttachNames));
  std::set<std::string> next = attach_names_;
  next.insert(name);
  RETURN_IF_ERROR(store_->PutAttachNames(next));  // persisted before it takes effect
  attach_names_ = std::move(next);
  return Status::OK();
}

std::vector<std::string> Coordinator::AttachNames() {
  std::lock_guard<std::mutex> lock(mu_);
  return {attach_names_.begin(), attach_names_.end()};
}

Status Coordinator::Cancel(const std::string& id) {
  std::lock_guard<std::mutex> lock(mu_);
  JobRecord* job = Find(id);
  if (job == nullptr) return NotFoundError(fmt::format("no job '{}'; `vlorch jobs` lists them", id));
  if (IsTerminal(job->state))
    return FailedPreconditionError(fmt::format("job {} is already {}", id, JobStateName(job->state)));
  if (job->launcher_pid > 0) {
    job->pending_cause = "cancelled by the user";
    Terminate(static_cast<pid_t>(job->launcher_pid), /*force=*/false);  // ranks commit a checkpoint on SIGTERM
    runtime_[id].stop_requested_at = Now();
  }
  Transition(*job, JobState::kCancelled);
  Event(*job, "cancelled", job->launcher_pid > 0 ? "cancelled; mpirun got SIGTERM (SIGKILL after the grace period)" : "cancelled");
  return Status::OK();
}

Status Coordinator::Resume(const std::string& id) {
  std::lock_guard<std::mutex> lock(mu_);
  JobRecord* job = Find(id);
  if (job == nullptr) return NotFoundError(fmt::format("no job '{}'; `vlorch jobs` lists them", id));
  if (job->attached)
    return FailedPreconditionError(fmt::format("job {} was started outside the coordinator (attach mode): run your "
                                               "mpirun command again to resume it",
                                               id));
  if (job->state != JobState::kFailed && job->state != JobState::kCancelled)
    return FailedPreconditionError(fmt::format("job {} is {}; only failed or cancelled jobs resume", id, JobStateName(job->state)));
  if (job->launcher_pid > 0)
    return FailedPreconditionError(fmt::format("job {}'s previous mpirun (pid {}) is still stopping; try again in a few "
                                               "seconds",
                                               id, job->launcher_pid));
  job->restart_budget = job->restarts + options_.default_restart_budget;
  job->finished_at = 0;
  Transition(*job, JobState::kQueued);
  Event(*job, "resumed", fmt::format("resumed from the last committed checkpoint; restart budget now {}", job->restart_budget));
  return Status::OK();
}

StatusOr<std::string> Coordinator::JobJson(const std::string& id) {
  JobRecord job;
  {
    std::lock_guard<std::mutex> lock(mu_);
    JobRecord* found = Find(id);
    if (found == nullptr) return NotFoundError(fmt::format("no job '{}'; `vlorch jobs` lists them", id));
    job = *found;  // the text for thousands of ranks is written without holding mu_
  }
  nlohmann::json j = ToJson(job);
  double eta = -1;
  if (job.current_stage < static_cast<int>(job.stages.size())) {
    const auto& s = job.stages[job.current_stage];
    if (s.total_steps > 0 && job.steps_per_second > 0) eta = static_cast<double>(s.total_steps - s.step) / job.steps_per_second;
  }
  j["eta_seconds"] = eta;
  j.erase("spec_yaml");
  j["env"] = RedactedEnv(job.env);  // values may be tokens
  std::string out = Dump(j);
  out.pop_back();  // the closing brace: the ranks follow
  out.reserve(out.size() + job.ranks.size() * 400);
  out += ",\"ranks\":[";
  const double now = Now();
  bool first = true;
  for (const auto& [rank, info] : job.ranks) {
    if (!first) out += ',';
    first = false;
    AppendJson(info, &out, now);
  }
  out += "]}";
  return out;
}

nlohmann::json Coordinator::Jobs() {
  std::lock_guard<std::mutex> lock(mu_);
  nlohmann::json out = nlohmann::json::array();
  for (const auto& [id, job] : jobs_) {
    const StageRecord* s = job.current_stage < static_cast<int>(job.stages.size()) ? &job.stages[job.current_stage] : nullptr;
    out.push_back({{"id", id},
                   {"name", job.name},
                   {"state", JobStateName(job.state)},
                   {"stage", s ? s->name : ""},
                   {"stage_index", job.current_stage},
                   {"stages", job.stages.size()},
                   {"step", s ? s->step : 0},
                   {"total_steps", s ? s->total_steps : 0},
                   {"loss", job.loss},
                   {"restarts", job.restarts},
                   {"np", job.np},
                   {"attached", job.attached},
                   {"submitted_at", job.submitted_at}});
  }
  return out;
}

StatusOr<nlohmann::json> Coordinator::Events(const std::string& id, int64_t after) {
  std::lock_guard<std::mutex> lock(mu_);
  if (Find(id) == nullptr) return NotFoundError(fmt::format("no job '{}'; `vlorch jobs` lists them", id));
  ASSIGN_OR_RETURN(std::vector<JobEvent> events, store_->Events(id, after));
  nlohmann::json out = nlohmann::json::array();
  for (const auto& e : events) out.push_back(ToJson(e));
  return out;
}

StatusOr<nlohmann::json> Coordinator::Logs(const std::string& id, int rank, const std::string& stream,
                                           int64_t incarnation, int64_t offset, int64_t max_bytes) {
  std::string dir, run_dir;
  {
    std::lock_guard<std::mutex> lock(mu_);
    JobRecord* job = Find(id);
    if (job == nullptr) return NotFoundError(fmt::format("no job '{}'; `vlorch jobs` lists them", id));
    dir = job->log_dir;
    run_dir = job->run_dir;
    if (incarnation >= 0) dir = (fs::path(run_dir) / "logs" / fmt::format("incarnation-{}", incarnation)).string();
  }
  if (dir.empty()) return NotFoundError(fmt::format("job {} has not been launched yet: no logs", id));
  if (stream != "stdout" && stream != "stderr") return InvalidArgumentError("stream must be stdout or stderr");
  std::string path;
  if (rank < 0) {
    path = (fs::path(dir) / "mpirun.log").string();
  } else {
    // Open MPI's --output-filename layout: <dir>/<job family>/rank.<r>/<stream>
    std::error_code ec;
    for (const auto& e : fs::directory_iterator(fs::path(dir) / "ranks", ec)) {
      const fs::path p = e.path() / fmt::format("rank.{}", rank) / stream;
      if (fs::exists(p, ec)) path = p.string();
    }
    if (path.empty()) return NotFoundError(fmt::format("job {} has no {} log for rank {} in {}", id, stream, rank, dir));
  }
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  if (!in) return NotFoundError(fmt::format("{} cannot be read", path));
  const int64_t size = static_cast<int64_t>(in.tellg());
  offset = std::clamp<int64_t>(offset, 0, size);
  const int64_t n = std::min<int64_t>(std::min<int64_t>(max_bytes, kMaxLogRead), size - offset);
  std::string data(static_cast<size_t>(std::max<int64_t>(n, 0)), '\0');
  in.seekg(offset);
  in.read(data.data(), static_cast<std::streamsize>(data.size()));
  return nlohmann::json{{"path", path}, {"offset", offset}, {"next_offset", offset + n}, {"size", size}, {"data", data}};
}

nlohmann::json Coordinator::Health() {
  return {{"ok", true},
          {"authenticated", true},
          {"protocol", kProtocolVersion},
          {"pid", ::getpid()},
          {"state_dir", options_.state_dir},
          {"http", fmt::format("{}:{}", options_.http_address, http_port())},
          {"zmq", zmq_bound_},
          {"uptime_s", Now() - started_at_},
          {"messages", {{"ok", msgs_ok_.load()},
                        {"malformed", msgs_malformed_.load()},
                        {"stale", msgs_stale_.load()},
                        {"unknown_job", msgs_unknown_job_.load()},
                        {"refused", msgs_refused_.load()}}},
          {"kills_refused", kills_refused_.load()},
          {"peers_unauthenticated", peers_unauthenticated_.load()},
          {"http_unauthorized", http_unauthorized_.load()}};
}

std::string Coordinator::Metrics() {
  std::string out;
  auto head = [&](const char* name, const char* help, const char* type) {
    out += fmt::format("# HELP {} {}\n# TYPE {} {}\n", name, help, name, type);
  };
  auto esc = [](const std::string& s) {
    std::string o;
    for (char c : s) {
      if (c == '\\' || c == '"') o += '\\';
      if (c == '\n') {
        o += "\\n";
        continue;
      }
      o += c;
    }
    return o;
  };
  head("vlorch_coordinator_messages_total", "control-plane messages received, by outcome", "counter");
  out += fmt::format("vlorch_coordinator_messages_total{{result=\"ok\"}} {}\n", msgs_ok_.load());
  out += fmt::format("vlorch_coordinator_messages_total{{result=\"malformed\"}} {}\n", msgs_malformed_.load());
  out += fmt::format("vlorch_coordinator_messages_total{{result=\"stale_incarnation\"}} {}\n", msgs_stale_.load());
  out += fmt::format("vlorch_coordinator_messages_total{{result=\"unknown_job\"}} {}\n", msgs_unknown_job_.load());
  out += fmt::format("vlorch_coordinator_messages_total{{result=\"refused\"}} {}\n", msgs_refused_.load());
  head("vlorch_coordinator_peers_unauthenticated_total", "control-plane connections refused for an unknown CURVE key",
       "counter");
  out += fmt::format("vlorch_coordinator_peers_unauthenticated_total {}\n", peers_unauthenticated_.load());
  head("vlorch_coordinator_kills_refused_total", "signals not sent to pids not provably a rank of the incarnation",
       "counter");
  out += fmt::format("vlorch_coordinator_kills_refused_total {}\n", kills_refused_.load());
  head("vlorch_coordinator_http_unauthorized_total", "HTTP requests refused for a missing or wrong token, Host or Origin",
       "counter");
  out += fmt::format("vlorch_coordinator_http_unauthorized_total {}\n", http_unauthorized_.load());
  head("vlorch_coordinator_http_requests_total", "HTTP requests served", "counter");
  out += fmt::format("vlorch_coordinator_http_requests_total {}\n", http_requests_.load());
  std::lock_guard<std::mutex> lock(mu_);
  const double now = Now();
  head("vlorch_job_state", "1 for the job's current state", "gauge");
  for (const auto& [id, job] : jobs_)
    out += fmt::format("vlorch_job_state{{job=\"{}\",state=\"{}\"}} 1\n", esc(id), JobStateName(job.state));
  head("vlorch_job_step", "optimizer step of the current stage", "gauge");
  for (const auto& [id, job] : jobs_) {
    if (job.current_stage >= static_cast<int>(job.stages.size())) continue;
    const auto& s = job.stages[job.current_stage];
    out += fmt::format("vlorch_job_step{{job=\"{}\",stage=\"{}\"}} {}\n", esc(id), esc(s.name), s.step);
  }
  head("vlorch_job_loss", "training loss reported by rank 0", "gauge");
  for (const auto& [id, job] : jobs_) out += fmt::format("vlorch_job_loss{{job=\"{}\"}} {}\n", esc(id), job.loss);
  head("vlorch_job_samples_per_second", "training throughput reported by rank 0", "gauge");
  for (const auto& [id, job] : jobs_)
    out += fmt::format("vlorch_job_samples_per_second{{job=\"{}\"}} {}\n", esc(id), job.samples_per_second);
  head("vlorch_job_restarts", "restarts after failures", "counter");
  for (const auto& [id, job] : jobs_) out += fmt::format("vlorch_job_restarts{{job=\"{}\"}} {}\n", esc(id), job.restarts);
  head("vlorch_rank_heartbeat_age_seconds", "seconds since each rank's last message", "gauge");
  for (const auto& [id, job] : jobs_) {
    if (IsTerminal(job.state)) continue;
    for (const auto& [r, info] : job.ranks)
      out += fmt::format("vlorch_rank_heartbeat_age_seconds{{job=\"{}\",rank=\"{}\",host=\"{}\"}} {:.3f}\n", esc(id), r,
                         esc(info.host), now - info.last_heartbeat);
  }
  return out;
}

std::string Coordinator::StatusPage() {
  auto html = [](const std::string& s) {
    std::string o;
    for (char c : s) {
      switch (c) {
        case '<': o += "&lt;"; break;
        case '>': o += "&gt;"; break;
        case '&': o += "&amp;"; break;
        case '"': o += "&quot;"; break;
        default: o += c;
      }
    }
    return o;
  };
  std::string rows;
  for (const auto& j : Jobs()) {
    rows += fmt::format("<tr><td>{}</td><td>{}</td><td>{}</td><td>{}/{}</td><td>{}</td><td>{:.4f}</td><td>{}</td></tr>\n",
                        html(j["id"].get<std::string>()), html(j["name"].get<std::string>()),
                        html(j["state"].get<std::string>()), j["step"].get<int64_t>(), j["total_steps"].get<int64_t>(),
                        html(j["stage"].get<std::string>()), j["loss"].get<double>(), j["restarts"].get<int>());
  }
  return "<!doctype html><html><head><meta charset=\"utf-8\"><meta http-equiv=\"refresh\" content=\"5\">"
         "<title>vlorch coordinator</title><style>body{font-family:sans-serif}td,th{padding:2px 10px}</style></head>"
         "<body><h1>vlorch coordinator</h1><table><tr><th>job</th><th>name</th><th>state</th><th>step</th>"
         "<th>stage</th><th>loss</th><th>restarts</th></tr>\n" +
         rows + "</table><p>JSON: <a href=\"/api/jobs\">/api/jobs</a> · <a href=\"/metrics\">/metrics</a></p></body></html>\n";
}

std::optional<HttpResponse> Coordinator::Admit(const HttpRequest& req, bool* authenticated) const {
  *authenticated = false;
  // DNS rebinding: a page of evil.example whose name now resolves to 127.0.0.1 reaches a
  // loopback-bound coordinator with its own name in Host. Loopback binds answer loopback
  // names only.
  const std::string host = HostOnly(req.host);
  if (IsLoopback(options_.http_address) && !(IsLoopback(host) || host == options_.http_address))
    return JsonError(403, fmt::format("Host '{}' is not this coordinator's: it answers requests to 127.0.0.1 or "
                                      "localhost only (docs/security.md)",
                                      SanitizeUtf8(req.host, 200)));
  // CSRF: browsers send Origin on cross-site requests; only the coordinator's own pages may.
  if (req.has_origin && req.origin != "http://" + req.host)
    return JsonError(403, fmt::format("cross-origin request from '{}' refused (docs/security.md)",
                                      SanitizeUtf8(req.origin, 200)));
  *authenticated = ConstantTimeEquals(req.authorization, "Bearer " + token_);
  if (*authenticated) return std::nullopt;
  const bool get = req.method == "GET";
  if (get && req.path == "/api/health") return std::nullopt;  // answers "ok" only
  const std::string& p = req.path;
  const bool read_only = get && (p == "/" || p == "/status" || p == "/metrics" || p == "/api/jobs" ||
                                 (p.rfind("/api/jobs/", 0) == 0 && p.find("/logs") == std::string::npos));
  if (options_.public_read && req.peer_loopback && read_only) return std::nullopt;
  return JsonError(401, "missing or wrong token: send `Authorization: Bearer <token>`. `vlorch` finds it by itself "
                        "when it runs as the coordinator's user on its machine; elsewhere pass --token or set "
                        "VLORCH_TOKEN (the coordinator keeps it in <state-dir>/http-token)");
}

HttpResponse Coordinator::Route(const HttpRequest& req) {
  ++http_requests_;
  bool authenticated = false;
  if (auto refused = Admit(req, &authenticated)) {
    ++http_unauthorized_;
    return *refused;
  }
  const std::string& p = req.path;
  if (!authenticated && p == "/api/health") return JsonOk({{"ok", true}, {"protocol", kProtocolVersion}, {"authenticated", false}});
  auto method_is = [&](const char* m) { return req.method == m; };
  auto wrong_method = [&] { return JsonError(405, fmt::format("{} is not allowed on {}", req.method, p)); };
  if (p == "/" || p == "/status") {
    if (!method_is("GET")) return wrong_method();
    HttpResponse r;
    r.content_type = "text/html; charset=utf-8";
    r.body = StatusPage();
    return r;
  }
  if (p == "/metrics") {
    if (!method_is("GET")) return wrong_method();
    HttpResponse r;
    r.content_type = "text/plain; version=0.0.4";
    r.body = Metrics();
    return r;
  }
  if (p == "/api/health") return method_is("GET") ? JsonOk(Health()) : wrong_method();
  if (p == "/api/shutdown") {
    if (!method_is("POST")) return wrong_method();
    RequestShutdown();  // the owner's Wait() returns and it stops the coordinator
    return JsonOk({{"ok", true}});
  }
  if (p == "/api/jobs") {
    if (method_is("GET")) return JsonOk(Jobs());
    if (!method_is("POST")) return wrong_method();
    auto j = nlohmann::json::parse(req.body, nullptr, false);
    if (j.is_discarded() || !j.is_object()) return JsonError(400, "the body must be a JSON object {\"spec_path\": ...}");
    SubmitRequest s;
    if (!j.contains("spec_path") || !j["spec_path"].is_string()) return JsonError(400, "field 'spec_path' must be a string");
    s.spec_path = j["spec_path"];
    if (j.contains("np")) {
      if (!j["np"].is_number_integer()) return JsonError(400, "field 'np' must be an integer");
      s.np = j["np"].get<int>();
    }
    if (j.contains("hostfile")) {
      if (!j["hostfile"].is_string()) return JsonError(400, "field 'hostfile' must be a string");
      s.hostfile = j["hostfile"];
    }
    if (j.contains("restart_budget")) {
      if (!j["restart_budget"].is_number_integer() || j["restart_budget"].get<int64_t>() < 0 ||
          j["restart_budget"].get<int64_t>() > 1000)
        return JsonError(400, "field 'restart_budget' must be an integer in [0, 1000]");
      s.restart_budget = j["restart_budget"].get<int>();
    }
    if (j.contains("env")) {
      if (!j["env"].is_object()) return JsonError(400, "field 'env' must be an object of strings");
      for (const auto& [k, v] : j["env"].items()) {
        if (!v.is_string()) return JsonError(400, fmt::format("env['{}'] must be a string", k));
        s.env[k] = v.get<std::string>();
      }
    }
    auto id = Submit(s);
    if (!id.ok()) return FromStatus(id.status());
    return JsonOk({{"id", *id}}, 201);
  }
  if (p == "/api/attach") return method_is("GET") ? JsonOk({{"names", AttachNames()}}) : wrong_method();
  if (p.rfind("/api/attach/", 0) == 0) {
    if (!method_is("POST")) return wrong_method();
    const std::string name = p.substr(std::strlen("/api/attach/"));
    Status s = RegisterAttach(name);
    return s.ok() ? JsonOk({{"ok", true}, {"name", name}}, 201) : FromStatus(s);
  }
  const std::string prefix = "/api/jobs/";
  if (p.rfind(prefix, 0) == 0) {
    std::string rest = p.substr(prefix.size());
    const auto slash = rest.find('/');
    const std::string id = rest.substr(0, slash);
    const std::string action = slash == std::string::npos ? "" : rest.substr(slash + 1);
    if (!IsValidJobId(id))
      return JsonError(400, fmt::format("'{}' is not a job id (letters, digits, '.', '_', '-'; not starting with '.')",
                                        id.substr(0, 80)));
    auto int_param = [&](const char* name, int64_t dflt, int64_t* out) -> bool {
      auto it = req.query.find(name);
      if (it == req.query.end()) {
        *out = dflt;
        return true;
      }
      try {
        size_t used = 0;
        *out = std::stoll(it->second, &used);
        return used == it->second.size();
      } catch (...) {
        return false;
      }
    };
    if (action.empty()) {
      if (!method_is("GET")) return wrong_method();
      auto text = JobJson(id);
      if (!text.ok()) return FromStatus(text.status());
      HttpResponse r;
      r.body = std::move(*text);
      return r;
    }
    if (action == "events") {
      if (!method_is("GET")) return wrong_method();
      int64_t after = -1;
      if (!int_param("after", -1, &after)) return JsonError(400, "query 'after' must be an integer");
      auto j = Events(id, after);
      return j.ok() ? JsonOk(*j) : FromStatus(j.status());
    }
    if (action == "logs") {
      if (!method_is("GET")) return wrong_method();
      int64_t rank = -1, inc = -1, offset = 0, max = kMaxLogRead;
      if (!int_param("rank", -1, &rank) || !int_param("incarnation", -1, &inc) || !int_param("offset", 0, &offset) ||
          !int_param("max", kMaxLogRead, &max) || rank > (1 << 20))
        return JsonError(400, "queries rank, incarnation, offset and max must be integers");
      const std::string stream = req.query.count("stream") ? req.query.at("stream") : "stdout";
      auto j = Logs(id, static_cast<int>(rank), stream, inc, offset, max);
      return j.ok() ? JsonOk(*j) : FromStatus(j.status());
    }
    if (action == "cancel" || action == "resume") {
      if (!method_is("POST")) return wrong_method();
      Status s = action == "cancel" ? Cancel(id) : Resume(id);
      return s.ok() ? JsonOk({{"ok", true}, {"id", id}}) : FromStatus(s);
    }
    return JsonError(404, fmt::format("no such endpoint: {}", p.substr(0, 200)));
  }
  return JsonError(404, fmt::format("no such endpoint: {} (see docs/coordinator.md)", p.substr(0, 200)));
}

}  // namespace vlorch::coord
