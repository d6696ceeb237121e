// The coordinator's trust boundaries, attacked (docs/security.md): the HTTP API without or
// with a wrong token, from a foreign Host or Origin; job environments that name loader or MPI
// settings; secrets in API replies; forged ranks that claim a pid, a rank outside the world,
// or attach a spec that is a FIFO; text that is not UTF-8 on its way into the state store.
#include <sys/stat.h>
#include <sys/wait.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <optional>
#include <fstream>
#include <thread>

#include <fmt/format.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <zmq.hpp>

#include "common/host.h"
#include "common/secret.h"
#include "common/utf8.h"
#include "coordinator/coordinator.h"
#include "coordinator/http_client.h"
#include "coordinator/job_env.h"
#include "coordinator/job_record.h"
#include "coordinator/launcher.h"
#include "coordinator/state_store.h"
#include "jobs/control_protocol.h"

namespace vlorch::coord {
namespace {
namespace fs = std::filesystem;
using nlohmann::json;

fs::path TempDir(const std::string& name) {
  fs::path p = fs::temp_directory_path() / fmt::format("vlorch-sec-{}-{}", name, ::getpid());
  fs::remove_all(p);
  fs::create_directories(p);
  return p;
}

// A job spec the coordinator accepts and can plan without data: one stage of steps.
std::string TinySpec(const fs::path& dir, const std::string& comment = "") {
  fs::create_directories(dir / "store");
  return fmt::format(R"(# {}
name: sec-job
run_dir: {}
model:
  vision: {{image_size: 32, patch_size: 8, hidden: 64, layers: 2, heads: 4, intermediate: 128}}
  qformer: {{num_queries: 8, hidden: 64, layers: 2, heads: 4, intermediate: 128, cross_attention_frequency: 2}}
  projector: {{kind: linear}}
  llm: {{kind: opt, vocab_size: 272, hidden: 64, layers: 2, heads: 4, intermediate: 128, max_positions: 256}}
data:
  stores: [{}]
  template: blip2_caption
  tokenizer: {{kind: byte}}
  max_len: 96
stages:
  - name: only
    trainable: ["language_projection.*"]
    steps: 4
    batch_size: 2
)",
                     comment, (dir / "run").string(), (dir / "store").string());
}

// Raw HTTP on a fresh connection: what comes back before the server closes.
std::string Raw(int port, const std::string& bytes) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
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

int StatusOf(const std::string& raw_reply) {
  return raw_reply.size() > 12 ? std::atoi(raw_reply.substr(9, 3).c_str()) : 0;
}

class Secured : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = TempDir(::testing::UnitTest::GetInstance()->current_test_info()->name());
    // Token publication goes to this test's directory, not the user's home.
    ::setenv("VLORCH_HOME", (dir_ / "home").c_str(), 1);
    options_.state_dir = (dir_ / "state").string();
    options_.http_port = 0;
    options_.zmq_endpoint = "tcp://127.0.0.1:*";
    options_.heartbeat_timeout_s = 1.0;
    options_.hang_timeout_s = 1.0;
  }
  void TearDown() override {
    coord_.reset();
    ::unsetenv("VLORCH_HOME");
    fs::remove_all(dir_);
  }
  // Starts the coordinator and registers the attach names these tests' ranks use, so that
  // what a test refuses is refused for the reason it tests (see AnAttachUnderAnUnregistered...).
  void Start() {
    sock_.reset();  // a restarted coordinator listens on a new port
    auto c = Coordinator::Start(options_);
    ASSERT_TRUE(c.ok()) << c.status().ToString();
    coord_ = std::move(*c);
    for (std::string name : {"attached", "utf8-job", "fifo-job", "dev-job", "plain-job", "stranger-job", "known-job"})
      ASSERT_TRUE(coord_->RegisterAttach(name).ok());
    for (int j = 0; j < 10; ++j) ASSERT_TRUE(coord_->RegisterAttach(fmt::format("flood-{}", j)).ok());
  }
  HttpResult Http(const std::string& method, const std::string& target, const std::string& body = "",
                  const std::string& token = "<own>") {
    auto r = HttpCall("127.0.0.1", coord_->http_port(), method, target, body, token == "<own>" ? coord_->token() : token);
    EXPECT_TRUE(r.ok()) << r.status().ToString();
    return r.ok() ? *r : HttpResult{};
  }
  json Health() { return json::parse(Http("GET", "/api/health").body); }

  // A DEALER with the given credentials (none: a plain, unauthenticated peer).
  std::unique_ptr<zmq::socket_t> Dealer(const std::optional<CurveCredentials>& curve) {
    auto s = std::make_unique<zmq::socket_t>(ctx_, zmq::socket_type::dealer);
    s->set(zmq::sockopt::linger, 1000);
    if (curve) {
      s->set(zmq::sockopt::curve_serverkey, curve->server_public);
      s->set(zmq::sockopt::curve_publickey, curve->public_key);
      s->set(zmq::sockopt::curve_secretkey, curve->secret_key);
    }
    s->connect(coord_->zmq_endpoint());
    return s;
  }
  // Sends on a connection with the attach credentials, as an attached rank would.
  void Send(ControlMessage m) {
    if (!sock_) sock_ = Dealer(coord_->attach_credentials());
    SendOn(*sock_, m);
  }
  static void SendOn(zmq::socket_t& s, const ControlMessage& m) {
    const std::string bytes = EncodeMessage(m);
    s.send(zmq::buffer(bytes), zmq::send_flags::none);
  }
  static ControlMessage Register(const std::string& job, int rank, int world, int64_t pid, int64_t incarnation = 0) {
    ControlMessage m;
    m.type = MessageType::kRegister;
    m.job = job;
    m.rank = rank;
    m.world = world;
    m.incarnation = incarnation;
    m.host = "fakehost";
    m.pid = pid;
    m.stage = "only";
    m.attach = true;
    return m;
  }
  // Polls until pred() holds (at most timeout_s): no fixed sleeps.
  static bool Eventually(const std::function<bool()>& pred, double timeout_s = 10) {
    const auto end = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_s);
    while (std::chrono::steady_clock::now() < end) {
      if (pred()) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return pred();
  }

  fs::path dir_;
  CoordinatorOptions options_;
  std::unique_ptr<Coordinator> coord_;
  zmq::context_t ctx_{1};
  std::unique_ptr<zmq::socket_t> sock_;
};

