// The on-disk names and the manifest of committed checkpoints, and how a checkpoint is
// verified and found (docs/checkpoints.md). Torch-free: readers that load no tensors (the
// verification of a seal, tools) include this header alone.
//
//   <dir>/step-NNNNNNNN/          one committed checkpoint (at least 8 digits, zero-padded)
//   <dir>/step-NNNNNNNN/manifest.json
//                                 {"format": "vlorch-checkpoint", "version": 1, "stage",
//                                  "step", "files": [{"name", "bytes", "crc32c"}]}
//   <dir>/latest                  "step-NNNNNNNN\n", the newest commit (a hint for readers)
//   <dir>/.tmp-step-NNNNNNNN/     a save in progress (or a crashed one)
//   <dir>/.replaced-step-NNNNNNNN/
//                                 the committed step-N, moved aside while a re-save of step N
//                                 renames its new directory in
//
// Everything read back is untrusted: a damaged manifest (missing key, wrong type, number out
// of range, truncated, not UTF-8) makes its checkpoint damaged, reported as Corruption naming
// the file and the field; nothing here throws.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"

namespace vlorch::checkpoint {

// Every name below is the one place it is spelled; readers and writers ask for it here.
inline constexpr const char* kCheckpointsDir = "checkpoints";  // <run_dir>/stages/<stage>/checkpoints
inline constexpr const char* kModelFile = "model.safetensors";
inline constexpr const char* kOptimizerFile = "optimizer.safetensors";
inline constexpr const char* kTrainerStateFile = "trainer_state.json";
inline constexpr const char* kManifestFile = "manifest.json";
inline constexpr const char* kLatestFile = "latest";
inline constexpr const char* kTmpPrefix = ".tmp-";
inline constexpr const char* kReplacedPrefix = ".replaced-";
// Limits on what a manifest may say, far above what vlorch writes.
inline constexpr size_t kMaxManifestBytes = 4 << 20;
inline constexpr size_t kMaxManifestFiles = 65536;
inline constexpr int64_t kMaxStep = 999'999'999'999'999'999;  // 18 digits

// "step-00000040".
std::string StepDirName(int64_t step);
// The step of a canonical checkpoint directory name ("step-00000040" -> 40); nullopt for
// anything else ("step-40", "step-00000040.bak", ".tmp-step-00000040").
std::optional<int64_t> ParseStepDirName(std::string_view name);

struct ManifestFile {
  std::string name;
  uint64_t bytes = 0;
  uint32_t crc32c = 0;
};

struct CheckpointManifest {
  static constexpr int kVersion = 1;
  std::string stage;
  int64_t step = 0;
  std::vector<ManifestFile> files;
};

// manifest.json's text.
std::string ManifestJson(const CheckpointManifest& manifest);

// Parses `path` (a manifest.json). NotFound when it is missing ("the save did not finish");
// Corruption naming the file and the field for anything else wrong with it.
StatusOr<CheckpointManifest> ParseManifest(const std::string& path);

// Verifies one checkpoint directory against its manifest: the manifest parses, its step is
// the directory's (when the directory has a step name), it lists model.safetensors,
// optimizer.safetensors and trainer_state.json, and every listed file is a regular file of
// the listed size and CRC32C.
StatusOr<CheckpointManifest> VerifyCheckpoint(const std::string& path);

struct FoundCheckpoint {
  std::string path;
  CheckpointManifest manifest;
};

// A check of a checkpoint's contents beyond its manifest (the stage runner parses
// trainer_state.json): a non-OK result passes the checkpoint over like a damaged one.
using ContentCheck = std::function<Status(const std::string& path, const CheckpointManifest& manifest)>;

// The newest committed checkpoint in `dir` that verifies (and passes `check`, when given),
// or nullopt when there is none. Each one passed over is described in *skipped ("step-
// 00000040: model.safetensors has CRC32C 0x... but the manifest says 0x..."). IOError only
// when `dir` exists but cannot be listed: starting over from step 0 is never the answer to
// an unreadable directory.
StatusOr<std::optional<FoundCheckpoint>> FindLatest(const std::string& dir, std::vector<std::string>* skipped,
                                                    const ContentCheck& check = nullptr);

}  // namespace vlorch::checkpoint
