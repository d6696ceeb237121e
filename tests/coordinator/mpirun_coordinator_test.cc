// The coordinator end to end with real processes on loopback: `vlorch coordinator start`
// supervising `mpirun -np 4 vlorch-worker` on a two-stage tiny job.
//   - kill -9 of a worker mid-stage: the coordinator names the rank and the signal, restarts
//     from the last commit, the job succeeds with restarts = 1, and its final weights are the
//     bytes of an uninterrupted run;
//   - kill -9 of the coordinator mid-job: a new one recovers the job, events and progress
//     from RocksDB, adopts the running mpirun, and the job completes;
//   - a rank made to hang after a step (VLORCH_FAULT=hang) is named, with the collective the
//     others wait in, within the hang timeout (long before the communicator's own timeout).
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <sstream>
#include <thread>

#include <fmt/format.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "coordinator/http_server.h"
#include "coordinator/launcher.h"

namespace vlorch::coord {
namespace {
namespace fs = std::filesystem;
using nlohmann::json;

constexpr int kNp = 4;

std::string ReadAll(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

int FreePort() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a));
  socklen_t len = sizeof(a);
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  ::close(fd);
  return ntohs(a.sin_port);
}

std::string Shell(const std::string& cmd, int* rc = nullptr) {
  std::string out;
  FILE* p = ::popen((cmd + " 2>&1").c_str(), "r");
  char buf[4096];
  for (size_t n; (n = std::fread(buf, 1, sizeof(buf), p)) > 0;) out.append(buf, n);
  const int status = ::pclose(p);
  if (rc) *rc = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return out;
}

// The tiny two-stage job: 60 steps of full training checkpointed every 10, then one epoch of
// the projector.
std::string JobYaml(const fs::path& store) {
  return fmt::format(R"(name: tiny-e2e
run_dir: run
seed: 1234
threads: 1
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
  workers: 1
  prefetch: 2
stages:
  - name: pretrain
    trainable: ["vision_model.*", "query_tokens", "qformer.*", "language_projection.*", "language_model.*"]
    optimizer: {{lr: 1.0e-3, weight_decay: 0.05}}
    schedule: {{kind: cosine, warmup_steps: 5, min_lr: 1.0e-4}}
    steps: 60
    batch_size: 8
    checkpoint: {{every_steps: 10, keep: 2}}
    log_every: 5
  - name: projector
    init: {{stage: pretrain}}
    trainable: ["language_projection.*"]
    optimizer: {{lr: 1.0e-4, weight_decay: 0.05}}
    schedule: {{kind: constant}}
    epochs: 1
    batch_size: 8
    checkpoint: {{every_steps: 4, keep: 2}}
    log_every: 2
)",
                     store.string());
}

