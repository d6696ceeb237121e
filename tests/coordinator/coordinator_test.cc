// The coordinator without mpirun: protocol decoding, the job state machine, the RocksDB state
// across reopen, hostfiles and the mpirun command line, culprits from mpirun's real messages,
// and a live coordinator (real ZeroMQ and HTTP sockets) fed malformed messages and requests,
// simulated ranks that stop heartbeating or hang in a collective, and attach mode.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <cmath>
#include <limits>
#include <mutex>
#include <filesystem>
#include <fstream>
#include <random>
#include <thread>

#include <fmt/format.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <zmq.hpp>

#include "coordinator/coordinator.h"
#include "coordinator/http_server.h"
#include "coordinator/launcher.h"
#include "coordinator/state_store.h"
#include "jobs/control_keys.h"
#include "jobs/control_protocol.h"

namespace vlorch::coord {
namespace {
namespace fs = std::filesystem;
using nlohmann::json;

// A simulated worker proves itself as an attached rank does: with the coordinator's published
// attach credentials (jobs/control_keys.h), found from the endpoint.
void UseAttachCredentials(zmq::socket_t& s, const std::string& endpoint) {
  auto found = FindCurveCredentials(endpoint);
  ASSERT_TRUE(found.ok()) << found.status().ToString();
  ASSERT_TRUE(found->has_value()) << "nothing published for " << endpoint;
  s.set(zmq::sockopt::curve_serverkey, (*found)->server_public);
  s.set(zmq::sockopt::curve_publickey, (*found)->public_key);
  s.set(zmq::sockopt::curve_secretkey, (*found)->secret_key);
}

fs::path TempDir(const std::string& name) {
  fs::path p = fs::temp_directory_path() / fmt::format("vlorch-coord-{}-{}", name, ::getpid());
  fs::remove_all(p);
  fs::create_directories(p);
  return p;
}

// ---------------------------------------------------------------- protocol

TEST(Protocol, EveryTypeRoundTrips) {
  for (MessageType t : {MessageType::kRegister, MessageType::kHeartbeat, MessageType::kProgress,
                        MessageType::kCheckpoint, MessageType::kStageDone, MessageType::kError}) {
    ControlMessage m;
    m.type = t;
    m.job = "tiny-vl-3";
    m.rank = 2;
    m.incarnation = 5;
    m.world = 4, m.host = "n7", m.pid = 4242, m.stage = "pretrain", m.spec = "/j.yaml", m.run_dir = "/r";
    m.step = 17, m.total_steps = 40, m.loss = 2.5, m.samples_per_second = 100, m.data_wait_seconds = 0.25;
    m.checkpoint = "/r/stages/pretrain/checkpoints/step-00000010", m.cause = "boom";
    m.collective = CollectiveState{"dp", "allreduce", 57, true, 1.5, 4};
    auto d = DecodeMessage(EncodeMessage(m));
    ASSERT_TRUE(d.ok()) << MessageTypeName(t) << ": " << d.status().ToString();
    EXPECT_EQ(d->type, t);
    EXPECT_EQ(d->job, "tiny-vl-3");
    EXPECT_EQ(d->rank, 2);
    EXPECT_EQ(d->incarnation, 5);
    if (t == MessageType::kHeartbeat) {
      ASSERT_TRUE(d->collective.has_value());
      EXPECT_EQ(d->collective->seq, 57u);
      EXPECT_TRUE(d->collective->inside);
    }
    if (t == MessageType::kRegister) {
      EXPECT_EQ(d->pid, 4242);
    }
    if (t == MessageType::kProgress) {
      EXPECT_DOUBLE_EQ(d->loss, 2.5);
    }
    if (t == MessageType::kCheckpoint) {
      EXPECT_EQ(d->checkpoint, m.checkpoint);
    }
  }
  // A diverged run's loss is NaN; JSON carries it as null and it must arrive as NaN, not be
  // dropped as malformed (status would keep showing the last finite loss).
  ControlMessage p;
  p.type = MessageType::kProgress;
  p.job = "j", p.rank = 0, p.incarnation = 1, p.stage = "s", p.step = 3, p.total_steps = 9;
  p.loss = std::numeric_limits<double>::quiet_NaN();
  auto d = DecodeMessage(EncodeMessage(p));
  ASSERT_TRUE(d.ok()) << d.status().ToString();
  EXPECT_TRUE(std::isnan(d->loss));
}

TEST(Protocol, MalformedMessagesNameTheProblem) {
  struct Case {
    std::string bytes, expect;
  };
  const std::vector<Case> cases = {
      {"not json", "not valid JSON"},
      {"[1,2]", "not a JSON object"},
      {R"({"type":"heartbeat","job":"a","rank":0,"incarnation":0})", "'v' is missing"},
      {R"({"v":2,"type":"heartbeat","job":"a","rank":0,"incarnation":0})", "version 2"},
      {R"({"v":1,"type":"explode","job":"a","rank":0,"incarnation":0})", "unknown message type 'explode'"},
      {R"({"v":1,"type":"heartbeat","job":"../../etc","rank":0,"incarnation":0})", "not a valid job id"},
      {R"({"v":1,"type":"heartbeat","job":"a","rank":"zero","incarnation":0})", "'rank' must be an integer"},
      {R"({"v":1,"type":"heartbeat","job":"a","rank":-1,"incarnation":0})", "'rank' is out of range"},
      {R"({"v":1,"type":"heartbeat","job":"a","rank":0})", "'incarnation' is missing"},
      {R"({"v":1,"type":"progress","job":"a","rank":0,"incarnation":0,"stage":"s","step":1.5})", "'step' must be an integer"},
      {R"({"v":1,"type":"register","job":"a","rank":3,"incarnation":0,"world":2,"host":"h","pid":1})", "'world' must be > rank"},
      {R"({"v":1,"type":"heartbeat","job":"a","rank":0,"incarnation":0,"collective":7})", "'collective' must be an object"},
      {R"({"v":1,"type":"error","job":"a","rank":0,"incarnation":0})", "'cause' is missing"},
      {std::string(kMaxMessageBytes + 1, ' '), "byte limit"},
  };
  for (const auto& c : cases) {
    auto d = DecodeMessage(c.bytes);
    ASSERT_FALSE(d.ok()) << c.bytes.substr(0, 80);
    EXPECT_EQ(d.status().code(), StatusCode::kInvalidArgument);
    EXPECT_NE(d.status().message().find(c.expect), std::string::npos) << d.status().message();
  }
}

TEST(Protocol, RandomBytesNeverThrow) {
  std::mt19937 rng(7);
  const std::string valid = R"({"v":1,"type":"progress","job":"j","rank":0,"incarnation":0,"stage":"s","step":3})";
  for (int i = 0; i < 3000; ++i) {
    std::string s = valid;
    const int edits = 1 + static_cast<int>(rng() % 6);
    for (int e = 0; e < edits; ++e) s[rng() % s.size()] = static_cast<char>(rng() % 256);
    EXPECT_NO_THROW((void)DecodeMessage(s));
  }
}

// ---------------------------------------------------------------- state machine

TEST(JobStateMachine, EdgesOfTheDiagram) {
  using S = JobState;
  const std::vector<std::pair<S, S>> allowed = {
      {S::kQueued, S::kLaunching},     {S::kLaunching, S::kRunning},    {S::kRunning, S::kLaunching},
      {S::kRunning, S::kSucceeded},    {S::kRunning, S::kRestarting},   {S::kLaunching, S::kRestarting},
      {S::kRestarting, S::kLaunching}, {S::kRunning, S::kFailed},       {S::kRestarting, S::kFailed},
      {S::kRunning, S::kQueued},       {S::kFailed, S::kQueued},        {S::kCancelled, S::kQueued},
      {S::kRunning, S::kCancelled},    {S::kQueued, S::kCancelled},     {S::kRestarting, S::kCancelled}};
  const std::vector<std::pair<S, S>> refused = {
      {S::kSucceeded, S::kQueued},  {S::kSucceeded, S::kCancelled}, {S::kQueued, S::kRunning},
      {S::kQueued, S::kSucceeded},  {S::kRestarting, S::kRunning},  {S::kFailed, S::kRunning},
      {S::kCancelled, S::kRunning}, {S::kCancelled, S::kCancelled}, {S::kFailed, S::kLaunching}};
  for (auto [a, b] : allowed) EXPECT_TRUE(CanTransition(a, b)) << JobStateName(a) << " -> " << JobStateName(b);
  for (auto [a, b] : refused) EXPECT_FALSE(CanTransition(a, b)) << JobStateName(a) << " -> " << JobStateName(b);
  for (int i = 0; i < 7; ++i) {
    auto s = static_cast<S>(i);
    auto parsed = ParseJobState(JobStateName(s));
    ASSERT_TRUE(parsed.ok());
    EXPECT_EQ(*parsed, s);
  }
}

// A rank's fields as the API documents them (docs/cli.md), built with nlohmann's tree.
json ExpectedRankJson(const RankInfo& r) {
  return {{"rank", r.rank},
          {"host", r.host},
          {"pid", r.pid},
          {"pid_start_ticks", r.pid_start_ticks},
          {"incarnation", r.incarnation},
          {"registered_at", r.registered_at},
          {"last_heartbeat", r.last_heartbeat},
          {"stage", r.stage},
          {"step", r.step},
          {"loss", r.loss},
          {"samples_per_second", r.samples_per_second},
          {"data_wait_seconds", r.data_wait_seconds},
          {"collective",
           {{"group", r.coll_group},
            {"op", r.coll_op},
            {"seq", r.coll_seq},
            {"inside", r.coll_inside},
            {"since", r.coll_since},
            {"group_size", r.coll_group_size}}}};
}

// The direct writer must produce the tree's object for any field values, strings that need
// escaping, non-ASCII and invalid UTF-8, extreme and non-finite numbers included.
TEST(JobRecordJson, RankTextIsTheSameObjectAsTheTree) {
  std::vector<RankInfo> cases(4);
  cases[0].rank = 7, cases[0].host = "node-07", cases[0].pid = 4242, cases[0].incarnation = 3;
  cases[0].registered_at = 1.7e9 + 0.125, cases[0].last_heartbeat = 1.7e9 + 5.5, cases[0].stage = "pretrain";
  cases[0].step = 123456789012, cases[0].loss = 2.345678901234567, cases[0].samples_per_second = 1e-7;
  cases[0].data_wait_seconds = 0, cases[0].coll_group = "dp", cases[0].coll_op = "allreduce";
  cases[0].coll_seq = 18446744073709551615ull, cases[0].coll_inside = true, cases[0].coll_since = 3.0;
  cases[0].coll_group_size = 512, cases[0].pid_start_ticks = 987654321;
  cases[1].host = "q\"uote\\back\nnew\ttab\x01\x1f end";
  cases[1].stage = "\xc3\xa9t\xc3\xa9 \xe2\x9c\x93";  // UTF-8
  cases[1].coll_group = "bad \xff\xfe utf8";      // invalid UTF-8: replaced as Dump() does
  cases[2].loss = std::numeric_limits<double>::quiet_NaN();
  cases[2].samples_per_second = std::numeric_limits<double>::infinity();
  cases[2].registered_at = -0.0, cases[2].last_heartbeat = 1e300, cases[2].step = -5, cases[2].pid = -1;
  cases[3].rank = 2147483647, cases[3].loss = 5e-324, cases[3].data_wait_seconds = 123456789.0;
  for (const RankInfo& r : cases) {
    std::string text;
    AppendJson(r, &text);
    auto parsed = json::parse(text, nullptr, false);
    ASSERT_FALSE(parsed.is_discarded()) << text;
    const json tree = json::parse(ExpectedRankJson(r).dump(-1, ' ', false, json::error_handler_t::replace));
    EXPECT_EQ(parsed, tree) << text << "\n" << tree.dump();
    const RankInfo back = RankFromJson(parsed);
    EXPECT_EQ(back.step, r.step);
    EXPECT_EQ(back.pid_start_ticks, r.pid_start_ticks);
    EXPECT_EQ(std::isnan(back.loss), std::isnan(r.loss));  // null reads back as NaN, not an exception
    // With a time, heartbeat_age_s joins the same fields.
    text.clear();
    AppendJson(r, &text, 1.7e9 + 10);
    parsed = json::parse(text, nullptr, false);
    ASSERT_FALSE(parsed.is_discarded()) << text;
    ASSERT_TRUE(parsed.contains("heartbeat_age_s"));
    if (std::isfinite(1.7e9 + 10 - r.last_heartbeat)) {
      EXPECT_DOUBLE_EQ(parsed["heartbeat_age_s"].get<double>(), 1.7e9 + 10 - r.last_heartbeat);
    }
    parsed.erase("heartbeat_age_s");
    EXPECT_EQ(parsed, tree);
  }
}

// ---------------------------------------------------------------- state store

TEST(StateStore, JobsEventsAndRanksSurviveReopen) {
  const fs::path dir = TempDir("store");
  {
    auto store = StateStore::Open(dir.string());
    ASSERT_TRUE(store.ok()) << store.status().ToString();
    JobRecord job;
    job.id = "a-1";
    job.name = "a";
    job.state = JobState::kRunning;
    job.restarts = 2;
    job.stages.push_back(StageRecord{"s1", "done", 40, 40, "/ck/40", 40});
    job.failure_causes = {"rank 1 exited on signal 9"};
    job.loss = std::numeric_limits<double>::quiet_NaN();  // a diverged run must still load
    ASSERT_TRUE((*store)->PutJob(job).ok());
    for (int i = 0; i < 3; ++i) {
      JobEvent e;
      e.kind = "k" + std::to_string(i);
      auto seq = (*store)->AppendEvent("a-1", e);
      ASSERT_TRUE(seq.ok());
      EXPECT_EQ(*seq, i);
    }
    RankInfo r;
    r.rank = 3, r.host = "n1", r.pid = 99, r.incarnation = 4, r.step = 12;
    ASSERT_TRUE((*store)->PutRanks("a-1", {r}).ok());
    // A second coordinator on the same state is refused with a message that says why.
    auto second = StateStore::Open(dir.string());
    ASSERT_FALSE(second.ok());
    EXPECT_NE(second.status().message().find("another coordinator"), std::string::npos) << second.status().message();
    auto n1 = (*store)->NextJobNumber();
    ASSERT_TRUE(n1.ok());
    EXPECT_EQ(*n1, 1);
  }
  auto store = StateStore::Open(dir.string());
  ASSERT_TRUE(store.ok());
  auto jobs = (*store)->LoadJobs();
  ASSERT_TRUE(jobs.ok());
  ASSERT_EQ(jobs->size(), 1u);
  EXPECT_EQ((*jobs)[0].state, JobState::kRunning);
  EXPECT_EQ((*jobs)[0].restarts, 2);
  EXPECT_EQ((*jobs)[0].stages[0].last_checkpoint, "/ck/40");
  EXPECT_EQ((*jobs)[0].failure_causes.size(), 1u);
  EXPECT_TRUE(std::isnan((*jobs)[0].loss));
  JobEvent e;
  e.kind = "after-reopen";
  auto seq = (*store)->AppendEvent("a-1", e);
  ASSERT_TRUE(seq.ok());
  EXPECT_EQ(*seq, 3);  // appends continue the log, never overwrite it
  auto events = (*store)->Events("a-1", 0);
  ASSERT_TRUE(events.ok());
  ASSERT_EQ(events->size(), 3u);
  EXPECT_EQ(events->back().kind, "after-reopen");
  auto ranks = (*store)->LoadRanks("a-1");
  ASSERT_TRUE(ranks.ok());
  ASSERT_EQ(ranks->size(), 1u);
  EXPECT_EQ((*ranks)[0].pid, 99);
  auto n2 = (*store)->NextJobNumber();
  ASSERT_TRUE(n2.ok());
  EXPECT_EQ(*n2, 2);
  fs::remove_all(dir);
}

// ---------------------------------------------------------------- HTTP requests

// ParseHttpRequest is the server's parser and limits on a byte string (what the HTTP fuzz
// target feeds the routes with): what a handler sees, or an error for bytes that are not one
// complete request within the limits.
TEST(HttpRequests, ParsedAsTheServerParsesThem) {
  auto r = ParseHttpRequest("POST /api/jobs/a%2Fb/logs?rank=1&stream=std+err HTTP/1.1\r\nHost: localhost:7010\r\n"
                            "Origin: http://localhost:7010\r\nAuthorization: Bearer t\r\nTransfer-Encoding: chunked\r\n"
                            "\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
                            /*peer_loopback=*/true);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->method, "POST");
  EXPECT_EQ(r->path, "/api/jobs/a/b/logs");
  EXPECT_EQ(r->query.at("rank"), "1");
  EXPECT_EQ(r->query.at("stream"), "std err");
  EXPECT_EQ(r->body, "abcde");
  EXPECT_EQ(r->host, "localhost:7010");
  EXPECT_TRUE(r->has_origin);
  EXPECT_EQ(r->authorization, "Bearer t");
  EXPECT_TRUE(r->peer_loopback);
  // Cut short, malformed, or over a limit: refused, not half-parsed.
  EXPECT_FALSE(ParseHttpRequest("GET /api/jobs HTTP/1.1\r\nHost: x\r\n", true).ok());
  EXPECT_FALSE(ParseHttpRequest("POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc", true).ok());
  EXPECT_FALSE(ParseHttpRequest("GET / HTTP/1.1\r\nHost x\r\n\r\n", true).ok());
  EXPECT_FALSE(ParseHttpRequest("", true).ok());
  const std::string big_header = "GET / HTTP/1.1\r\nX-A: " + std::string(kHttpHeaderLimit, 'a') + "\r\n\r\n";
  EXPECT_FALSE(ParseHttpRequest(big_header, true).ok());
  const std::string big_body =
      fmt::format("POST / HTTP/1.1\r\nContent-Length: {}\r\n\r\n", kHttpBodyLimit + 1) + std::string(kHttpBodyLimit + 1, 'b');
  auto over = ParseHttpRequest(big_body, true);
  ASSERT_FALSE(over.ok());
  EXPECT_NE(over.status().message().find("request body over 1048576 bytes"), std::string::npos) << over.status().message();
}

// A handler stuck on a slow read (a submitted spec on a hung file system) holds up its own
// connection only: the server runs handlers off its I/O thread, so a health check on another
// connection is answered meanwhile, and the stuck one is answered once it returns.
TEST(HttpRequests, ASlowHandlerDoesNotHoldUpOtherConnections) {
  std::mutex mu;
  std::condition_variable cv;
  bool slow_entered = false, release = false;
  auto server = HttpServer::Start("127.0.0.1", 0, [&](const HttpRequest& r) {
    HttpResponse out;
    if (r.path == "/slow") {
      std::unique_lock<std::mutex> lock(mu);
      slow_entered = true;
      cv.notify_all();
      cv.wait(lock, [&] { return release; });
      out.body = "slow done";
    } else {
      out.body = "fast";
    }
    return out;
  });
  ASSERT_TRUE(server.ok()) << server.status().ToString();
  const int port = (*server)->port();
  std::thread slow([&] {
    auto r = HttpCall("127.0.0.1", port, "GET", "/slow", "", "", 30);
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    EXPECT_EQ(r->body, "slow done");
  });
  {
    std::unique_lock<std::mutex> lock(mu);
    ASSERT_TRUE(cv.wait_for(lock, std::chrono::seconds(30), [&] { return slow_entered; }));
  }
  // While /slow is inside its handler: several other requests are answered.
  for (int i = 0; i < 3; ++i) {
    auto fast = HttpCall("127.0.0.1", port, "GET", "/fast", "", "", 10);
    ASSERT_TRUE(fast.ok()) << fast.status().ToString();
    EXPECT_EQ(fast->body, "fast");
  }
  {
    std::lock_guard<std::mutex> lock(mu);
    release = true;
  }
  cv.notify_all();
  slow.join();
  (*server)->Stop();
}

// ---------------------------------------------------------------- launcher

TEST(Launcher, HostfilesAndTheirErrors) {
  const fs::path dir = TempDir("hostfile");
  std::ofstream(dir / "good") << "# cluster\nn1 slots=4\nn2 slots=2 max_slots=8  # two GPUs\n\nn3\n";
  auto hosts = ParseHostfile((dir / "good").string());
  ASSERT_TRUE(hosts.ok()) << hosts.status().ToString();
  ASSERT_EQ(hosts->size(), 3u);
  EXPECT_EQ((*hosts)[0].slots, 4);
  EXPECT_EQ((*hosts)[1].slots, 2);
  EXPECT_EQ((*hosts)[2].slots, 1);
  std::ofstream(dir / "bad") << "n1 slots=4\nn2 cpus=3\n";
  auto bad = ParseHostfile((dir / "bad").string());
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("bad:2"), std::string::npos) << bad.status().message();
  std::ofstream(dir / "zero") << "n1 slots=0\n";
  EXPECT_FALSE(ParseHostfile((dir / "zero").string()).ok());
  EXPECT_EQ(ParseHostfile((dir / "missing").string()).status().code(), StatusCode::kNotFound);
  EXPECT_EQ(TotalSlots(*hosts), 7);
  // Hostile ones: slot counts whose sum overflowed an int (found by the hostfile fuzz target's
  // seed), a count past the limit, a "host" that reads as an mpirun option or holds a shell
  // character, a non-number.
  const std::vector<std::pair<std::string, std::string>> hostile = {
      {"n1 slots=2147483647\nn2 slots=2147483647\n", "bad-host:1: slots must be an integer in [1, 65536]"},
      {"n1 slots=40000\nn2 slots=40000\n", "bad-host:2: the hostfile's slots add up to more than 65536"},
      {"n1 slots=99999999999999999999\n", "bad-host:1: slots must be an integer"},
      {"n1 slots=4x\n", "bad-host:1: slots must be an integer"},
      {"--mca slots=1\n", "bad-host:1: '--mca' is not a host name"},
      {"n1;reboot\n", "bad-host:1: 'n1;reboot' is not a host name"},
      {"n1\n\xff\xfe\n", "bad-host:2: '\xef\xbf\xbd\xef\xbf\xbd' is not a host name"},
  };
  for (const auto& [text, expect] : hostile) {
    std::ofstream(dir / "bad-host", std::ios::trunc) << text;
    auto h = ParseHostfile((dir / "bad-host").string());
    ASSERT_FALSE(h.ok()) << text;
    EXPECT_EQ(h.status().code(), StatusCode::kInvalidArgument);
    EXPECT_NE(h.status().message().find(expect), std::string::npos) << h.status().message();
  }
  fs::remove_all(dir);
}

