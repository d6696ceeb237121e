// The coordinator daemon: durable job registry (RocksDB), ZeroMQ control plane, HTTP API,
// launcher and supervisor of `mpirun`. docs/coordinator.md describes it for users; the job
// lifecycle is drawn in coordinator/job_record.h.
//
// Threads: one receives worker messages (ROUTER socket), one supervises (launches queued
// jobs, reaps mpirun, detects lost heartbeats and hangs, flushes metrics), one serves HTTP.
// All share the job table under one mutex; every handler holds it only for in-memory work
// and synced writes of single small records.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/status.h"
#include "coordinator/job_record.h"
#include "jobs/control_keys.h"
#include "jobs/control_protocol.h"

namespace vlorch {
struct JobSpec;
}  // namespace vlorch

namespace vlorch::coord {

class StateStore;
class HttpServer;
struct HttpRequest;
struct HttpResponse;

struct CoordinatorOptions {
  // Where the RocksDB state lives (created if missing). Required.
  std::string state_dir;
  // HTTP API bind address and port. Default 127.0.0.1:7010; port 0 picks a free one.
  std::string http_address = "127.0.0.1";
  int http_port = 7010;
  // ZeroMQ ROUTER endpoint workers connect to. Default tcp://127.0.0.1:7011; port 0 ("*")
  // picks a free one (see zmq_endpoint()).
  std::string zmq_endpoint = "tcp://127.0.0.1:7011";
  // The HTTP API's token. Empty (the default): the coordinator makes one (32 random bytes,
  // hex) on its first start and keeps it in <state_dir>/http-token (mode 0600), so it
  // survives restarts. Every request must carry `Authorization: Bearer <token>`, except GET
  // /api/health (which then answers only "ok" and the protocol) and, with public_read,
  // read-only requests from loopback peers. docs/security.md.
  std::string token;
  // Publish the token at TokenDiscoveryPath(port) (file 0600 in a 0700 directory) so that
  // `vlorch` run by the same user on this machine finds it. Default true.
  bool publish_token = true;
  // Serve GET of the status page, /metrics and the job views (not logs) without a token to
  // peers on loopback: any local user can then read job states (env values stay redacted).
  // For a Prometheus without a bearer token file. Default false.
  bool public_read = false;
  // Job environment names, or NAME_PREFIX* patterns, that jobs may set beyond the built-in
  // allow-list (coordinator/job_env.h); loader and MPI-launch settings are refused whatever
  // this says. Default none.
  std::vector<std::string> allow_env;
  // When set, a submitted job's run directory (symlinks resolved) must lie inside this folder,
  // so a submission cannot make the coordinator write checkpoints and logs elsewhere.
  // Default empty: anywhere the coordinator's user can write.
  std::string run_root;
  // Jobs started outside the coordinator (attach mode) tracked at once; registrations of
  // more are dropped and counted. Default 64.
  int max_attached_jobs = 64;
  // Attach mode for any job name, as long as the ranks hold the attach key. Default false: a
  // job name must first be registered by a caller of the API (RegisterAttach, `vlorch attach
  // NAME`); ranks attaching under another name are dropped and counted, so the attach key
  // alone (a copy left on a shared node, say) cannot make the coordinator track jobs.
  bool open_attach = false;
  // vlorch-worker to launch. Default: next to the running executable.
  std::string worker_binary;
  // mpirun to launch with. Default "mpirun" from PATH.
  std::string mpirun = "mpirun";
  // A registered rank silent for longer is lost. Default 30 s.
  double heartbeat_timeout_s = 30;
  // Every rank of a group but some waiting longer than this in the same collective is a hang,
  // blamed on the ranks that did not enter. Default 30 s.
  double hang_timeout_s = 30;
  // Heartbeat period passed to launched workers. Default 1 s.
  double heartbeat_interval_s = 1;
  // Restart back-off: initial delay, doubled per restart up to the maximum. Default 1 s / 60 s.
  double backoff_initial_s = 1;
  double backoff_max_s = 60;
  // Restarts a job gets when its submission names none. Default 3.
  int default_restart_budget = 3;
  // Jobs launched at once; later ones wait in the queue. Default 4.
  int max_running_jobs = 4;
  // After SIGTERM to mpirun, how long before SIGKILL. Default 10 s.
  double terminate_grace_s = 10;
  // Exit code launched workers use when preempted (SIGTERM, checkpoint committed). Default 75.
  int preempted_exit_code = 75;
};

struct SubmitRequest {
  std::string spec_path;   // absolute path of the job YAML (shared file system)
  int np = 0;              // 0: the hostfile's slots, or 2 on this machine
  std::string hostfile;
  int restart_budget = -1; // -1: the coordinator's default
  std::map<std::string, std::string> env;  // forwarded to the ranks
};

class Coordinator {
 public:
  // Opens the state, recovers every job (adopting mpirun processes still running), binds the
  // sockets and starts the threads.
  static StatusOr<std::unique_ptr<Coordinator>> Start(CoordinatorOptions options);
  ~Coordinator();

  // Stops the threads (running mpirun processes are left to a later coordinator).
  void Stop();
  // Blocks until Stop(), RequestShutdown() or a shutdown request over HTTP; the owner then
  // calls Stop() (or destroys the coordinator).
  void Wait();
  // Waits at most `seconds`; true once a shutdown was requested.
  bool WaitFor(double seconds);
  void RequestShutdown();