// ---------------------------------------------------------------- HTTP

TEST_F(Secured, EveryRequestNeedsTheTokenAndHealthAloneAnswersWithoutIt) {
  Start();
  const std::string token = coord_->token();
  EXPECT_EQ(token.size(), 64u);
  for (const std::string& bad : {std::string(), std::string("guess"), token.substr(0, 63), token + "x"}) {
    EXPECT_EQ(Http("GET", "/api/jobs", "", bad).status, 401) << bad;
    EXPECT_EQ(Http("GET", "/metrics", "", bad).status, 401) << bad;
    EXPECT_EQ(Http("GET", "/", "", bad).status, 401) << bad;
    EXPECT_EQ(Http("POST", "/api/jobs", R"({"spec_path":"/x.yaml"})", bad).status, 401) << bad;
    EXPECT_EQ(Http("POST", "/api/shutdown", "", bad).status, 401) << bad;
  }
  EXPECT_FALSE(coord_->WaitFor(0.05)) << "an unauthenticated shutdown stopped the coordinator";
  // Health without the token: alive, nothing more.
  auto open = json::parse(Http("GET", "/api/health", "", "").body);
  EXPECT_TRUE(open["ok"].get<bool>());
  EXPECT_FALSE(open["authenticated"].get<bool>());
  EXPECT_FALSE(open.contains("state_dir"));
  EXPECT_FALSE(open.contains("pid"));
  auto full = Health();
  EXPECT_EQ(full["pid"].get<int>(), ::getpid());
  EXPECT_GE(full["http_unauthorized"].get<int>(), 20);
  EXPECT_EQ(Http("GET", "/api/jobs").status, 200);
  // The token is kept private in the state directory and survives a restart.
  const fs::path kept = fs::path(options_.state_dir) / "http-token";
  struct stat st {};
  ASSERT_EQ(::stat(kept.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  EXPECT_EQ(*ReadSecretFile(kept.string()), token);
  coord_.reset();
  Start();
  EXPECT_EQ(coord_->token(), token);
  // Authenticated shutdown works.
  EXPECT_EQ(Http("POST", "/api/shutdown").status, 200);
  EXPECT_TRUE(coord_->WaitFor(5));
}

TEST_F(Secured, TheTokenIsPublishedForThisUserOnThisMachineOnly) {
  Start();
  const int port = coord_->http_port();
  const std::string path = TokenDiscoveryPath(port);
  EXPECT_EQ(path, (dir_ / "home" / "tokens" / std::to_string(port)).string());
  struct stat st {};
  ASSERT_EQ(::stat(path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  ASSERT_EQ(::stat(fs::path(path).parent_path().c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0700u);
  EXPECT_EQ(DiscoverToken("127.0.0.1", port), coord_->token());
  EXPECT_EQ(DiscoverToken("localhost", port), coord_->token());
  EXPECT_EQ(DiscoverToken("192.0.2.7", port), "") << "another host's coordinator must not get this one's token";
  // A file others can read is no proof of anything: refused, not used.
  ::chmod(path.c_str(), 0644);
  EXPECT_EQ(DiscoverToken("127.0.0.1", port), "");
  auto refused = ReadSecretFile(path);
  ASSERT_FALSE(refused.ok());
  EXPECT_NE(refused.status().message().find("readable or writable by others"), std::string::npos);
  ::chmod(path.c_str(), 0600);
  // `vlorch` finds it by itself.
  const std::string cmd = fmt::format("{} jobs --coordinator 127.0.0.1:{} 2>&1", VLORCH_CLI, port);
  FILE* p = ::popen(cmd.c_str(), "r");
  std::string out;
  char buf[4096];
  for (size_t n; (n = std::fread(buf, 1, sizeof(buf), p)) > 0;) out.append(buf, n);
  EXPECT_EQ(WEXITSTATUS(::pclose(p)), 0) << out;
  // Stopping removes the publication.
  coord_.reset();
  EXPECT_FALSE(fs::exists(path));
}

TEST_F(Secured, ForeignHostAndCrossSiteOriginAreRefusedEvenWithTheToken) {
  Start();
  const int port = coord_->http_port();
  const std::string auth = "Authorization: Bearer " + coord_->token() + "\r\n";
  auto get = [&](const std::string& headers) {
    return StatusOf(Raw(port, "GET /api/jobs HTTP/1.1\r\n" + headers + auth + "Connection: close\r\n\r\n"));
  };
  EXPECT_EQ(get(fmt::format("Host: 127.0.0.1:{}\r\n", port)), 200);
  EXPECT_EQ(get(fmt::format("Host: localhost:{}\r\n", port)), 200);
  EXPECT_EQ(get("Host: [::1]\r\n"), 200);
  // DNS rebinding: a page of evil.example whose name now resolves to 127.0.0.1.
  EXPECT_EQ(get(fmt::format("Host: evil.example:{}\r\n", port)), 403);
  EXPECT_EQ(get("Host: 127.0.0.1.evil.example\r\n"), 403);
  // CSRF: a page elsewhere posting to the coordinator.
  EXPECT_EQ(get(fmt::format("Host: 127.0.0.1:{}\r\nOrigin: http://evil.example\r\n", port)), 403);
  EXPECT_EQ(get(fmt::format("Host: 127.0.0.1:{}\r\nOrigin: null\r\n", port)), 403);
  EXPECT_EQ(get(fmt::format("Host: 127.0.0.1:{}\r\nOrigin: http://127.0.0.1:{}\r\n", port, port)), 200);
  const std::string shutdown = Raw(port, fmt::format("POST /api/shutdown HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nOrigin: "
                                                     "http://evil.example\r\n{}Content-Length: 0\r\nConnection: close\r\n\r\n",
                                                     port, auth));
  EXPECT_EQ(StatusOf(shutdown), 403) << shutdown;
  EXPECT_FALSE(coord_->WaitFor(0.05));
}

TEST_F(Secured, PublicReadOpensReadOnlyViewsToLoopbackAndNothingElse) {
  options_.public_read = true;
  Start();
  EXPECT_EQ(Http("GET", "/api/jobs", "", "").status, 200);
  EXPECT_EQ(Http("GET", "/metrics", "", "").status, 200);
  EXPECT_EQ(Http("GET", "/", "", "").status, 200);
  EXPECT_EQ(Http("GET", "/api/jobs/nope", "", "").status, 404);
  EXPECT_EQ(Http("GET", "/api/jobs/nope/logs", "", "").status, 401) << "logs may hold secrets";
  EXPECT_EQ(Http("POST", "/api/jobs", R"({"spec_path":"/x.yaml"})", "").status, 401);
  EXPECT_EQ(Http("POST", "/api/jobs/nope/cancel", "", "").status, 401);
  EXPECT_EQ(Http("POST", "/api/shutdown", "", "").status, 401);
}

TEST_F(Secured, EveryBindAddressNeedsAToken) {
  options_.http_address = "0.0.0.0";
  options_.token = "short";
  auto refused = Coordinator::Start(options_);
  ASSERT_FALSE(refused.ok());
  EXPECT_NE(refused.status().message().find("at least 16"), std::string::npos);
  options_.token = "a-given-token-of-enough-length";
  Start();
  EXPECT_EQ(Http("GET", "/api/jobs", "", "").status, 401);
  EXPECT_EQ(Http("GET", "/api/jobs", "", "guess").status, 401);
  EXPECT_EQ(Http("GET", "/api/jobs", "", "a-given-token-of-enough-length").status, 200);
  // Not loopback-bound: any Host (a cluster name), still the token.
  EXPECT_EQ(StatusOf(Raw(coord_->http_port(), "GET /api/jobs HTTP/1.1\r\nHost: node7.cluster\r\nAuthorization: Bearer "
                                              "a-given-token-of-enough-length\r\nConnection: close\r\n\r\n")),
            200);
}

// ---------------------------------------------------------------- job environment

TEST(JobEnv, LoaderAndLaunchSettingsAreRefusedWhoeverAllowsThem) {
  for (const char* name : {"LD_PRELOAD", "LD_LIBRARY_PATH", "LD_AUDIT", "GLIBC_TUNABLES", "OMPI_MCA_plm_rsh_agent",
                           "OMPI_MCA_orte_launch_agent", "PMIX_MCA_ptl", "PRTE_MCA_x", "PATH", "PYTHONPATH",
                           "PYTHONSTARTUP", "BASH_ENV", "NCCL_NET_PLUGIN", "NCCL_TUNER_PLUGIN", "VLORCH_SPM_SHIM",
                           "CUDA_INJECTION64_PATH", "MALLOC_MMAP_THRESHOLD_", "HOME", "UCX_MODULE_DIR"}) {
    Status s = CheckJobEnv({{name, "/tmp/evil.so"}}, {"*_ALLOWED_BY_OPERATOR"});
    EXPECT_FALSE(s.ok()) << name;
    EXPECT_NE(s.message().find(name), std::string::npos) << s.message();
    EXPECT_NE(s.message().find("is refused"), std::string::npos) << s.message();
    EXPECT_FALSE(CheckOperatorAllowList({name}).ok()) << "operator may not allow " << name;
  }
  // Prefixes that cover a forbidden name are refused as operator entries too.
  EXPECT_FALSE(CheckOperatorAllowList({"L*"}).ok());
  EXPECT_FALSE(CheckOperatorAllowList({"OMPI_MCA_*"}).ok());
  EXPECT_FALSE(CheckOperatorAllowList({"*"}).ok());
  EXPECT_TRUE(CheckOperatorAllowList({"WANDB_*", "HF_TOKEN"}).ok());
  // The built-in allow-list; anything else needs the operator's word.
  EXPECT_TRUE(CheckJobEnv({{"OMP_NUM_THREADS", "1"}, {"VLORCH_FAULT", "kill:rank=1"}, {"NCCL_DEBUG", "INFO"}}, {}).ok());
  Status unknown = CheckJobEnv({{"HF_TOKEN", "hf_secret"}}, {});
  ASSERT_FALSE(unknown.ok());
  EXPECT_NE(unknown.message().find("--allow-env HF_TOKEN"), std::string::npos) << unknown.message();
  EXPECT_TRUE(CheckJobEnv({{"HF_TOKEN", "hf_secret"}, {"WANDB_API_KEY", "w"}}, {"HF_TOKEN", "WANDB_*"}).ok());
  EXPECT_FALSE(CheckJobEnv({{"BAD=NAME", "x"}}, {}).ok());
  EXPECT_FALSE(CheckJobEnv({{"OMP_NUM_THREADS", std::string("1\0x", 3)}}, {}).ok());
  // Redaction: values of anything but the built-in harmless settings.
  auto shown = RedactedEnv({{"HF_TOKEN", "hf_secret"}, {"OMP_NUM_THREADS", "2"}});
  EXPECT_EQ(shown["HF_TOKEN"], "<redacted>");
  EXPECT_EQ(shown["OMP_NUM_THREADS"], "2");
}

TEST_F(Secured, SubmittedEnvironmentIsFilteredAndItsSecretsNeverComeBack) {
  options_.allow_env = {"HF_TOKEN"};
  options_.max_running_jobs = 0;  // queued only: nothing is launched
  Start();
  std::ofstream(dir_ / "job.yaml") << TinySpec(dir_);
  json body = {{"spec_path", (dir_ / "job.yaml").string()}, {"np", 1}, {"env", {{"LD_PRELOAD", "/tmp/evil.so"}}}};
  auto refused = Http("POST", "/api/jobs", body.dump());
  EXPECT_EQ(refused.status, 400) << refused.body;
  EXPECT_NE(refused.body.find("LD_PRELOAD is refused"), std::string::npos) << refused.body;
  body["env"] = {{"OMPI_MCA_plm_rsh_agent", "/tmp/evil.sh"}};
  EXPECT_EQ(Http("POST", "/api/jobs", body.dump()).status, 400);
  EXPECT_EQ(Http("GET", "/api/jobs").body, "[]") << "a refused submission left a job behind";
  body["env"] = {{"HF_TOKEN", "hf_very_secret_value"}, {"OMP_NUM_THREADS", "1"}};
  auto ok = Http("POST", "/api/jobs", body.dump());
  ASSERT_EQ(ok.status, 201) << ok.body;
  const std::string id = json::parse(ok.body)["id"];
  const std::string view = Http("GET", "/api/jobs/" + id).body;
  EXPECT_EQ(view.find("hf_very_secret_value"), std::string::npos) << view;
  EXPECT_EQ(json::parse(view)["env"]["HF_TOKEN"], "<redacted>");
  EXPECT_EQ(json::parse(view)["env"]["OMP_NUM_THREADS"], "1");
  for (const std::string& target : std::vector<std::string>{"/api/jobs", "/api/jobs/" + id + "/events", "/metrics", "/"})
    EXPECT_EQ(Http("GET", target).body.find("hf_very_secret_value"), std::string::npos) << target;
}

// ---------------------------------------------------------------- text into the state store

TEST_F(Secured, SpecWithALatin1ByteAndCausesCutMidCharacterAreStoredReplaced) {
  options_.max_running_jobs = 0;
  Start();
  std::ofstream(dir_ / "job.yaml") << TinySpec(dir_, "caf\xe9 au lait");  // Latin-1 e-acute
  json body = {{"spec_path", (dir_ / "job.yaml").string()}, {"np", 1}};
  auto r = Http("POST", "/api/jobs", body.dump());
  ASSERT_EQ(r.status, 201) << r.body;
  // An attached job's rank reports a cause whose 2000-byte cut falls inside a character.
  Send(Register("utf8-job", 0, 1, 4242));
  ControlMessage e;
  e.type = MessageType::kError;
  e.job = "utf8-job";
  e.stage = "only";
  e.cause = std::string(1999, 'a') + "\xc3\xa9\xc3\xa9" + "\xff\xfe";
  Send(e);
  json job;
  ASSERT_TRUE(Eventually([&] {
    auto j = Http("GET", "/api/jobs/utf8-job");
    if (j.status != 200) return false;
    job = json::parse(j.body);
    return job["state"] == "failed";
  })) << job.dump();
  const std::string cause = job["failure_causes"][0];
  EXPECT_TRUE(IsValidUtf8(cause));
  // Everything stays readable after a restart from the state store.
  coord_.reset();
  Start();
  auto jobs = json::parse(Http("GET", "/api/jobs").body);
  EXPECT_EQ(jobs.size(), 2u) << jobs.dump();
  auto again = json::parse(Http("GET", "/api/jobs/utf8-job").body);
  EXPECT_EQ(again["failure_causes"][0], cause);
}

TEST(Utf8, InvalidSequencesAreReplacedAndCutsKeepCharactersWhole) {
  EXPECT_EQ(SanitizeUtf8("plain"), "plain");
  EXPECT_EQ(SanitizeUtf8("caf\xe9"), "caf\xef\xbf\xbd");
  EXPECT_EQ(SanitizeUtf8("\xc0\xaf"), "\xef\xbf\xbd\xef\xbf\xbd");           // overlong '/'
  EXPECT_EQ(SanitizeUtf8("\xed\xa0\x80"), "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd");  // a surrogate
  EXPECT_EQ(SanitizeUtf8("\xf4\x90\x80\x80").substr(0, 3), "\xef\xbf\xbd");  // past U+10FFFF
  EXPECT_EQ(SanitizeUtf8("\xe2\x82\xac"), "\xe2\x82\xac");                   // the euro sign
  EXPECT_EQ(SanitizeUtf8("ab\xc3\xa9", 3), "ab");
  EXPECT_EQ(SanitizeUtf8("ab\xc3\xa9", 4), "ab\xc3\xa9");
  EXPECT_TRUE(IsValidUtf8(SanitizeUtf8(std::string("\x80\xbf\xfe\xff\xc3", 5))));
}

// ---------------------------------------------------------------- the control plane

TEST_F(Secured, ForgedRanksOutsideTheWorldAreCountedNotStored) {
  options_.max_attached_jobs = 3;
  Start();
  for (int r = 0; r < 2; ++r) Send(Register("attached", r, 2, 100 + r));
  ASSERT_TRUE(Eventually([&] {
    auto j = Http("GET", "/api/jobs/attached");
    return j.status == 200 && json::parse(j.body)["ranks"].size() == 2;
  }));
  // Heartbeats of ranks that the two-rank world does not have; a registration claiming a
  // bigger world.
  for (int r = 2; r < 500; ++r) {
    ControlMessage hb;
    hb.type = MessageType::kHeartbeat;
    hb.job = "attached";
    hb.rank = r;
    Send(hb);
  }
  Send(Register("attached", 1, 4096, 7));
  // More attached jobs than allowed.
  for (int j = 0; j < 10; ++j) Send(Register(fmt::format("flood-{}", j), 0, 1, 1));
  ASSERT_TRUE(Eventually([&] { return Health()["messages"]["refused"].get<int>() >= 498 + 1 + 8; }))
      << Health().dump();
  EXPECT_EQ(json::parse(Http("GET", "/api/jobs/attached").body)["ranks"].size(), 2u);
  EXPECT_EQ(json::parse(Http("GET", "/api/jobs").body).size(), 3u);
}

TEST_F(Secured, AnAttachSpecThatIsAFifoDoesNotFreezeTheApi) {
  Start();
  const fs::path fifo = dir_ / "spec.fifo";
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  ControlMessage m = Register("fifo-job", 0, 1, 1);
  m.spec = fifo.string();
  Send(m);
  ControlMessage dev = Register("dev-job", 0, 1, 1);
  dev.spec = "/dev/zero";
  Send(dev);
  // Opening a FIFO for reading blocks until a writer comes: had the coordinator done that under
  // its lock, these requests would never be answered.
  ASSERT_TRUE(Eventually([&] {
    auto r = HttpCall("127.0.0.1", coord_->http_port(), "GET", "/api/jobs/fifo-job", "", coord_->token(), 2);
    return r.ok() && r->status == 200;
  }));
  auto job = json::parse(Http("GET", "/api/jobs/fifo-job").body);
  EXPECT_EQ(job["name"], "fifo-job");  // no spec was read
  EXPECT_EQ(Http("GET", "/api/jobs/dev-job").status, 200);
  EXPECT_EQ(Health()["ok"], true);
}

// A stand-in for mpirun: it starts one real child (the "rank") and waits; the coordinator
// launches it as it would mpirun.
TEST_F(Secured, APidARankMerelyClaimsIsNeverSignalled) {
  const fs::path fake = dir_ / "fake-mpirun.sh";
  std::ofstream(fake) << "#!/bin/sh\nenv | grep '^VLORCH_CURVE_' > " << (dir_ / "curve.env").string()
                       << "\nsleep 300 &\necho $! > " << (dir_ / "child.pid").string() << "\nwait\n";
  fs::permissions(fake, fs::perms::owner_all);
  options_.mpirun = fake.string();
  options_.heartbeat_timeout_s = 0.5;
  options_.terminate_grace_s = 0.2;
  options_.default_restart_budget = 0;
  Start();
  // A process that is not the job's: the victim a forged registration names.
  auto victim = Spawn({"sleep", "300"}, {}, (dir_ / "victim.log").string());
  ASSERT_TRUE(victim.ok());
  std::ofstream(dir_ / "job.yaml") << TinySpec(dir_);
  auto r = Http("POST", "/api/jobs", json{{"spec_path", (dir_ / "job.yaml").string()}, {"np", 2}}.dump());
  ASSERT_EQ(r.status, 201) << r.body;
  const std::string id = json::parse(r.body)["id"];
  ASSERT_TRUE(Eventually([&] { return fs::exists(dir_ / "child.pid") && fs::file_size(dir_ / "child.pid") > 0; }));
  int64_t child = 0;
  std::ifstream(dir_ / "child.pid") >> child;
  ASSERT_GT(child, 0);
  auto incarnation = json::parse(Http("GET", "/api/jobs/" + id).body)["incarnation"].get<int64_t>();
  // The launcher handed mpirun this incarnation's key pair in its environment.
  CurveCredentials keys;
  std::ifstream env(dir_ / "curve.env");
  for (std::string line; std::getline(env, line);) {
    const auto eq = line.find('=');
    const std::string name = line.substr(0, eq), value = line.substr(eq + 1);
    if (name == kCurveServerEnv) keys.server_public = value;
    if (name == kCurvePublicEnv) keys.public_key = value;
    if (name == kCurveSecretEnv) keys.secret_key = value;
  }
  ASSERT_TRUE(keys.Valid()) << "the launcher did not hand mpirun its CURVE credentials";
  EXPECT_EQ(keys.server_public, coord_->attach_credentials().server_public);
  auto job_sock = Dealer(keys);
  // Rank 0 is the launcher's real child; "rank 1" names the victim. Both then fall silent.
  for (int rank = 0; rank < 2; ++rank) {
    ControlMessage m = Register(id, rank, 2, rank == 0 ? child : victim->pid, incarnation);
    m.attach = false;
    m.host = HostName();
    SendOn(*job_sock, m);
  }
  ASSERT_TRUE(Eventually([&] { return json::parse(Http("GET", "/api/jobs/" + id).body)["state"] == "failed"; }, 20));
  EXPECT_TRUE(StillRunning(victim->pid, victim->start_ticks)) << "the coordinator killed a process it did not start";
  EXPECT_GE(Health()["kills_refused"].get<int>(), 1);
  EXPECT_TRUE(Eventually([&] { return ProcessStartTicks(static_cast<pid_t>(child)) == 0; }))
      << "the launcher's own rank was not stopped";
  ::kill(victim->pid, SIGKILL);
  ::waitpid(victim->pid, nullptr, 0);
}

TEST_F(Secured, PeersWithoutAKnownKeyAreNotHeard) {
  Start();
  // A plain peer cannot even complete the handshake; a CURVE peer with a key of its own is
  // refused by the ZAP handler and counted.
  auto plain = Dealer(std::nullopt);
  SendOn(*plain, Register("plain-job", 0, 1, 1));
  char pub[41], sec[41];
  ASSERT_EQ(zmq_curve_keypair(pub, sec), 0);
  auto stranger = Dealer(CurveCredentials{coord_->attach_credentials().server_public, pub, sec});
  SendOn(*stranger, Register("stranger-job", 0, 1, 1));
  ASSERT_TRUE(Eventually([&] { return Health()["peers_unauthenticated"].get<int>() >= 1; })) << Health().dump();
  // The attach key is heard (and shows the two above were not refused for another reason).
  Send(Register("known-job", 0, 1, 1));
  ASSERT_TRUE(Eventually([&] { return Http("GET", "/api/jobs/known-job").status == 200; }));
  EXPECT_EQ(Http("GET", "/api/jobs/plain-job").status, 404);
  EXPECT_EQ(Http("GET", "/api/jobs/stranger-job").status, 404);
  EXPECT_EQ(Health()["messages"]["ok"].get<int>(), 1);
  const std::string metrics = Http("GET", "/metrics").body;
  EXPECT_NE(metrics.find("vlorch_coordinator_peers_unauthenticated_total "), std::string::npos);
  // The published attach credentials are this user's, private, and what an agent finds.
  auto found = FindCurveCredentials(coord_->zmq_endpoint());
  ASSERT_TRUE(found.ok() && found->has_value());
  EXPECT_EQ((*found)->public_key, coord_->attach_credentials().public_key);
  EXPECT_FALSE(FindCurveCredentials("tcp://192.0.2.7:7011")->has_value());
  // A restart keeps the keys: adopted and attached ranks reconnect with what they hold.
  const auto before = coord_->attach_credentials();
  coord_.reset();
  Start();
  EXPECT_EQ(coord_->attach_credentials().server_public, before.server_public);
  EXPECT_EQ(coord_->attach_credentials().public_key, before.public_key);
}

// The attach key alone does not make the coordinator track a job: the name must have been
// registered over the API (with the token) first. Registrations survive a restart; with
// open_attach any name is taken as before.
TEST_F(Secured, AnAttachUnderAnUnregisteredNameIsRefusedAndCounted) {
  Start();
  const int refused_before = Health()["messages"]["refused"].get<int>();
  Send(Register("newcomer", 0, 1, 1));
  ASSERT_TRUE(Eventually([&] { return Health()["messages"]["refused"].get<int>() == refused_before + 1; }))
      << Health().dump();
  EXPECT_EQ(Http("GET", "/api/jobs/newcomer").status, 404);
  // Registering takes the token, and a job name.
  EXPECT_EQ(Http("POST", "/api/attach/newcomer", "", "").status, 401);
  EXPECT_EQ(Http("POST", "/api/attach/..%2Fetc", "").status, 400);
  EXPECT_EQ(Http("GET", "/api/attach", "", "").status, 401);
  ASSERT_EQ(Http("POST", "/api/attach/newcomer").status, 201);
  EXPECT_EQ(Http("POST", "/api/attach/newcomer").status, 201);  // idempotent
  Send(Register("newcomer", 0, 1, 1));
  ASSERT_TRUE(Eventually([&] { return Http("GET", "/api/jobs/newcomer").status == 200; }));
  EXPECT_TRUE(json::parse(Http("GET", "/api/jobs/newcomer").body)["attached"].get<bool>());
  // Durable: a restarted coordinator still knows the name.
  coord_.reset();
  Start();
  const auto names = json::parse(Http("GET", "/api/attach").body)["names"];
  EXPECT_NE(std::find(names.begin(), names.end(), "newcomer"), names.end()) << names.dump();
  // The CLI registers too (`vlorch attach NAME`, token found as the same user).
  const std::string cmd = fmt::format("{} attach cli-job --coordinator 127.0.0.1:{} --token {} 2>&1", VLORCH_CLI,
                                      coord_->http_port(), coord_->token());
  FILE* p = ::popen(cmd.c_str(), "r");
  std::string out;
  char buf[4096];
  for (size_t n; (n = std::fread(buf, 1, sizeof(buf), p)) > 0;) out.append(buf, n);
  EXPECT_EQ(WEXITSTATUS(::pclose(p)), 0) << out;
  EXPECT_NE(out.find("registered cli-job for attach mode"), std::string::npos) << out;
  const auto after = json::parse(Http("GET", "/api/attach").body)["names"];
  EXPECT_NE(std::find(after.begin(), after.end(), "cli-job"), after.end()) << after.dump();
  // open_attach: any name, as long as the ranks hold the attach key.
  coord_.reset();
  options_.open_attach = true;
  Start();
  Send(Register("anyone", 0, 1, 1));
  ASSERT_TRUE(Eventually([&] { return Http("GET", "/api/jobs/anyone").status == 200; }));
}

// A launch whose ranks exit 4 (a disk ran out of space, worker_main.cc) fails the job at
// once with the rank's message and what to do, instead of spending the restart budget on
// launches that would fail the same way; exit 3 is restarted as before.
TEST_F(Secured, OutOfSpaceFailsTheJobWithoutSpendingRestarts) {
  const fs::path fake = dir_ / "fake-mpirun.sh";
  std::ofstream(fake) << "#!/bin/sh\n"
                         "echo 'E 01:02:03.456 r0@h] stage train: ResourceExhausted: checkpoint step 8 of stage "
                         "train needs 2.0 MiB on the filesystem of /x, which has 1.0 MiB free: free space there'\n"
                         "exit $(cat " << (dir_ / "code").string() << ")\n";
  fs::permissions(fake, fs::perms::owner_all);
  options_.mpirun = fake.string();
  options_.default_restart_budget = 3;
  options_.backoff_initial_s = 0.05;
  Start();
  std::ofstream(dir_ / "job.yaml") << TinySpec(dir_);
  auto submit = [&] {
    auto r = Http("POST", "/api/jobs", json{{"spec_path", (dir_ / "job.yaml").string()}, {"np", 2}}.dump());
    EXPECT_EQ(r.status, 201) << r.body;
    return json::parse(r.body)["id"].get<std::string>();
  };
  std::ofstream(dir_ / "code") << "4\n";
  const std::string full = submit();
  json job;
  ASSERT_TRUE(Eventually([&] {
    job = json::parse(Http("GET", "/api/jobs/" + full).body);
    return job["state"] == "failed";
  })) << job.dump();
  EXPECT_EQ(job["restarts"].get<int>(), 0);
  const std::string events = Http("GET", "/api/jobs/" + full + "/events").body;
  EXPECT_NE(events.find("out of disk space, not restarting"), std::string::npos) << events;
  EXPECT_NE(events.find("checkpoint step 8 of stage train needs 2.0 MiB"), std::string::npos) << events;
  EXPECT_NE(events.find("free space and run `vlorch resume " + full + "`"), std::string::npos) << events;

  // Exit 3 (worth restarting) spends the budget.
  std::ofstream(dir_ / "code", std::ios::trunc) << "3\n";
  const std::string flaky = submit();
  ASSERT_TRUE(Eventually([&] {
    job = json::parse(Http("GET", "/api/jobs/" + flaky).body);
    return job["state"] == "failed";
  })) << job.dump();
  EXPECT_EQ(job["restarts"].get<int>(), 3);
}

TEST_F(Secured, TheAttachKeyCannotSpeakForALaunchedJob) {
  const fs::path fake = dir_ / "fake-mpirun.sh";
  std::ofstream(fake) << "#!/bin/sh\nexec sleep 300\n";
  fs::permissions(fake, fs::perms::owner_all);
  options_.mpirun = fake.string();
  Start();
  std::ofstream(dir_ / "job.yaml") << TinySpec(dir_);
  auto r = Http("POST", "/api/jobs", json{{"spec_path", (dir_ / "job.yaml").string()}, {"np", 2}}.dump());
  ASSERT_EQ(r.status, 201) << r.body;
  const std::string id = json::parse(r.body)["id"];
  json job;
  ASSERT_TRUE(Eventually([&] {
    job = json::parse(Http("GET", "/api/jobs/" + id).body);
    return job["state"] == "launching";
  }));
  const int64_t incarnation = job["incarnation"];
  // With the attach key: a launched-mode registration, an error report, an attach under the
  // launched job's id. None may touch the job.
  ControlMessage reg = Register(id, 0, 2, 1, incarnation);
  reg.attach = false;
  Send(reg);
  ControlMessage err;
  err.type = MessageType::kError;
  err.job = id;
  err.incarnation = incarnation;
  err.cause = "forged";
  Send(err);
  Send(Register(id, 1, 2, 1, incarnation));
  ASSERT_TRUE(Eventually([&] { return Health()["messages"]["refused"].get<int>() >= 3; })) << Health().dump();
  job = json::parse(Http("GET", "/api/jobs/" + id).body);
  EXPECT_EQ(job["ranks"].size(), 0u) << job.dump();
  EXPECT_EQ(job["state"], "launching");
  EXPECT_TRUE(job["failure_causes"].empty());
  EXPECT_FALSE(job["curve_public"].get<std::string>().empty());
  ::kill(static_cast<pid_t>(job["launcher_pid"].get<int64_t>()), SIGKILL);
}

TEST_F(Secured, RunDirectoriesOutsideTheRunRootAreRefused) {
  options_.run_root = (dir_ / "runs").string();
  options_.max_running_jobs = 0;
  fs::create_directories(dir_ / "runs");
  Start();
  // The tiny spec's run_dir is <dir>/run: outside <dir>/runs.
  std::ofstream(dir_ / "job.yaml") << TinySpec(dir_);
  auto r = Http("POST", "/api/jobs", json{{"spec_path", (dir_ / "job.yaml").string()}, {"np", 1}}.dump());
  EXPECT_EQ(r.status, 400) << r.body;
  EXPECT_NE(r.body.find("outside this coordinator's run root"), std::string::npos) << r.body;
  // A symlink inside the root that points out of it is outside too.
  fs::create_directory_symlink(dir_, dir_ / "runs" / "escape");
  std::string spec = TinySpec(dir_);
  spec.replace(spec.find("run_dir: "), std::string("run_dir: ").size() + (dir_ / "run").string().size(),
               "run_dir: " + (dir_ / "runs" / "escape" / "run").string());
  std::ofstream(dir_ / "job2.yaml") << spec;
  r = Http("POST", "/api/jobs", json{{"spec_path", (dir_ / "job2.yaml").string()}, {"np", 1}}.dump());
  EXPECT_EQ(r.status, 400) << r.body;
  spec = TinySpec(dir_);
  spec.replace(spec.find("run_dir: "), std::string("run_dir: ").size() + (dir_ / "run").string().size(),
               "run_dir: " + (dir_ / "runs" / "inside").string());
  std::ofstream(dir_ / "job3.yaml") << spec;
  r = Http("POST", "/api/jobs", json{{"spec_path", (dir_ / "job3.yaml").string()}, {"np", 1}}.dump());
  EXPECT_EQ(r.status, 201) << r.body;
}

}  // namespace
}  // namespace vlorch::coord