class MpirunCoordinator : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    root_ = fs::temp_directory_path() / fmt::format("vlorch-e2e-{}", ::getpid());
    fs::remove_all(root_);
    fs::create_directories(root_);
    // Coordinators started here publish their API token under root_, where this test and the
    // `vlorch` commands it runs find it (DiscoverToken), as a user's CLI finds it in ~/.vlorch.
    ::setenv("VLORCH_HOME", (root_ / "home").c_str(), 1);
    int rc = 0;
    const std::string out = Shell(fmt::format(
        "{0} dev make-dataset --format img2dataset --out {1}/src --shards 2 --per-shard 100 --no-bad --min-px 32 "
        "--max-px 64 && {0} shards ingest --format img2dataset --store {1}/store {1}/src/00000.tar {1}/src/00001.tar",
        VLORCH_CLI, (root_ / "data").string()), &rc);
    ASSERT_EQ(rc, 0) << out;
    // The uninterrupted reference, straight under mpirun.
    fs::create_directories(root_ / "reference");
    std::ofstream(root_ / "reference" / "job.yaml") << JobYaml(root_ / "data" / "store");
    const std::string ref = Shell(fmt::format("env VLORCH_OVERSUBSCRIBE=1 {}/ops/mpirun.sh -np {} {} --job {}",
                                            VLORCH_SOURCE_DIR, kNp, VLORCH_WORKER,
                                            (root_ / "reference" / "job.yaml").string()), &rc);
    ASSERT_EQ(rc, 0) << ref;
  }
  static void TearDownTestSuite() {
    if (!::testing::Test::HasFailure()) fs::remove_all(root_);
  }

  void SetUp() override {
    dir_ = root_ / ::testing::UnitTest::GetInstance()->current_test_info()->name();
    fs::create_directories(dir_);
    std::ofstream(dir_ / "job.yaml") << JobYaml(root_ / "data" / "store");
    http_port_ = FreePort();
    zmq_port_ = FreePort();
  }
  void TearDown() override {
    if (coordinator_ > 0) {
      ::kill(coordinator_, SIGTERM);
      ::waitpid(coordinator_, nullptr, 0);
    }
    // Nothing of this test may outlive it.
    Shell(fmt::format("pkill -9 -f 'vlorch-worker --job {}' ; true", (dir_ / "job.yaml").string()));
  }

  void StartCoordinator(const std::string& extra = "") {
    std::vector<std::string> argv = {VLORCH_CLI, "coordinator", "start", "--foreground",
                                     "--state-dir", (dir_ / "state").string(),
                                     "--coordinator", fmt::format("127.0.0.1:{}", http_port_),
                                     "--zmq", fmt::format("tcp://127.0.0.1:{}", zmq_port_),
                                     "--worker", VLORCH_WORKER, "--backoff", "0.5", "--heartbeat-timeout", "20"};
    std::istringstream ss(extra);
    for (std::string w; ss >> w;) argv.push_back(w);
    auto p = Spawn(argv, {}, (dir_ / "coordinator.log").string());
    ASSERT_TRUE(p.ok()) << p.status().ToString();
    coordinator_ = p->pid;
    for (int i = 0; i < 200; ++i) {
      auto h = HttpCall("127.0.0.1", http_port_, "GET", "/api/health", "", "", 2);
      if (h.ok() && h->status == 200) return;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    FAIL() << "coordinator did not come up:\n" << ReadAll(dir_ / "coordinator.log");
  }

  json Get(const std::string& target) {
    auto r = HttpCall("127.0.0.1", http_port_, "GET", target, "", DiscoverToken("127.0.0.1", http_port_));
    if (!r.ok() || r->status != 200) return json();
    return json::parse(r->body, nullptr, false);
  }

  std::string Submit(const json& env) {
    json body = {{"spec_path", (dir_ / "job.yaml").string()}, {"np", kNp}, {"env", env}};
    auto r = HttpCall("127.0.0.1", http_port_, "POST", "/api/jobs", body.dump(), DiscoverToken("127.0.0.1", http_port_));
    EXPECT_TRUE(r.ok());
    EXPECT_EQ(r->status, 201) << r->body;
    return json::parse(r->body).value("id", "");
  }

  json WaitJob(const std::string& id, const std::function<bool(const json&)>& pred, double timeout_s) {
    json j;
    const auto end = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_s);
    while (std::chrono::steady_clock::now() < end) {
      j = Get("/api/jobs/" + id);
      if (j.is_object() && pred(j)) return j;
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    ADD_FAILURE() << "timed out waiting on job " << id << ": " << j.dump(1) << "\ncoordinator log:\n"
                  << ReadAll(dir_ / "coordinator.log");
    return j;
  }

  static bool Terminal(const json& j) {
    return j["state"] == "succeeded" || j["state"] == "failed" || j["state"] == "cancelled";
  }

  std::vector<std::string> EventKinds(const std::string& id) {
    std::vector<std::string> kinds;
    for (const auto& e : Get(fmt::format("/api/jobs/{}/events", id))) kinds.push_back(e["kind"]);
    return kinds;
  }

  // Final weights of both stages equal the uninterrupted run's, byte for byte.
  void ExpectReferenceWeights() {
    for (const char* stage : {"pretrain", "projector"}) {
      const fs::path ref = root_ / "reference" / "run" / "stages" / stage / "checkpoints";
      const fs::path got = dir_ / "run" / "stages" / stage / "checkpoints";
      const std::string latest = ReadAll(ref / "latest");
      ASSERT_FALSE(latest.empty()) << ref;
      const std::string name = latest.substr(0, latest.find('\n'));
      EXPECT_EQ(ReadAll(got / "latest"), latest) << stage;
      EXPECT_TRUE(ReadAll(got / name / "model.safetensors") == ReadAll(ref / name / "model.safetensors"))
          << stage << ": final weights differ from the uninterrupted run";
    }
  }

  static fs::path root_;
  fs::path dir_;
  int http_port_ = 0, zmq_port_ = 0;
  pid_t coordinator_ = 0;
};
fs::path MpirunCoordinator::root_;