  StatusOr<std::string> Submit(const SubmitRequest& request);
  // Registers `name` for attach mode (docs/security.md#control-plane), durably: ranks of the
  // user's own mpirun may then attach a job of that name. Idempotent. InvalidArgument for a
  // name that is not a job id; Unavailable past kMaxAttachNames registrations.
  Status RegisterAttach(const std::string& name);
  std::vector<std::string> AttachNames();
  Status Cancel(const std::string& id);
  Status Resume(const std::string& id);
  // GET /api/jobs/ID: the job record (docs/cli.md) with eta_seconds and ranks[] (each with
  // heartbeat_age_s), as JSON text.
  StatusOr<std::string> JobJson(const std::string& id);
  nlohmann::json Jobs();
  StatusOr<nlohmann::json> Events(const std::string& id, int64_t after);
  StatusOr<nlohmann::json> Logs(const std::string& id, int rank, const std::string& stream, int64_t incarnation,
                                int64_t offset, int64_t max_bytes);
  std::string Metrics();
  std::string StatusPage();
  nlohmann::json Health();

  // One HTTP request as the API serves it: Host/Origin checks, the token, then the route.
  // What the HTTP server calls for each request; public for in-process callers (the HTTP
  // fuzz target, tests/fuzz/fuzz_http_api.cc).
  HttpResponse Route(const HttpRequest& request);

  int http_port() const;
  // The HTTP API token in force (given or made).
  const std::string& token() const { return token_; }
  // What ranks of attached jobs connect with (also published at CurveDiscoveryPath(port)).
  const CurveCredentials& attach_credentials() const { return attach_curve_; }
  const std::string& zmq_endpoint() const { return zmq_bound_; }
  const CoordinatorOptions& options() const { return options_; }

 private:
  explicit Coordinator(CoordinatorOptions options);
  Status Recover();
  void ReceiveLoop();
  void SuperviseLoop();
  // `attach_specs`: the specs of attach registrations for unknown jobs, read without mu_ by
  // PreloadAttachSpecs (null: unreadable).
  // `peer`: the ZAP handler's user id of the connection the message came on ("attach", or
  // "job:<id>:<incarnation>"); a key speaks for its own job only.
  void Handle(const ControlMessage& m, const std::string& peer,
              const std::map<std::string, std::shared_ptr<const JobSpec>>& attach_specs);
  Status SetUpCurve();
  // Admits `client_key` (Z85) under mu-free curve_mu_: its user id, or empty.
  std::string CurveClient(const std::string& client_key);
  // Under mu_: a fresh key pair for the job's new incarnation; its secret half goes to `env`.
  Status IssueIncarnationKey(JobRecord& job, std::map<std::string, std::string>* env);
  std::map<std::string, std::shared_ptr<const JobSpec>> PreloadAttachSpecs(const std::vector<ControlMessage>& batch);
  // Host/Origin checks and the token: a refusal, or nullopt with *authenticated set.
  std::optional<HttpResponse> Admit(const HttpRequest& request, bool* authenticated) const;
  Status SetUpToken();

  // Under mu_:
  void Transition(JobRecord& job, JobState to);
  void Event(JobRecord& job, const std::string& kind, const std::string& message,
             nlohmann::json fields = nlohmann::json::object());
  void Persist(JobRecord& job);
  void Launch(JobRecord& job);
  void OnLauncherExit(JobRecord& job, int code, int signal, bool known);
  void StopIncarnation(JobRecord& job, const std::string& cause);
  void CheckLiveness(JobRecord& job, double now);
  std::string DescribeRank(const JobRecord& job, int rank) const;
  // Rank metrics of jobs changed since the last flush (under mu_), written without it.
  std::vector<std::pair<std::string, std::vector<RankInfo>>> CollectMetrics();
  void WriteMetrics(const std::vector<std::pair<std::string, std::vector<RankInfo>>>& metrics);
  JobRecord* Find(const std::string& id);

  CoordinatorOptions options_;
  std::string token_;
  std::string published_token_path_;
  // CURVE: the server pair, the attach pair, and the admitted client keys.
  std::string curve_server_public_, curve_server_secret_;
  CurveCredentials attach_curve_;
  std::string published_curve_path_;
  std::mutex curve_mu_;
  std::map<std::string, std::string> curve_clients_;  // Z85 public key -> user id
  std::thread zap_;
  std::unique_ptr<StateStore> store_;
  std::unique_ptr<HttpServer> http_;
  std::string zmq_bound_;
  std::mutex mu_;
  std::map<std::string, JobRecord> jobs_;
  std::set<std::string> attach_names_;  // registered for attach mode
  struct Runtime {
    bool adopted = false;            // mpirun not our child (coordinator restarted)
    double stop_requested_at = 0;    // SIGTERM sent; SIGKILL after the grace period
    bool ranks_dirty = false;
    bool job_dirty = false;
    bool all_registered = false;
  };
  std::map<std::string, Runtime> runtime_;
  std::atomic<bool> stop_{false};
  std::mutex wait_mu_;
  std::condition_variable wait_cv_;
  bool shutdown_requested_ = false;
  std::thread receiver_, supervisor_;
  double started_at_ = 0;
  // Counters for /metrics and the load benchmark.
  std::atomic<uint64_t> msgs_ok_{0}, msgs_malformed_{0}, msgs_stale_{0}, msgs_unknown_job_{0};
  // Messages naming a rank outside the job's world, a world other than the job's, or an
  // attached job past max_attached_jobs.
  std::atomic<uint64_t> msgs_refused_{0};
  // Connections whose CURVE key the ZAP handler did not know.
  std::atomic<uint64_t> peers_unauthenticated_{0};
  // Signals not sent: a rank's pid that was not provably a process of its incarnation.
  std::atomic<uint64_t> kills_refused_{0};
  std::atomic<uint64_t> http_requests_{0}, http_errors_{0}, http_unauthorized_{0};
};

}  // namespace vlorch::coord