TEST(Launcher, MpirunCommandIsAnArgumentVector) {
  LaunchCommand c;
  c.np = 8;
  c.hostfile = "/etc/hosts with space";
  c.output_dir = "/run/logs";
  c.env = {{"VLORCH_FAULT", "kill:rank=1"}, {"OMPI_ALLOW_RUN_AS_ROOT", "1"}};
  c.program = {"/bin/vlorch-worker", "--job", "/a b/job.yaml"};
  const auto argv = ComposeMpirun(c);
  const std::vector<std::string> expect = {"mpirun", "-np", "8", "--hostfile", "/etc/hosts with space",
                                           "--output-filename", "/run/logs", "-x", "VLORCH_FAULT",
                                           "/bin/vlorch-worker", "--job", "/a b/job.yaml"};
  EXPECT_EQ(argv, expect);  // OMPI_* configure mpirun itself and are not forwarded
  c.oversubscribe = true;
  const auto over = ComposeMpirun(c);
  EXPECT_NE(std::find(over.begin(), over.end(), "--oversubscribe"), over.end());
}

TEST(Launcher, CulpritFromMpirunsOwnMessages) {
  // Verbatim from Open MPI 4.1.
  const std::string signal_text =
      "--------------------------------------------------------------------------\n"
      "Primary job  terminated normally, but 1 process returned\n"
      "a non-zero exit code. Per user-direction, the job has been aborted.\n"
      "--------------------------------------------------------------------------\n"
      "--------------------------------------------------------------------------\n"
      "mpirun noticed that process rank 1 with PID 0 on node vm exited on signal 9 (Killed).\n"
      "--------------------------------------------------------------------------\n";
  EXPECT_EQ(MpirunCulprit(signal_text), "rank 1 on vm exited on signal 9 (Killed)");
  const std::string exit_text =
      "mpirun detected that one or more processes exited with non-zero status, thus causing\n"
      "the job to be terminated. The first process to do so was:\n\n"
      "  Process name: [[20313,1],3]\n"
      "  Exit code:    3\n";
  EXPECT_EQ(MpirunCulprit(exit_text), "rank 3 exited with code 3");
  EXPECT_EQ(MpirunCulprit("all good\n"), "");
}