TEST_F(MpirunCoordinator, KilledWorkerIsNamedAndTheJobEndsWithTheUninterruptedWeights) {
  StartCoordinator();
  const std::string id = Submit({{"VLORCH_OVERSUBSCRIBE", "1"}});
  json j = WaitJob(id, [](const json& j) {
    const auto& s = j["stages"][0];
    return Terminal(j) || (j["state"] == "running" && s["last_checkpoint_step"].get<int64_t>() >= 10 &&
                           s["step"].get<int64_t>() >= 12 && j["ranks"].size() == kNp);
  }, 180);
  ASSERT_EQ(j["state"], "running") << j.dump(1);
  ASSERT_EQ(j["current_stage"], 0);
  int64_t victim = 0;
  for (const auto& r : j["ranks"])
    if (r["rank"] == 2) victim = r["pid"];
  ASSERT_GT(victim, 0);
  ASSERT_EQ(::kill(static_cast<pid_t>(victim), SIGKILL), 0);

  j = WaitJob(id, Terminal, 300);
  ASSERT_EQ(j["state"], "succeeded") << j.dump(1);
  EXPECT_EQ(j["restarts"], 1);
  ASSERT_EQ(j["failure_causes"].size(), 1u);
  const std::string cause = j["failure_causes"][0];
  EXPECT_NE(cause.find("rank 2"), std::string::npos) << cause;
  EXPECT_NE(cause.find("signal 9"), std::string::npos) << cause;
  EXPECT_NE(cause.find(fmt::format("pid {}", victim)), std::string::npos) << cause;
  EXPECT_NE(cause.find("stage 'pretrain'"), std::string::npos) << cause;
  const auto kinds = EventKinds(id);
  EXPECT_NE(std::find(kinds.begin(), kinds.end(), "restarting"), kinds.end());
  EXPECT_EQ(std::count(kinds.begin(), kinds.end(), "stage_done"), 2);
  ExpectReferenceWeights();

  // The CLI's view of the job, as users see it (and as the closing note quotes it).
  int rc = 0;
  const std::string status = Shell(fmt::format("{} status {} --coordinator 127.0.0.1:{}", VLORCH_CLI, id, http_port_), &rc);
  EXPECT_EQ(rc, 0) << status;
  EXPECT_NE(status.find("succeeded"), std::string::npos) << status;
  EXPECT_NE(status.find("restarts 1/3"), std::string::npos) << status;
  EXPECT_NE(status.find("rank 2"), std::string::npos) << status;
  std::printf("---- vlorch status %s ----\n%s", id.c_str(), status.c_str());
  const std::string events = Shell(fmt::format("{} events {} --coordinator 127.0.0.1:{}", VLORCH_CLI, id, http_port_), &rc);
  std::printf("---- vlorch events %s ----\n%s", id.c_str(), events.c_str());
  const std::string json_status =
      Shell(fmt::format("{} status {} --json --coordinator 127.0.0.1:{}", VLORCH_CLI, id, http_port_), &rc);
  EXPECT_EQ(json::parse(json_status, nullptr, false).value("restarts", -1), 1) << json_status;
}

TEST_F(MpirunCoordinator, CoordinatorKilledMidJobRecoversAndTheJobCompletes) {
  StartCoordinator();
  const std::string id = Submit({{"VLORCH_OVERSUBSCRIBE", "1"}});
  json before = WaitJob(id, [](const json& j) {
    return Terminal(j) || (j["state"] == "running" && j["stages"][0]["step"].get<int64_t>() >= 5);
  }, 180);
  ASSERT_EQ(before["state"], "running");
  // Progress is flushed to RocksDB once a second (docs/coordinator.md): let one flush pass.
  std::this_thread::sleep_for(std::chrono::milliseconds(1200));
  const size_t events_before = EventKinds(id).size();
  ASSERT_EQ(::kill(coordinator_, SIGKILL), 0);
  ::waitpid(coordinator_, nullptr, 0);
  coordinator_ = 0;
  std::this_thread::sleep_for(std::chrono::seconds(1));
  const bool mpirun_alive = ::kill(static_cast<pid_t>(before["launcher_pid"].get<int64_t>()), 0) == 0;
  StartCoordinator();
  json after = Get("/api/jobs/" + id);
  ASSERT_TRUE(after.is_object());
  EXPECT_EQ(after["incarnation"], before["incarnation"]);
  EXPECT_GE(after["stages"][0]["step"].get<int64_t>(), 5);
  const auto kinds = EventKinds(id);
  EXPECT_GE(kinds.size(), events_before);  // nothing of the log was lost
  EXPECT_EQ(kinds.front(), "submitted");
  json done = WaitJob(id, Terminal, 300);
  ASSERT_EQ(done["state"], "succeeded") << done.dump(1);
  EXPECT_EQ(done["restarts"], 0);
  const auto final_kinds = EventKinds(id);
  // A still-running mpirun is adopted, not restarted; one that ended meanwhile is judged by
  // the stage's seal.
  if (mpirun_alive) {
    EXPECT_NE(std::find(final_kinds.begin(), final_kinds.end(), "adopted"), final_kinds.end());
  }
  EXPECT_EQ(std::count(final_kinds.begin(), final_kinds.end(), "stage_done"), 2);
  ExpectReferenceWeights();
}

