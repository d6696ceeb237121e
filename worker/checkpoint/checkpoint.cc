#include "worker/checkpoint/checkpoint.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <chrono>
#include <filesystem>

#include <fmt/format.h>

#include "common/disk_space.h"
#include "common/durable_file.h"
#include "common/fault.h"
#include "common/hash.h"
#include "common/logging.h"
#include "common/safetensors.h"
#include "worker/checkpoint/trainer_state.h"
#include "worker/models/weights.h"

namespace vlorch::checkpoint {
namespace fs = std::filesystem;
namespace {

double Since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

StatusOr<std::vector<safetensors::TensorToWrite>> ToWrite(const NamedTensors& tensors) {
  std::vector<safetensors::TensorToWrite> out;
  for (const auto& [name, t] : tensors) {
    safetensors::TensorToWrite w;
    w.name = name;
    ASSIGN_OR_RETURN(w.dtype, models::SafetensorsDtype(t.scalar_type()));
    w.shape.assign(t.sizes().begin(), t.sizes().end());
    w.data = t.data_ptr();
    w.nbytes = t.numel() * t.element_size();
    out.push_back(std::move(w));
  }
  return out;
}

}  // namespace

StatusOr<std::unique_ptr<CheckpointManager>> CheckpointManager::Open(const std::string& dir,
                                                                     const CheckpointOptions& options) {
  if (options.keep < 1) return InvalidArgumentError("checkpoint keep must be >= 1");
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) return IOError(fmt::format("cannot create checkpoint directory {}: {}", dir, ec.message()));
  std::vector<std::string> names;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec))
    names.push_back(it->path().filename().string());
  if (ec) return IOError(fmt::format("cannot list checkpoint directory {}: {}", dir, ec.message()));
  for (const std::string& n : names) {
    const fs::path p = fs::path(dir) / n;
    if (n.rfind(kTmpPrefix, 0) == 0) {
      VLOG_WARNING("removing {}: an unfinished checkpoint save", p.string());
      fs::remove_all(p, ec);
      if (ec) return IOError(fmt::format("cannot remove {}: {}", p.string(), ec.message()));
    } else if (n.rfind(kReplacedPrefix, 0) == 0) {
      // A re-save stopped between its two renames (protocol steps 3 and 4), or after 4.
      const std::string committed = n.substr(std::strlen(kReplacedPrefix));
      if (!ParseStepDirName(committed)) continue;  // not ours
      const fs::path target = fs::path(dir) / committed;
      if (fs::exists(target, ec)) {
        fs::remove_all(p, ec);
        if (ec) return IOError(fmt::format("cannot remove {}: {}", p.string(), ec.message()));
      } else {
        VLOG_WARNING("restoring {} from {}: a re-save of that step was interrupted", target.string(), p.string());
        fs::rename(p, target, ec);
        if (ec) return IOError(fmt::format("cannot rename {} back to {}: {}", p.string(), target.string(), ec.message()));
        if (options.fsync) RETURN_IF_ERROR(FsyncPath(dir, true));
      }
    }
  }
  return std::unique_ptr<CheckpointManager>(new CheckpointManager(dir, options));
}

CheckpointManager::~CheckpointManager() { Wait().IgnoreError(); }

Status CheckpointManager::Wait() {
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait(lock, [&] { return !busy_; });
  if (writer_.joinable()) writer_.join();
  Status r = result_;
  result_ = Status::OK();
  return r;
}

SaveStats CheckpointManager::last_stats() {
  std::lock_guard<std::mutex> lock(mu_);
  return stats_;
}