TEST(Launcher, SpawnRedirectsAndReaps) {
  const fs::path dir = TempDir("spawn");
  const std::string log = (dir / "out.log").string();
  auto p = Spawn({"sh", "-c", "echo hello $GREETING; exit 7"}, {{"GREETING", "there"}}, log);
  ASSERT_TRUE(p.ok()) << p.status().ToString();
  std::optional<ExitStatus> e;
  for (int i = 0; i < 200 && !e; ++i) {
    e = Reap(p->pid);
    if (!e) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ASSERT_TRUE(e.has_value());
  EXPECT_EQ(e->code, 7);
  EXPECT_EQ(ReadTail(log, 100), "hello there\n");
  auto missing = Spawn({"/no/such/binary"}, {}, log);
  // posix_spawnp reports a missing program either at once or as exit code 127.
  if (missing.ok()) {
    std::optional<ExitStatus> m;
    for (int i = 0; i < 200 && !m; ++i) {
      m = Reap(missing->pid);
      if (!m) std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    ASSERT_TRUE(m.has_value());
    EXPECT_EQ(m->code, 127);
  }
  fs::remove_all(dir);
}

// ---------------------------------------------------------------- live coordinator

class LiveCoordinator : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = TempDir("live");
    // The API token is published here (the CLI tests find it), not in the user's home.
    ::setenv("VLORCH_HOME", (dir_ / "home").c_str(), 1);
    CoordinatorOptions o;
    o.state_dir = (dir_ / "state").string();
    o.http_port = 0;
    o.zmq_endpoint = "tcp://127.0.0.1:*";
    o.heartbeat_timeout_s = 1.5;
    o.hang_timeout_s = 1.0;
    auto c = Coordinator::Start(o);
    ASSERT_TRUE(c.ok()) << c.status().ToString();
    coord_ = std::move(*c);
    ASSERT_TRUE(coord_->RegisterAttach("attached-job").ok());  // the FakeRanks' job
  }
  void TearDown() override {
    coord_.reset();
    fs::remove_all(dir_);
  }

  HttpResult Http(const std::string& method, const std::string& target, const std::string& body = "") {
    auto r = HttpCall("127.0.0.1", coord_->http_port(), method, target, body, coord_->token());
    EXPECT_TRUE(r.ok()) << r.status().ToString();
    return r.ok() ? *r : HttpResult{};
  }

  // Writes bytes on a fresh connection and returns what comes back before the server closes.
  std::string Raw(const std::string& bytes) {
    const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<uint16_t>(coord_->http_port()));
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    EXPECT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
    (void)!::write(fd, bytes.data(), bytes.size());
    timeval tv{5, 0};
    ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    std::string out;
    char buf[4096];
    for (ssize_t n; (n = ::read(fd, buf, sizeof(buf))) > 0;) out.append(buf, static_cast<size_t>(n));
    ::close(fd);
    return out;
  }

  void ExpectServing() {
    auto h = Http("GET", "/api/health");
    EXPECT_EQ(h.status, 200);
  }

  // Sends raw frames from a fresh DEALER.
  void SendRaw(const std::vector<std::string>& frames) {
    zmq::socket_t s(ctx_, zmq::socket_type::dealer);
    s.set(zmq::sockopt::linger, 1000);
    UseAttachCredentials(s, coord_->zmq_endpoint());
    s.connect(coord_->zmq_endpoint());
    for (size_t i = 0; i < frames.size(); ++i)
      s.send(zmq::buffer(frames[i]), i + 1 < frames.size() ? zmq::send_flags::sndmore : zmq::send_flags::none);
  }

  json Health() { return json::parse(Http("GET", "/api/health").body); }

  // Waits until pred(job json) holds; returns the last job json.
  json WaitJob(const std::string& id, const std::function<bool(const json&)>& pred, double timeout_s) {
    json j;
    const auto end = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_s);
    while (std::chrono::steady_clock::now() < end) {
      auto r = Http("GET", "/api/jobs/" + id);
      if (r.status == 200) {
        j = json::parse(r.body);
        if (pred(j)) return j;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    return j;
  }

  fs::path dir_;
  std::unique_ptr<Coordinator> coord_;
  zmq::context_t ctx_{1};
};

