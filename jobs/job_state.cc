#include "jobs/job_state.h"

#include <sys/stat.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "common/durable_file.h"
#include "common/hash.h"

namespace vlorch {
namespace fs = std::filesystem;
namespace {

StatusOr<uint32_t> ManifestCrc(const std::string& checkpoint) {
  const std::string path = (fs::path(checkpoint) / "manifest.json").string();
  std::ifstream in(path, std::ios::binary);
  if (!in) return NotFoundError(fmt::format("{} is missing: {} is not a committed checkpoint", path, checkpoint));
  std::stringstream ss;
  ss << in.rdbuf();
  return Crc32c(ss.str());
}

std::string StateFile(const std::string& run_dir, const std::string& stage) {
  return (fs::path(StageDir(run_dir, stage)) / "state.json").string();
}

}  // namespace

std::string StageDir(const std::string& run_dir, const std::string& stage) {
  return (fs::path(run_dir) / "stages" / stage).string();
}

StatusOr<std::optional<StageSeal>> ReadStageSeal(const std::string& run_dir, const std::string& stage) {
  const std::string path = StateFile(run_dir, stage);
  std::ifstream in(path);
  if (!in) return std::optional<StageSeal>();
  nlohmann::json j = nlohmann::json::parse(in, nullptr, false);
  const bool valid = !j.is_discarded() && j.is_object() && j.value("status", "") == "sealed" &&
                     j.contains("checkpoint") && j["checkpoint"].is_string() && j.contains("manifest_crc32c") &&
                     j["manifest_crc32c"].is_number_unsigned();
  if (!valid)
    return CorruptionError(fmt::format("{} is not a stage seal (expected status \"sealed\", checkpoint and "
                                       "manifest_crc32c); delete it to run stage '{}' again from its checkpoints",
                                       path, stage));
  StageSeal s;
  s.stage = stage;
  s.kind = j.value("kind", "train");
  s.checkpoint = j["checkpoint"].get<std::string>();
  s.manifest_crc32c = j["manifest_crc32c"].get<uint32_t>();
  s.steps = j.value("steps", int64_t{0});
  s.loss = j.contains("loss") && j["loss"].is_number() ? j["loss"].get<double>() : 0.0;  // null: a NaN loss
  return std::optional<StageSeal>(s);
}

Status WritePreemptionRecord(const std::string& run_dir, const std::string& stage, const PreemptionRecord& record) {
  nlohmann::json j = {{"incarnation", record.incarnation}, {"step", record.step}, {"checkpoint", record.checkpoint}};
  return WriteFileAtomically((fs::path(StageDir(run_dir, stage)) / "preempted.json").string(), j.dump(2) + "\n");
}

std::optional<PreemptionRecord> ReadPreemptionRecord(const std::string& run_dir, const std::string& stage) {
  std::ifstream in(fs::path(StageDir(run_dir, stage)) / "preempted.json");
  if (!in) return std::nullopt;
  nlohmann::json j = nlohmann::json::parse(in, nullptr, false);
  if (j.is_discarded() || !j.is_object() || !j.contains("incarnation") || !j["incarnation"].is_number_integer() ||
      !j.contains("step") || !j["step"].is_number_integer() || !j.contains("checkpoint") || !j["checkpoint"].is_string())
    return std::nullopt;
  return PreemptionRecord{j["incarnation"].get<int64_t>(), j["step"].get<int64_t>(), j["checkpoint"].get<std::string>()};
}

Status SealStage(const std::string& run_dir, StageSeal seal) {
  ASSIGN_OR_RETURN(std::optional<StageSeal> existing, ReadStageSeal(run_dir, seal.stage));
  ASSIGN_OR_RETURN(seal.manifest_crc32c, ManifestCrc(seal.checkpoint));
  if (existing) {
    if (existing->checkpoint == seal.checkpoint && existing->manifest_crc32c == seal.manifest_crc32c) return Status::OK();
    return FailedPreconditionError(fmt::format("stage '{}' is already sealed with {}; a sealed stage is final",
                                               seal.stage, existing->checkpoint));
  }
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(seal.checkpoint, ec))
    if (e.is_regular_file()) ::chmod(e.path().c_str(), 0444);
  nlohmann::json j;
  j["status"] = "sealed";
  j["stage"] = seal.stage;
  j["kind"] = seal.kind;
  j["checkpoint"] = seal.checkpoint;
  j["manifest_crc32c"] = seal.manifest_crc32c;
  j["steps"] = seal.steps;
  j["loss"] = seal.loss;
  return WriteFileAtomically(StateFile(run_dir, seal.stage), j.dump(2) + "\n");
}

Status VerifySealedCheckpoint(const StageSeal& seal) {
  auto crc = ManifestCrc(seal.checkpoint);
  if (!crc.ok())
    return CorruptionError(fmt::format("the sealed checkpoint of stage '{}' is gone: {}", seal.stage, crc.status().message()));
  if (*crc != seal.manifest_crc32c)
    return CorruptionError(fmt::format("the sealed checkpoint {} of stage '{}' changed after sealing (manifest CRC32C "
                                       "{:08x}, sealed {:08x}); restore it, or delete the stage's state.json to train "
                                       "the stage again",
                                       seal.checkpoint, seal.stage, *crc, seal.manifest_crc32c));
  return Status::OK();
}

const char* StageStatusName(StageStatus status) {
  switch (status) {
    case StageStatus::kPending: return "pending";
    case StageStatus::kInProgress: return "in-progress";
    case StageStatus::kSealed: return "sealed";
  }
  return "?";
}

StatusOr<std::vector<StageProgress>> ReadJobProgress(const JobSpec& job, const std::string& run_dir) {
  std::vector<StageProgress> out;
  for (const StageSpec& st : job.stages) {
    StageProgress p;
    p.stage = st.name;
    ASSIGN_OR_RETURN(p.seal, ReadStageSeal(run_dir, st.name));
    if (p.seal) {
      p.status = StageStatus::kSealed;
    } else {
      std::ifstream latest(fs::path(StageDir(run_dir, st.name)) / "checkpoints" / "latest");
      std::string name;
      if (latest >> name && name.rfind("step-", 0) == 0) {
        p.status = StageStatus::kInProgress;
        p.latest_step = std::strtoll(name.c_str() + 5, nullptr, 10);
      } else if (fs::exists(StageDir(run_dir, st.name))) {
        p.status = StageStatus::kInProgress;
      }
    }
    out.push_back(std::move(p));
  }
  return out;
}

}  // namespace vlorch