Status CheckpointManager::Save(int64_t step, const CheckpointPayload& payload) {
  RETURN_IF_ERROR(Wait());
  const auto t0 = std::chrono::steady_clock::now();
  // The previous snapshot's host buffers are reused when the tensors have the same names and
  // shapes (every save of a stage): copying into memory that is already mapped runs at memcpy
  // speed, while fresh allocations pay a page fault per 4 KiB (measured: 5x slower).
  std::shared_ptr<CheckpointPayload> snapshot;
  {
    std::lock_guard<std::mutex> lock(mu_);
    snapshot = std::move(spare_);
  }
  auto same_layout = [](const NamedTensors& a, const NamedTensors& b) {
    if (a.size() != b.size()) return false;
    for (size_t i = 0; i < a.size(); ++i)
      if (a[i].first != b[i].first || !a[i].second.sizes().equals(b[i].second.sizes()) ||
          a[i].second.scalar_type() != b[i].second.scalar_type())
        return false;
    return true;
  };
  if (!snapshot || !same_layout(snapshot->model, payload.model) || !same_layout(snapshot->optimizer, payload.optimizer))
    snapshot = std::make_shared<CheckpointPayload>();
  try {
    torch::NoGradGuard no_grad;
    auto copy = [](const NamedTensors& in, NamedTensors* out) {
      if (out->size() == in.size()) {
        for (size_t i = 0; i < in.size(); ++i) (*out)[i].second.copy_(in[i].second.detach());
        return;
      }
      out->reserve(in.size());
      for (const auto& [n, t] : in)
        out->emplace_back(n, t.detach().to(torch::kCPU, /*non_blocking=*/false, /*copy=*/true).contiguous());
    };
    copy(payload.model, &snapshot->model);
    copy(payload.optimizer, &snapshot->optimizer);
  } catch (const c10::Error& e) {
    return InternalError(fmt::format("snapshotting checkpoint step {}: {}", step, e.what_without_backtrace()));
  }
  snapshot->optimizer_metadata = payload.optimizer_metadata;
  snapshot->trainer_state_json = payload.trainer_state_json;
  SaveStats stats;
  stats.snapshot_seconds = Since(t0);
  if (!options_.async) {
    Status s = Write(step, *snapshot, &stats);
    std::lock_guard<std::mutex> lock(mu_);
    stats_ = stats;
    spare_ = snapshot;
    return s;
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    busy_ = true;
  }
  writer_ = std::thread([this, step, snapshot, stats]() mutable {
    Status s = Write(step, *snapshot, &stats);
    if (!s.ok()) VLOG_ERROR("checkpoint step {} failed: {}", step, s.ToString());
    std::lock_guard<std::mutex> lock(mu_);
    result_ = s;
    stats_ = stats;
    spare_ = snapshot;
    busy_ = false;
    cv_.notify_all();
  });
  return Status::OK();
}

Status CheckpointManager::Write(int64_t step, const CheckpointPayload& snap, SaveStats* stats) {
  const auto t0 = std::chrono::steady_clock::now();
  // 0. Space. The files need the tensors' bytes plus headers and the small JSON files; a
  // filesystem with less free is refused before anything is written, and a write that still
  // runs out (others writing beside us) removes its partial files. Either way the committed
  // checkpoints stay as they are, and a later save or a restarted run goes on once space is freed.
  uint64_t need = snap.trainer_state_json.size() + (uint64_t{64} << 10);
  for (const NamedTensors* t : {&snap.model, &snap.optimizer})
    for (const auto& [n, x] : *t) need += x.numel() * x.element_size() + n.size() + 128;
  const std::string what = fmt::format("checkpoint step {}{}", step,
                                       options_.stage.empty() ? "" : fmt::format(" of stage '{}'", options_.stage));
  const std::string advice =
      "free space there (or lower the stage's checkpoint keep) and resume the job; the committed checkpoints are "
      "intact and the run resumes from the newest";
  RETURN_IF_ERROR(CheckFreeSpace(dir_, need, what, advice));
  Status written = WriteFiles(step, snap, stats);
  if (!written.ok()) {
    std::error_code ec;
    fs::remove_all(fs::path(dir_) / (kTmpPrefix + StepDirName(step)), ec);
    if (IsOutOfSpace(written)) return OutOfSpaceError(dir_, need, what, advice, written);
    return written;
  }
  stats->write_seconds = Since(t0);
  return Status::OK();
}