TEST_F(LiveCoordinator, MalformedControlMessagesAreDroppedAndCounted) {
  zmq::socket_t s(ctx_, zmq::socket_type::dealer);
  s.set(zmq::sockopt::linger, 2000);
  UseAttachCredentials(s, coord_->zmq_endpoint());
  s.connect(coord_->zmq_endpoint());
  auto send = [&](const std::vector<std::string>& frames) {
    for (size_t i = 0; i < frames.size(); ++i)
      s.send(zmq::buffer(frames[i]), i + 1 < frames.size() ? zmq::send_flags::sndmore : zmq::send_flags::none);
  };
  send({"not json"});
  send({R"({"v":9,"type":"heartbeat","job":"a","rank":0,"incarnation":0})"});
  send({R"({"v":1,"type":"heartbeat","job":"a","rank":"x","incarnation":0})"});
  send({"two", "frames"});
  send({R"({"v":1,"type":"heartbeat","job":"no-such-job","rank":0,"incarnation":0})"});
  std::mt19937 rng(3);
  for (int i = 0; i < 200; ++i) {
    std::string bytes(1 + rng() % 300, '\0');
    for (auto& ch : bytes) ch = static_cast<char>(rng() % 256);
    send({bytes});
  }
  json h;
  for (int i = 0; i < 200; ++i) {
    h = Health();
    if (h["messages"]["malformed"].get<int>() >= 204 && h["messages"]["unknown_job"].get<int>() >= 1) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  EXPECT_EQ(h["messages"]["malformed"].get<int>(), 204);
  EXPECT_EQ(h["messages"]["unknown_job"].get<int>(), 1);
  EXPECT_EQ(h["messages"]["ok"].get<int>(), 0);
  // Over ZMQ_MAXMSGSIZE: ZeroMQ drops that peer's connection; the coordinator goes on.
  SendRaw({std::string(kMaxMessageBytes + 100, 'x')});
  ExpectServing();
}

TEST_F(LiveCoordinator, BadHttpRequestsGetErrorsAndServingGoesOn) {
  struct Case {
    std::string method, target, body;
    int status;
    std::string expect;
  };
  const std::vector<Case> cases = {
      {"GET", "/api/jobs/nope", "", 404, "no job 'nope'"},
      {"GET", "/api/jobs/..%2F..%2Fetc%2Fpasswd", "", 400, "is not a job id"},
      {"GET", "/api/jobs/.hidden/events", "", 400, "is not a job id"},
      {"GET", "/api/jobs/nope/logs?rank=abc", "", 400, "must be integers"},
      {"DELETE", "/api/jobs", "", 405, "not allowed"},
      {"GET", "/api/jobs/x/cancel", "", 405, "not allowed"},
      {"POST", "/api/jobs", "{not json", 400, "JSON object"},
      {"POST", "/api/jobs", "[1]", 400, "JSON object"},
      {"POST", "/api/jobs", R"({"spec_path": 3})", 400, "'spec_path' must be a string"},
      {"POST", "/api/jobs", R"({"spec_path": "/x.yaml", "np": "four"})", 400, "'np' must be an integer"},
      {"POST", "/api/jobs", R"({"spec_path": "/x.yaml", "env": {"A": 1}})", 400, "env['A'] must be a string"},
      {"POST", "/api/jobs", R"({"spec_path": "relative.yaml"})", 400, "absolute path"},
      {"POST", "/api/jobs", R"({"spec_path": "/no/such/job.yaml"})", 404, "/no/such/job.yaml"},
      {"POST", "/api/jobs/nope/resume", "", 404, "no job"},
      {"GET", "/nothing/here", "", 404, "no such endpoint"},
  };
  for (const auto& c : cases) {
    auto r = Http(c.method, c.target, c.body);
    EXPECT_EQ(r.status, c.status) << c.method << " " << c.target << ": " << r.body.substr(0, 200);
    EXPECT_NE(r.body.find(c.expect), std::string::npos) << c.target << ": " << r.body.substr(0, 200);
  }
  std::mt19937 rng(11);
  for (int i = 0; i < 100; ++i) {
    std::string body(rng() % 500, '\0');
    for (auto& ch : body) ch = static_cast<char>(32 + rng() % 95);
    auto r = Http("POST", "/api/jobs", body);
    EXPECT_GE(r.status, 400);
    EXPECT_LT(r.status, 500);
  }
  // Oversize bodies are refused from the headers; bytes that are not HTTP get a 400.
  EXPECT_NE(Raw("POST /api/jobs HTTP/1.1\r\nHost: x\r\nContent-Length: 2097152\r\n\r\n").find(" 413 "),
            std::string::npos);
  EXPECT_NE(Raw(std::string("\x01\x02\xff garbage\r\n\r\n")).find(" 400 "), std::string::npos);
  EXPECT_NE(Raw("GET /api/health HTTP/1.1\r\nHost: x\r\n" + std::string(20000, 'X') + ": y\r\n\r\n").find(" 400 "),
            std::string::npos);
  ExpectServing();
  auto page = Http("GET", "/");
  EXPECT_NE(page.body.find("vlorch coordinator"), std::string::npos);
}

// The token on other bind addresses: security_test.cc (Secured.EveryBindAddressNeedsAToken).

// Simulated ranks speaking the protocol (attach mode, so no mpirun is involved).
class FakeRank {
 public:
  FakeRank(zmq::context_t& ctx, const std::string& endpoint, int rank, int world, int64_t incarnation = 0)
      : sock_(ctx, zmq::socket_type::dealer), rank_(rank), world_(world), incarnation_(incarnation) {
    sock_.set(zmq::sockopt::linger, 1000);
    UseAttachCredentials(sock_, endpoint);
    sock_.connect(endpoint);
  }
  void Send(ControlMessage m) {
    m.job = "attached-job";
    m.rank = rank_;
    m.incarnation = incarnation_;
    m.world = world_;
    const std::string bytes = EncodeMessage(m);
    sock_.send(zmq::buffer(bytes), zmq::send_flags::none);
  }
  void Register() {
    ControlMessage m;
    m.type = MessageType::kRegister;
    m.host = "fakehost";
    m.pid = 1000 + rank_;
    m.stage = "s";
    m.attach = true;
    Send(m);
  }
  void Heartbeat(std::optional<CollectiveState> c) {
    ControlMessage m;
    m.type = MessageType::kHeartbeat;
    m.collective = std::move(c);
    Send(m);
  }

 private:
  zmq::socket_t sock_;
  int rank_, world_;
  int64_t incarnation_;
};

// The `vlorch` front end: output and exit code of a shell command line.
std::string RunCli(const std::string& cmdline, int* rc) {
  std::string out;
  FILE* p = ::popen((cmdline + " 2>&1").c_str(), "r");
  char buf[4096];
  for (size_t n; p != nullptr && (n = std::fread(buf, 1, sizeof(buf), p)) > 0;) out.append(buf, n);
  const int status = p != nullptr ? ::pclose(p) : -1;
  *rc = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return out;
}

// `vlorch status` on a diverged job (NaN loss, carried as null): the human view says nan, the
// --json view is the API's reply; both from the front end alone, without vlorch-full.
TEST_F(LiveCoordinator, StatusCliShowsADivergedLossWithoutTheFullCli) {
  std::vector<std::unique_ptr<FakeRank>> ranks;
  for (int r = 0; r < 2; ++r) ranks.push_back(std::make_unique<FakeRank>(ctx_, coord_->zmq_endpoint(), r, 2));
  for (auto& r : ranks) r->Register();
  ControlMessage m;
  m.type = MessageType::kProgress;
  m.stage = "s", m.step = 5, m.total_steps = 10, m.samples_per_second = 12.5;
  m.loss = std::numeric_limits<double>::quiet_NaN();
  ranks[0]->Send(m);
  json j = WaitJob("attached-job", [](const json& j) { return j["ranks"].size() == 2 && j["loss"].is_null(); }, 10);
  ASSERT_TRUE(j["loss"].is_null()) << j.dump();

  // Only the front end in a directory of its own: the client commands must not need vlorch-full.
  const fs::path alone = dir_ / "bin";
  fs::create_directories(alone);
  fs::copy_file(VLORCH_CLI, alone / "vlorch");
  const std::string cli = (alone / "vlorch").string();
  const std::string at = fmt::format(" --coordinator 127.0.0.1:{}", coord_->http_port());
  int rc = -1;
  std::string out = RunCli(cli + " status attached-job" + at, &rc);
  EXPECT_EQ(rc, 0) << out;
  EXPECT_NE(out.find("loss nan"), std::string::npos) << out;
  EXPECT_NE(out.find("rank 1"), std::string::npos) << out;
  out = RunCli(cli + " status attached-job --json" + at, &rc);
  EXPECT_EQ(rc, 0) << out;
  auto parsed = json::parse(out, nullptr, false);
  ASSERT_FALSE(parsed.is_discarded()) << out;
  EXPECT_TRUE(parsed["loss"].is_null());
  EXPECT_EQ(parsed["ranks"].size(), 2u);
  EXPECT_EQ(parsed["ranks"][1]["host"], "fakehost");
  EXPECT_TRUE(parsed["ranks"][0].contains("heartbeat_age_s"));
  out = RunCli(cli + " status no-such-job" + at, &rc);
  EXPECT_EQ(rc, 2) << out;
  EXPECT_NE(out.find("no job 'no-such-job'"), std::string::npos) << out;
  out = RunCli(cli + " jobs --coordinator 127.0.0.1:1", &rc);
  EXPECT_EQ(rc, 3) << out;
  // Any other command goes to vlorch-full, which is not there: the error says so.
  out = RunCli(cli + " version", &rc);
  EXPECT_EQ(rc, 1) << out;
  EXPECT_NE(out.find("vlorch-full"), std::string::npos) << out;
  // Next to vlorch-full (the build tree), the same command runs it.
  out = RunCli(std::string(VLORCH_CLI) + " version", &rc);
  EXPECT_EQ(rc, 0) << out;
  EXPECT_NE(out.find("vlorch 0."), std::string::npos) << out;
}

TEST_F(LiveCoordinator, AttachedRanksAreTrackedAndAHangNamesTheMissingRank) {
  std::vector<std::unique_ptr<FakeRank>> ranks;
  for (int r = 0; r < 4; ++r) ranks.push_back(std::make_unique<FakeRank>(ctx_, coord_->zmq_endpoint(), r, 4));
  for (auto& r : ranks) r->Register();
  json j = WaitJob("attached-job", [](const json& j) { return j["ranks"].size() == 4; }, 10);
  ASSERT_EQ(j["ranks"].size(), 4u);
  EXPECT_EQ(j["state"], "running");
  EXPECT_TRUE(j["attached"].get<bool>());
  // Ranks 0, 1, 3 wait in allreduce #57 on 'dp'; rank 2 last left #56.
  const auto start = std::chrono::steady_clock::now();
  for (int beat = 0; beat < 60; ++beat) {
    const double t = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    for (int r : {0, 1, 3}) ranks[r]->Heartbeat(CollectiveState{"dp", "allreduce", 57, true, t, 4});
    ranks[2]->Heartbeat(CollectiveState{"dp", "allreduce", 56, false, t + 0.2, 4});
    auto events = json::parse(Http("GET", "/api/jobs/attached-job/events").body);
    bool named = false;
    for (const auto& e : events) named |= e["kind"] == "failure_detected";
    if (named) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  auto events = json::parse(Http("GET", "/api/jobs/attached-job/events").body);
  std::string message;
  for (const auto& e : events)
    if (e["kind"] == "failure_detected") message = e["message"];
  ASSERT_FALSE(message.empty()) << events.dump(1);
  EXPECT_NE(message.find("hang: rank 2 (host fakehost, pid 1002; its last call was allreduce #56"), std::string::npos)
      << message;
  EXPECT_NE(message.find("allreduce #57 on group 'dp'"), std::string::npos) << message;
  EXPECT_NE(message.find("ranks 0, 1, 3"), std::string::npos) << message;
  ExpectServing();
}

TEST_F(LiveCoordinator, SilentRankFailsAnAttachedJobAndOldIncarnationsAreIgnored) {
  std::vector<std::unique_ptr<FakeRank>> ranks;
  for (int r = 0; r < 2; ++r) ranks.push_back(std::make_unique<FakeRank>(ctx_, coord_->zmq_endpoint(), r, 2, 1));
  for (auto& r : ranks) r->Register();
  ASSERT_EQ(WaitJob("attached-job", [](const json& j) { return j["ranks"].size() == 2; }, 10)["ranks"].size(), 2u);
  // A rank of incarnation 0 (a previous run) is not this run's rank.
  FakeRank stale(ctx_, coord_->zmq_endpoint(), 1, 2, 0);
  stale.Heartbeat(std::nullopt);
  // Rank 0 keeps beating, rank 1 goes silent.
  json j;
  for (int i = 0; i < 80; ++i) {
    ranks[0]->Heartbeat(std::nullopt);
    j = json::parse(Http("GET", "/api/jobs/attached-job").body);
    if (j["state"] == "failed") break;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  ASSERT_EQ(j["state"], "failed") << j.dump(1);
  const std::string cause = j["failure_causes"][0];
  EXPECT_NE(cause.find("rank 1 (host fakehost, pid 1001) sent no heartbeat"), std::string::npos) << cause;
  EXPECT_GE(Health()["messages"]["stale"].get<int>(), 1);
  // The metrics page carries the job.
  auto metrics = Http("GET", "/metrics").body;
  EXPECT_NE(metrics.find("vlorch_job_state{job=\"attached-job\",state=\"failed\"} 1"), std::string::npos) << metrics;
}

}  // namespace
}  // namespace vlorch::coord
