#include "jobs/job_state.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <filesystem>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "common/durable_file.h"
#include "common/hash.h"
#include "jobs/checkpoint_layout.h"

namespace vlorch {
namespace fs = std::filesystem;
namespace {


constexpr size_t kMaxStateBytes = 1 << 20;

StatusOr<uint32_t> ManifestCrc(const std::string& checkpoint) {
  const std::string path = (fs::path(checkpoint) / checkpoint::kManifestFile).string();
  auto text = ReadMetadataFile(path, checkpoint::kMaxManifestBytes);
  if (!text.ok() && text.status().code() == StatusCode::kNotFound)
    return NotFoundError(fmt::format("{} is missing: {} is not a committed checkpoint", path, checkpoint));
  if (!text.ok()) return text.status();
  return Crc32c(*text);
}

// The step a `latest` file names ("step-00000040\n" -> 40); -1 when it is missing or damaged
// (it is only a hint: the checkpoints themselves rule).
int64_t LatestStep(const std::string& path) {
  auto text = ReadMetadataFile(path, 64);
  if (!text.ok()) return -1;
  std::string t = *text;
  if (!t.empty() && t.back() == '\n') t.pop_back();
  return checkpoint::ParseStepDirName(t).value_or(-1);
}

// The last three components of a committed checkpoint of `stage`:
// "<stage>/checkpoints/step-NNNNNNNN".
bool IsStageCheckpointPath(const std::string& path, const std::string& stage) {
  const fs::path p(path);
  if (!checkpoint::ParseStepDirName(p.filename().string())) return false;
  return p.parent_path().filename() == checkpoint::kCheckpointsDir && p.parent_path().parent_path().filename() == stage;
}

std::string StateFile(const std::string& run_dir, const std::string& stage) {
  return (fs::path(StageDir(run_dir, stage)) / "state.json").string();
}

}  // namespace

std::string StageDir(const std::string& run_dir, const std::string& stage) {
  return (fs::path(run_dir) / "stages" / stage).string();
}

std::string CheckpointDir(const std::string& run_dir, const std::string& stage) {
  return (fs::path(StageDir(run_dir, stage)) / checkpoint::kCheckpointsDir).string();
}

StatusOr<std::optional<StageSeal>> ReadStageSeal(const std::string& run_dir, const std::string& stage) {
  const std::string path = StateFile(run_dir, stage);
  auto text = ReadMetadataFile(path, kMaxStateBytes);
  if (!text.ok() && text.status().code() == StatusCode::kNotFound) return std::optional<StageSeal>();
  auto bad = [&](const std::string& what) {
    return CorruptionError(fmt::format("{} is not a stage seal ({}); delete it to run stage '{}' again from its "
                                       "checkpoints",
                                       path, what, stage));
  };
  if (!text.ok()) return bad(text.status().message());
  // Every field's type is checked before it is read: get<T>() and value() throw on a wrong one.
  const nlohmann::json j = nlohmann::json::parse(*text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) return bad("not a JSON object: truncated, damaged, or not UTF-8");
  auto it = j.find("status");
  if (it == j.end() || !it->is_string() || *it != "sealed") return bad("field \"status\" is not \"sealed\"");
  StageSeal s;
  s.stage = stage;
  it = j.find("checkpoint");
  if (it == j.end() || !it->is_string()) return bad("field \"checkpoint\" is missing or not a string");
  s.checkpoint = it->get<std::string>();
  if (!IsStageCheckpointPath(s.checkpoint, stage))
    return bad(fmt::format("field \"checkpoint\" does not name a checkpoint of the stage, .../{}/checkpoints/step-N",
                           stage));
  it = j.find("manifest_crc32c");
  if (it == j.end() || !it->is_number_unsigned() || it->get<uint64_t>() > UINT32_MAX)
    return bad("field \"manifest_crc32c\" is missing or not a 32-bit unsigned integer");
  s.manifest_crc32c = static_cast<uint32_t>(it->get<uint64_t>());
  if (it = j.find("kind"); it != j.end()) {
    if (!it->is_string() || it->get_ref<const std::string&>().size() > 64) return bad("field \"kind\" is not a name");
    s.kind = it->get<std::string>();
  }
  if (it = j.find("steps"); it != j.end()) {
    if (!it->is_number_integer() || (!it->is_number_unsigned() && it->get<int64_t>() < 0) ||
        (it->is_number_unsigned() && it->get<uint64_t>() > static_cast<uint64_t>(INT64_MAX)))
      return bad("field \"steps\" is not a step count");
    s.steps = it->get<int64_t>();
  }
  if (it = j.find("loss"); it != j.end()) {
    if (!it->is_number() && !it->is_null()) return bad("field \"loss\" is not a number");
    s.loss = it->is_number() ? it->get<double>() : 0.0;  // null: a NaN loss
  }
  return std::optional<StageSeal>(s);
}

Status WritePreemptionRecord(const std::string& run_dir, const std::string& stage, const PreemptionRecord& record) {
  nlohmann::json j = {{"incarnation", record.incarnation}, {"step", record.step}, {"checkpoint", record.checkpoint}};
  return WriteFileAtomically((fs::path(StageDir(run_dir, stage)) / "preempted.json").string(), j.dump(2) + "\n");
}

std::optional<PreemptionRecord> ReadPreemptionRecord(const std::string& run_dir, const std::string& stage) {
  auto text = ReadMetadataFile((fs::path(StageDir(run_dir, stage)) / "preempted.json").string(), kMaxStateBytes);
  if (!text.ok()) return std::nullopt;
  const nlohmann::json j = nlohmann::json::parse(*text, nullptr, /*allow_exceptions=*/false);
  auto count = [&](const char* key) {  // a non-negative int64, or -1
    auto it = j.find(key);
    if (it == j.end() || !it->is_number_integer()) return int64_t{-1};
    if (it->is_number_unsigned()) return it->get<uint64_t>() > static_cast<uint64_t>(INT64_MAX) ? -1 : it->get<int64_t>();
    return std::max<int64_t>(it->get<int64_t>(), -1);
  };
  if (j.is_discarded() || !j.is_object() || !j.contains("checkpoint") || !j["checkpoint"].is_string()) return std::nullopt;
  const int64_t incarnation = count("incarnation"), step = count("step");
  if (incarnation < 0 || step < 0) return std::nullopt;
  return PreemptionRecord{incarnation, step, j["checkpoint"].get<std::string>()};
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
      p.latest_step = LatestStep((fs::path(CheckpointDir(run_dir, st.name)) / checkpoint::kLatestFile).string());
      std::error_code ec;
      if (p.latest_step >= 0 || fs::exists(StageDir(run_dir, st.name), ec)) {
        p.status = StageStatus::kInProgress;
      }
    }
    out.push_back(std::move(p));
  }
  return out;
}

}  // namespace vlorch