Status CheckpointManager::WriteFiles(int64_t step, const CheckpointPayload& snap, SaveStats* stats) {
  const std::string name = StepDirName(step);
  const std::string tmp = (fs::path(dir_) / (kTmpPrefix + name)).string();
  const std::string final_dir = (fs::path(dir_) / name).string();
  const std::string replaced = (fs::path(dir_) / (kReplacedPrefix + name)).string();
  std::error_code ec;
  fs::remove_all(tmp, ec);  // a failed earlier Write of this step; a committed step-N is left alone
  fs::create_directories(tmp, ec);
  if (ec) return IOError(fmt::format("cannot create {}: {}", tmp, ec.message()));

  // 1. The files.
  safetensors::WriteOptions wo;
  wo.fsync = options_.fsync;
  CheckpointManifest manifest;
  manifest.stage = options_.stage;
  manifest.step = step;
  auto write_tensors = [&](const char* file, const NamedTensors& t,
                           const std::map<std::string, std::string>& meta) -> Status {
    ASSIGN_OR_RETURN(auto tw, ToWrite(t));
    const std::string path = (fs::path(tmp) / file).string();
    safetensors::WrittenFile written;
    RETURN_IF_ERROR(safetensors::WriteFile(path, std::move(tw), meta, wo, &written));
    manifest.files.push_back(ManifestFile{file, written.bytes, written.crc32c});
    return Status::OK();
  };
  const std::vector<FaultKey> point = {{"rank", options_.rank}, {"stage", options_.stage.c_str()}, {"step", step}};
  auto kill_point = [&](const char* during) {
    std::vector<FaultKey> p = point;
    p.emplace_back("during", during);
    MaybeKill(p);
  };
  RETURN_IF_ERROR(write_tensors(kModelFile, snap.model, {{"format", "pt"}}));
  kill_point("checkpoint-write");
  RETURN_IF_ERROR(write_tensors(kOptimizerFile, snap.optimizer, snap.optimizer_metadata));
  {
    const std::string path = (fs::path(tmp) / kTrainerStateFile).string();
    RETURN_IF_ERROR(WriteFileDurably(path, snap.trainer_state_json, options_.fsync));
    manifest.files.push_back(
        ManifestFile{kTrainerStateFile, snap.trainer_state_json.size(), Crc32c(snap.trainer_state_json)});
  }
  // 2. The manifest, last.
  RETURN_IF_ERROR(WriteFileDurably((fs::path(tmp) / kManifestFile).string(), ManifestJson(manifest), options_.fsync));
  if (options_.fsync) RETURN_IF_ERROR(FsyncPath(tmp, true));

  // 3. A committed checkpoint of this step (a re-save after a restart) steps aside, whole,
  // until its replacement is in place.
  bool moved_aside = false;
  if (fs::exists(final_dir, ec)) {
    fs::remove_all(replaced, ec);
    fs::rename(final_dir, replaced, ec);
    if (ec) return IOError(fmt::format("cannot rename {} to {}: {}", final_dir, replaced, ec.message()));
    moved_aside = true;
    kill_point("checkpoint-replace");
  }
  // 4. Commit.
  fs::rename(tmp, final_dir, ec);
  if (ec) {
    const std::string why = ec.message();
    if (moved_aside) fs::rename(replaced, final_dir, ec);  // put the committed one back
    return IOError(fmt::format("cannot rename {} to {}: {}", tmp, final_dir, why));
  }
  if (options_.fsync) RETURN_IF_ERROR(FsyncPath(dir_, true));
  // 5. `latest`.
  RETURN_IF_ERROR(WriteFileAtomically((fs::path(dir_) / kLatestFile).string(), name + "\n", options_.fsync));
  if (options_.on_commit) options_.on_commit(step, final_dir);
  for (const auto& f : manifest.files) stats->bytes += f.bytes;

  // 6. The replaced copy, and retention: the newest `keep` committed checkpoints stay.
  if (moved_aside) fs::remove_all(replaced, ec);
  std::vector<std::pair<int64_t, std::string>> committed;
  for (fs::directory_iterator it(dir_, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string n = it->path().filename().string();
    std::error_code type_ec;
    if (std::optional<int64_t> s = ParseStepDirName(n); s && it->is_directory(type_ec)) committed.emplace_back(*s, n);
  }
  std::sort(committed.begin(), committed.end());
  for (size_t i = 0; i + options_.keep < committed.size(); ++i) {
    if (committed[i].second == name) continue;
    fs::remove_all(fs::path(dir_) / committed[i].second, ec);
  }
  return Status::OK();
}

StatusOr<NamedTensors> ReadTensors(const std::string& file, std::map<std::string, std::string>* metadata) {
  ASSIGN_OR_RETURN(auto f, safetensors::SafetensorsFile::Open(file));
  NamedTensors out;
  try {
    for (const auto& v : f->tensors()) {
      ASSIGN_OR_RETURN(torch::ScalarType t, models::TorchDtype(v.dtype));
      ASSIGN_OR_RETURN(torch::Tensor x, models::ToTensor(v, t));
      out.emplace_back(v.name, std::move(x));
    }
  } catch (const c10::Error& e) {
    return InternalError(fmt::format("reading {}: {}", file, e.what_without_backtrace()));
  }
  std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
  if (metadata) *metadata = f->metadata();
  return out;
}

}  // namespace vlorch::checkpoint
