// Control-plane load: many simulated worker ranks (DEALER sockets spread over a few
// processes) heartbeat and report progress to one coordinator (`vlorch coordinator start`, a
// separate process) while `vlorch status --json` is timed. Baseline in the same invocation: a
// raw ZeroMQ ROUTER that only counts frames, fed the same way.
//
//   bench_coordinator --vlorch build/coordinator/vlorch [--ranks 4096] [--procs 8] [--jobs 8]
//                     [--seconds 20] [--status-calls 200]
#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <zmq.hpp>

#include "coordinator/http_server.h"
#include "coordinator/launcher.h"
#include "jobs/control_keys.h"
#include "jobs/control_protocol.h"

namespace {
namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

double Since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

void RaiseFdLimit() {
  rlimit lim{};
  if (::getrlimit(RLIMIT_NOFILE, &lim) == 0) {
    lim.rlim_cur = lim.rlim_max;
    ::setrlimit(RLIMIT_NOFILE, &lim);
  }
}

// The credentials the simulated ranks connect with: the coordinator's attach pair, or for the
// raw baseline a pair for a sink that is a CURVE server too (so both pay for encryption).
vlorch::CurveCredentials g_curve;
std::string g_sink_secret;

// One generator process: `ranks` DEALER sockets, ranks [first, first + ranks) of the jobs.
// rate_per_rank <= 0: as fast as possible. Writes the number of messages sent to `fd`.
void Generate(const std::string& endpoint, int first, int ranks, int ranks_per_job, double seconds, double rate_per_rank,
              int fd) {
  RaiseFdLimit();
  // The simulated ranks stand for other machines: on this one they must not starve the
  // coordinator and the status client being measured.
  ::setpriority(PRIO_PROCESS, 0, 10);
  zmq::context_t ctx(1);
  zmq_ctx_set(ctx.handle(), ZMQ_MAX_SOCKETS, ranks + 64);
  std::vector<zmq::socket_t> socks;
  std::vector<std::string> heartbeat, progress;
  for (int i = 0; i < ranks; ++i) {
    const int global = first + i;
    vlorch::ControlMessage m;
    m.job = fmt::format("load-{}", global / ranks_per_job);
    m.rank = global % ranks_per_job;
    m.world = ranks_per_job;
    m.incarnation = 0;
    socks.emplace_back(ctx, zmq::socket_type::dealer);
    socks.back().set(zmq::sockopt::linger, 0);
    socks.back().set(zmq::sockopt::sndhwm, 100000);
    if (g_curve.Valid()) {
      socks.back().set(zmq::sockopt::curve_serverkey, g_curve.server_public);
      socks.back().set(zmq::sockopt::curve_publickey, g_curve.public_key);
      socks.back().set(zmq::sockopt::curve_secretkey, g_curve.secret_key);
    }
    socks.back().connect(endpoint);
    m.type = vlorch::MessageType::kRegister;
    m.host = fmt::format("sim{:03d}", global / 8);
    m.pid = 100000 + global;
    m.stage = "pretrain";
    m.attach = true;
    (void)socks.back().send(zmq::buffer(vlorch::EncodeMessage(m)), zmq::send_flags::none);
    m.type = vlorch::MessageType::kHeartbeat;
    m.collective = vlorch::CollectiveState{"dp", "allreduce", 1000, false, 0.01, ranks_per_job};
    heartbeat.push_back(vlorch::EncodeMessage(m));
    m.type = vlorch::MessageType::kProgress;
    m.step = 1000, m.total_steps = 100000, m.loss = 2.345, m.samples_per_second = 512, m.data_wait_seconds = 0.01;
    progress.push_back(vlorch::EncodeMessage(m));
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(500));  // connections up
  uint64_t sent = 0;
  const auto start = Clock::now();
  if (rate_per_rank <= 0) {
    while (Since(start) < seconds) {
      for (int i = 0; i < ranks; ++i) {
        if (socks[i].send(zmq::buffer((sent & 1) ? progress[i] : heartbeat[i]), zmq::send_flags::dontwait)) ++sent;
      }
    }
  } else {
    // Every rank sends one heartbeat per second and (rate - 1) progress messages, spread out.
    const int per_second = static_cast<int>(rate_per_rank);
    const double slot = 1.0 / (per_second * static_cast<double>(ranks));
    uint64_t k = 0;
    while (Since(start) < seconds) {
      const double due = static_cast<double>(k) * slot;
      const double now = Since(start);
      if (due > now) {
        std::this_thread::sleep_for(std::chrono::duration<double>(std::min(due - now, 0.005)));
        continue;
      }
      const int i = static_cast<int>(k % ranks);
      const bool beat = (k / ranks) % per_second == 0;
      if (socks[i].send(zmq::buffer(beat ? heartbeat[i] : progress[i]), zmq::send_flags::dontwait)) ++sent;
      ++k;
    }
  }
  const std::string out = std::to_string(sent) + "\n";
  (void)!::write(fd, out.data(), out.size());
  ::close(fd);
  std::_Exit(0);
}

// Starts `procs` generators; returns the messages they sent.
uint64_t RunLoad(const std::string& endpoint, int total_ranks, int procs, int ranks_per_job, double seconds, double rate) {
  std::vector<std::pair<pid_t, int>> kids;
  const int per = (total_ranks + procs - 1) / procs;
  for (int p = 0; p < procs; ++p) {
    const int first = p * per, n = std::min(per, total_ranks - first);
    if (n <= 0) break;
    int fds[2];
    if (::pipe(fds) != 0) std::abort();
    const pid_t pid = ::fork();
    if (pid == 0) {
      ::close(fds[0]);
      Generate(endpoint, first, n, ranks_per_job, seconds, rate, fds[1]);
    }
    ::close(fds[1]);
    kids.push_back({pid, fds[0]});
  }
  uint64_t sent = 0;
  for (auto [pid, fd] : kids) {
    char buf[64] = {0};
    (void)!::read(fd, buf, sizeof(buf) - 1);
    ::close(fd);
    ::waitpid(pid, nullptr, 0);
    sent += std::strtoull(buf, nullptr, 10);
  }
  return sent;
}

// A ROUTER that counts frames; prints the count to `fd` after `seconds`.
pid_t RawSink(const std::string& endpoint, double seconds, int fd) {
  const pid_t pid = ::fork();
  if (pid != 0) return pid;
  RaiseFdLimit();
  zmq::context_t ctx(1);
  zmq::socket_t s(ctx, zmq::socket_type::router);
  s.set(zmq::sockopt::rcvhwm, 100000);
  s.set(zmq::sockopt::curve_server, true);
  s.set(zmq::sockopt::curve_secretkey, g_sink_secret);
  s.bind(endpoint);
  uint64_t n = 0;
  zmq::message_t id, body;
  const auto start = Clock::now();
  s.set(zmq::sockopt::rcvtimeo, 100);
  while (Since(start) < seconds) {
    if (!s.recv(id)) continue;
    if (s.recv(body)) ++n;
  }
  const std::string out = std::to_string(n) + "\n";
  (void)!::write(fd, out.data(), out.size());
  std::_Exit(0);
}

struct ProcStat {
  double cpu_seconds = 0;
  double rss_mib = 0;
};
ProcStat Stat(pid_t pid) {
  ProcStat st;
  const auto f = vlorch::coord::ProcStatFields(pid);  // field k at index k - 3 (proc(5))
  if (f.size() < 22) return st;
  st.cpu_seconds = (std::stod(f[14 - 3]) + std::stod(f[15 - 3])) / static_cast<double>(::sysconf(_SC_CLK_TCK));
  st.rss_mib = std::stod(f[24 - 3]) * static_cast<double>(::sysconf(_SC_PAGESIZE)) / (1 << 20);
  return st;
}

uint64_t MessagesOk(int port) {
  auto r = vlorch::coord::HttpCall("127.0.0.1", port, "GET", "/api/health", "", vlorch::coord::DiscoverToken("127.0.0.1", port));
  if (!r.ok()) return 0;
  const auto j = nlohmann::json::parse(r->body, nullptr, false);
  // Until the token is published, health answers "ok" only.
  return j.is_object() && j.contains("messages") ? j["messages"].value("ok", uint64_t{0}) : 0;
}

// The attacker of the sustained phase (--attack): for `seconds`, in rounds 10 ms apart, every
// kind of bad input the trust boundary has to absorb. Counts what it sent into *sent.
void Attack(const std::string& endpoint, int http, double seconds, uint64_t* sent) {
  zmq::context_t ctx(1);
  auto dealer = [&](bool curve, bool known_key) {
    auto s = std::make_unique<zmq::socket_t>(ctx, zmq::socket_type::dealer);
    s->set(zmq::sockopt::linger, 0);
    s->set(zmq::sockopt::sndhwm, 1000);
    if (curve) {
      char pub[41], sec[41];
      if (zmq_curve_keypair(pub, sec) != 0) std::abort();
      s->set(zmq::sockopt::curve_serverkey, g_curve.server_public);
      s->set(zmq::sockopt::curve_publickey, known_key ? g_curve.public_key : std::string(pub));
      s->set(zmq::sockopt::curve_secretkey, known_key ? g_curve.secret_key : std::string(sec));
    }
    s->connect(endpoint);
    return s;
  };
  auto plain = dealer(false, false), stranger = dealer(true, false), insider = dealer(true, true);
  const std::string big(vlorch::kMaxMessageBytes + 1000, 'x');
  std::mt19937 rng(7);
  const auto start = Clock::now();
  uint64_t n = 0;
  for (int round = 0; Since(start) < seconds; ++round) {
    auto send = [&](zmq::socket_t& s, const std::string& bytes) {
      if (s.send(zmq::buffer(bytes), zmq::send_flags::dontwait)) ++n;
    };
    std::string noise(1 + rng() % 512, '\0');
    for (auto& c : noise) c = static_cast<char>(rng());
    send(*plain, noise);
    send(*stranger, R"({"v":1,"type":"register","job":"evil","rank":0,"incarnation":0,"world":1,"host":"h","pid":1,"attach":true})");
    send(*insider, noise);
    // Ranks outside load-0's world, a registration claiming another world, a flood of new
    // attached jobs (capped), an attach naming a device as its spec.
    send(*insider, fmt::format(R"({{"v":1,"type":"heartbeat","job":"load-0","rank":{},"incarnation":0}})", 100000 + round));
    send(*insider, R"({"v":1,"type":"register","job":"load-0","rank":0,"incarnation":0,"world":99999,"host":"h","pid":1,"attach":true})");
    send(*insider, fmt::format(R"({{"v":1,"type":"register","job":"flood-{}","rank":0,"incarnation":0,"world":1,"host":"h","pid":1,"attach":true,"spec":"/dev/zero"}})", round));
    if (round % 20 == 0) {
      send(*insider, big);  // over ZMQ_MAXMSGSIZE: the coordinator drops the connection
      insider = dealer(true, true);
    }
    // HTTP without the token, with a wrong one, and garbage.
    (void)vlorch::coord::HttpCall("127.0.0.1", http, "POST", "/api/shutdown", "", "", 2);
    (void)vlorch::coord::HttpCall("127.0.0.1", http, "GET", "/api/jobs/load-0", "", "guess", 2);
    (void)vlorch::coord::HttpCall("127.0.0.1", http, "POST", "/api/jobs", noise, "", 2);
    (void)vlorch::coord::HttpCall("127.0.0.1", http, "GET", "/api/jobs/..%2F..%2Fetc%2Fpasswd/logs?rank=-7", "", "", 2);
    n += 4;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  *sent = n;
}

nlohmann::json HealthJson(int http) {
  auto r = vlorch::coord::HttpCall("127.0.0.1", http, "GET", "/api/health", "", vlorch::coord::DiscoverToken("127.0.0.1", http));
  if (!r.ok()) return nlohmann::json();
  return nlohmann::json::parse(r->body, nullptr, false);
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"coordinator control-plane load benchmark"};
  std::string vlorch_bin;
  int ranks = 4096, procs = 4, jobs = 8, status_calls = 200;
  double seconds = 20, rate = 3;
  app.add_option("--vlorch", vlorch_bin, "the vlorch CLI")->required();
  app.add_option("--ranks", ranks, "simulated worker ranks")->capture_default_str();
  app.add_option("--procs", procs, "load generator processes")->capture_default_str();
  app.add_option("--jobs", jobs, "jobs the ranks belong to")->capture_default_str();
  app.add_option("--seconds", seconds, "length of the sustained phase")->capture_default_str();
  app.add_option("--rate", rate, "messages per rank per second (1 heartbeat + progress)")->capture_default_str();
  app.add_option("--status-calls", status_calls, "timed `vlorch status --json` calls")->capture_default_str();
  bool attack = true;
  app.add_option("--attack", attack, "an attacker sends bad input throughout the sustained phase")->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  RaiseFdLimit();
  const int per_job = ranks / jobs;
  const double capacity_seconds = 5;

  // Baseline: raw ROUTER capacity with the same generators.
  const int raw_port = 7790;
  {
    char spub[41], ssec[41], cpub[41], csec[41];
    if (zmq_curve_keypair(spub, ssec) != 0 || zmq_curve_keypair(cpub, csec) != 0) return 1;
    g_curve = {spub, cpub, csec};
    g_sink_secret = ssec;
  }
  int fds[2];
  if (::pipe(fds) != 0) return 1;
  const pid_t sink = RawSink(fmt::format("tcp://127.0.0.1:{}", raw_port), capacity_seconds + 1.5, fds[1]);
  ::close(fds[1]);
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  RunLoad(fmt::format("tcp://127.0.0.1:{}", raw_port), ranks, procs, per_job, capacity_seconds, 0);
  char buf[64] = {0};
  (void)!::read(fds[0], buf, sizeof(buf) - 1);
  ::waitpid(sink, nullptr, 0);
  const double raw_rate = static_cast<double>(std::strtoull(buf, nullptr, 10)) / capacity_seconds;

  // The coordinator, in its own process.
  const fs::path state = fs::temp_directory_path() / fmt::format("vlorch-bench-coord-{}", ::getpid());
  fs::remove_all(state);
  const int http = 7791, zmq_port = 7792;
  auto proc = vlorch::coord::Spawn({vlorch_bin, "coordinator", "start", "--foreground", "--state-dir", state.string(),
                                    "--coordinator", fmt::format("127.0.0.1:{}", http), "--zmq",
                                    fmt::format("tcp://127.0.0.1:{}", zmq_port), "--heartbeat-timeout", "600",
                                    "--hang-timeout", "600"},
                                   {{"VLORCH_LOG_LEVEL", "warning"}}, (state.string() + ".log"));
  if (!proc.ok()) {
    std::fprintf(stderr, "%s\n", proc.status().ToString().c_str());
    return 1;
  }
  for (int i = 0; i < 100 && MessagesOk(http) == 0 && !vlorch::coord::HttpCall("127.0.0.1", http, "GET", "/api/health", "", vlorch::coord::DiscoverToken("127.0.0.1", http)).ok(); ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  const std::string endpoint = fmt::format("tcp://127.0.0.1:{}", zmq_port);
  {
    // The coordinator's published attach credentials, as an attached worker finds them.
    auto found = vlorch::FindCurveCredentials(endpoint);
    for (int i = 0; i < 50 && (!found.ok() || !found->has_value()); ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
      found = vlorch::FindCurveCredentials(endpoint);
    }
    if (!found.ok() || !found->has_value()) {
      std::fprintf(stderr, "no attach credentials published for %s\n", endpoint.c_str());
      return 1;
    }
    g_curve = **found;
  }
  // The load's job names, registered for attach mode as a user would (`vlorch attach NAME`).
  for (int j = 0; j * per_job < ranks; ++j) {
    auto r = vlorch::coord::HttpCall("127.0.0.1", http, "POST", fmt::format("/api/attach/load-{}", j), "",
                                     vlorch::coord::DiscoverToken("127.0.0.1", http));
    if (!r.ok() || r->status != 201) {
      std::fprintf(stderr, "could not register load-%d for attach mode\n", j);
      return 1;
    }
  }

  // Capacity: as fast as the generators can send.
  uint64_t before = MessagesOk(http);
  auto t0 = Clock::now();
  RunLoad(endpoint, ranks, procs, per_job, capacity_seconds, 0);
  uint64_t after = MessagesOk(http);
  for (int i = 0; i < 50; ++i) {  // let the queue drain
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    const uint64_t now = MessagesOk(http);
    if (now == after) break;
    after = now;
  }
  const double capacity = static_cast<double>(after - before) / Since(t0);

  // Sustained: every rank at `rate` messages/s while status is timed.
  before = MessagesOk(http);
  const ProcStat s0 = Stat(proc->pid);
  t0 = Clock::now();
  std::vector<double> latencies, api_latencies;
  std::thread status([&] {
    std::this_thread::sleep_for(std::chrono::seconds(2));
    const std::string cmd = fmt::format("{} status load-0 --json --coordinator 127.0.0.1:{} > /dev/null", vlorch_bin, http);
    for (int i = 0; i < status_calls && Since(t0) < seconds - 1; ++i) {
      const auto c0 = Clock::now();
      if (std::system(cmd.c_str()) != 0) std::fprintf(stderr, "status call failed\n");
      latencies.push_back(Since(c0) * 1e3);
      const auto a0 = Clock::now();
      (void)vlorch::coord::HttpCall("127.0.0.1", http, "GET", "/api/jobs/load-0", "", vlorch::coord::DiscoverToken("127.0.0.1", http));
      api_latencies.push_back(Since(a0) * 1e3);
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  });
  uint64_t attack_sent = 0;
  std::thread attacker;
  if (attack) attacker = std::thread([&] { Attack(endpoint, http, seconds, &attack_sent); });
  const uint64_t offered = RunLoad(endpoint, ranks, procs, per_job, seconds, rate);
  const double wall = Since(t0);
  status.join();
  if (attacker.joinable()) attacker.join();
  const nlohmann::json attacked = HealthJson(http);
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  const uint64_t handled = MessagesOk(http) - before;
  const ProcStat s1 = Stat(proc->pid);
  auto jobs_view = vlorch::coord::HttpCall("127.0.0.1", http, "GET", "/api/jobs", "", vlorch::coord::DiscoverToken("127.0.0.1", http));
  size_t tracked_ranks = 0;
  for (int j = 0; j < jobs; ++j) {
    auto r = vlorch::coord::HttpCall("127.0.0.1", http, "GET", fmt::format("/api/jobs/load-{}", j), "", vlorch::coord::DiscoverToken("127.0.0.1", http));
    if (r.ok() && r->status == 200) tracked_ranks += nlohmann::json::parse(r->body)["ranks"].size();
  }
  // The same request with the generators stopped: its own cost, without contention.
  std::vector<double> api_idle;
  for (int i = 0; i < 30; ++i) {
    const auto a0 = Clock::now();
    (void)vlorch::coord::HttpCall("127.0.0.1", http, "GET", "/api/jobs/load-0", "", vlorch::coord::DiscoverToken("127.0.0.1", http));
    api_idle.push_back(Since(a0) * 1e3);
  }
  std::sort(api_idle.begin(), api_idle.end());
  ::kill(proc->pid, SIGTERM);
  ::waitpid(proc->pid, nullptr, 0);
  fs::remove_all(state);

  std::sort(latencies.begin(), latencies.end());
  std::sort(api_latencies.begin(), api_latencies.end());
  auto pct_of = [](const std::vector<double>& v, double p) {
    return v.empty() ? -1.0 : v[std::min(v.size() - 1, static_cast<size_t>(p * static_cast<double>(v.size())))];
  };
  auto pct = [&](double p) { return pct_of(latencies, p); };
  // Idle: the same call with nothing else running (process start-up included).
  std::vector<double> idle;
  {
    auto idle_proc = vlorch::coord::Spawn({vlorch_bin, "coordinator", "start", "--foreground", "--state-dir",
                                           state.string() + "-idle", "--coordinator", fmt::format("127.0.0.1:{}", http),
                                           "--zmq", fmt::format("tcp://127.0.0.1:{}", zmq_port)},
                                          {{"VLORCH_LOG_LEVEL", "warning"}}, state.string() + "-idle.log");
    for (int i = 0; i < 100 && !vlorch::coord::HttpCall("127.0.0.1", http, "GET", "/api/health", "", vlorch::coord::DiscoverToken("127.0.0.1", http)).ok(); ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    const std::string cmd = fmt::format("{} jobs --json --coordinator 127.0.0.1:{} > /dev/null", vlorch_bin, http);
    for (int i = 0; i < 30; ++i) {
      const auto c0 = Clock::now();
      if (std::system(cmd.c_str()) != 0) std::fprintf(stderr, "idle call failed\n");
      idle.push_back(Since(c0) * 1e3);
    }
    std::sort(idle.begin(), idle.end());
    if (idle_proc.ok()) {
      ::kill(idle_proc->pid, SIGTERM);
      ::waitpid(idle_proc->pid, nullptr, 0);
    }
    fs::remove_all(state.string() + "-idle");
  }
  const double sustained = static_cast<double>(handled) / wall;
  const double cpu = (s1.cpu_seconds - s0.cpu_seconds) / wall;
  std::printf("simulated ranks: %d in %d jobs, from %d generator processes; %zu ranks tracked\n", ranks, jobs, procs,
              tracked_ranks);
  std::printf("capacity (unthrottled, %.0f s): coordinator %.0f msgs/s; raw ZeroMQ ROUTER sink %.0f msgs/s (ratio %.2f)\n",
              capacity_seconds, capacity, raw_rate, capacity / raw_rate);
  std::printf("sustained (%.0f s at %.0f msgs/rank/s): offered %.0f msgs/s, handled %.0f msgs/s, coordinator CPU %.0f%% of "
              "one core, RSS %.1f MiB\n",
              wall, rate, static_cast<double>(offered) / wall, sustained, cpu * 100, s1.rss_mib);
  std::printf("GET /api/jobs/ID (the request the CLI makes, %d ranks): under load p50 %.1f ms, p99 %.1f ms; with no "
              "load p50 %.1f ms\n",
              per_job, pct_of(api_latencies, 0.5), pct_of(api_latencies, 0.99), pct_of(api_idle, 0.5));
  std::printf("vlorch CLI with no load (process start-up + request): p50 %.1f ms, p99 %.1f ms\n", pct_of(idle, 0.5),
              pct_of(idle, 0.99));
  if (attack) {
    const bool alive = attacked.is_object() && attacked.value("ok", false);
    const auto& msgs = alive ? attacked["messages"] : nlohmann::json::object();
    std::printf("under attack (%llu bad messages and requests): coordinator %s; refused %llu, malformed %llu, "
                "unauthenticated peers %llu, unauthorized HTTP %llu, RSS after %.1f MiB\n",
                static_cast<unsigned long long>(attack_sent), alive ? "alive" : "DOWN",
                static_cast<unsigned long long>(msgs.value("refused", uint64_t{0})),
                static_cast<unsigned long long>(msgs.value("malformed", uint64_t{0})),
                static_cast<unsigned long long>(alive ? attacked.value("peers_unauthenticated", uint64_t{0}) : 0),
                static_cast<unsigned long long>(alive ? attacked.value("http_unauthorized", uint64_t{0}) : 0), s1.rss_mib);
  }
  std::printf("vlorch status --json under load: %zu calls, p50 %.1f ms, p99 %.1f ms (target p99 <= 50 ms)\n",
              latencies.size(), pct(0.5), pct(0.99));
  std::printf("ratio sustained coordinator msgs/s / 10000 = %.2f (target 1.0)\n", sustained / 10000.0);
  return 0;
}