// A scheduler's SIGTERM to mpirun's process group (preemption): the ranks commit a
// checkpoint, exit with the preempted code, the job is requeued (no restart counted) and goes
// on. Then `vlorch cancel` stops it (a checkpoint first) and `vlorch resume` finishes it; the
// final weights still equal the uninterrupted run's.
TEST_F(MpirunCoordinator, PreemptedJobIsRequeuedAndACancelledOneResumes) {
  StartCoordinator();
  const std::string id = Submit({{"VLORCH_OVERSUBSCRIBE", "1"}});
  json j = WaitJob(id, [](const json& j) {
    return Terminal(j) || (j["state"] == "running" && j["stages"][0]["step"].get<int64_t>() >= 6 &&
                           j["ranks"].size() == kNp);
  }, 180);
  ASSERT_EQ(j["state"], "running") << j.dump(1);
  const pid_t mpirun = static_cast<pid_t>(j["launcher_pid"].get<int64_t>());
  ASSERT_GT(mpirun, 0);
  ASSERT_EQ(::kill(-mpirun, SIGTERM), 0);  // mpirun leads its own process group
  j = WaitJob(id, [](const json& j) { return Terminal(j) || j["incarnation"].get<int64_t>() >= 2; }, 120);
  auto kinds = EventKinds(id);
  ASSERT_NE(std::find(kinds.begin(), kinds.end(), "preempted"), kinds.end()) << j.dump(1);
  EXPECT_EQ(j["restarts"], 0);
  EXPECT_TRUE(j["failure_causes"].empty()) << j.dump(1);

  // Cancel as soon as the second incarnation runs, through the CLI.
  j = WaitJob(id, [](const json& j) { return Terminal(j) || (j["state"] == "running" && j["ranks"].size() == kNp); }, 180);
  ASSERT_EQ(j["state"], "running") << j.dump(1);
  int rc = -1;
  std::string out = Shell(fmt::format("{} cancel {} --coordinator 127.0.0.1:{}", VLORCH_CLI, id, http_port_), &rc);
  ASSERT_EQ(rc, 0) << out;
  j = WaitJob(id, [](const json& j) { return j["state"] == "cancelled" && j["launcher_pid"].get<int64_t>() == 0; }, 120);
  kinds = EventKinds(id);
  EXPECT_NE(std::find(kinds.begin(), kinds.end(), "stopped"), kinds.end()) << j.dump(1);
  out = Shell(fmt::format("{} resume {} --coordinator 127.0.0.1:{}", VLORCH_CLI, id, http_port_), &rc);
  ASSERT_EQ(rc, 0) << out;
  j = WaitJob(id, Terminal, 300);
  ASSERT_EQ(j["state"], "succeeded") << j.dump(1);
  EXPECT_EQ(j["restarts"], 0);
  ExpectReferenceWeights();
}

TEST_F(MpirunCoordinator, HungRankIsNamedWithinTheHangTimeout) {
  StartCoordinator("--hang-timeout 4");
  const std::string id = Submit({{"VLORCH_OVERSUBSCRIBE", "1"}, {"VLORCH_FAULT", "hang:rank=1:step=5:incarnation=1"}});
  json j = WaitJob(id, [](const json& j) { return Terminal(j) || !j["failure_causes"].empty(); }, 180);
  ASSERT_FALSE(j["failure_causes"].empty()) << j.dump(1);
  const std::string cause = j["failure_causes"][0];
  EXPECT_NE(cause.find("hang: rank 1 (host "), std::string::npos) << cause;
  EXPECT_NE(cause.find("has not entered"), std::string::npos) << cause;
  EXPECT_NE(cause.find("where ranks 0, 2, 3 have waited"), std::string::npos) << cause;
  EXPECT_NE(cause.find("stage 'pretrain', step "), std::string::npos) << cause;
  // The second launch does not hang (the fault names incarnation 1) and finishes the job.
  j = WaitJob(id, Terminal, 300);
  EXPECT_EQ(j["state"], "succeeded") << j.dump(1);
  EXPECT_EQ(j["restarts"], 1);
  ExpectReferenceWeights();
}

}  // namespace
}  // namespace vlorch::coord
