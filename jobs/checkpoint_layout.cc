#include "jobs/checkpoint_layout.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <set>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "common/hash.h"
#include "jobs/json_fields.h"

namespace vlorch::checkpoint {
namespace fs = std::filesystem;
namespace {

// Size and CRC32C of a regular file as it is on disk, read in 4 MiB blocks.
StatusOr<ManifestFile> Describe(const std::string& path, const std::string& name) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) return ErrnoError("open", path, errno);
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    return CorruptionError(fmt::format("{} is not a regular file", path));
  }
  ManifestFile f;
  f.name = name;
  std::vector<char> buf(4 << 20);
  for (;;) {
    ssize_t n = ::read(fd, buf.data(), buf.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      int err = errno;
      ::close(fd);
      return ErrnoError("read", path, err);
    }
    if (n == 0) break;
    f.crc32c = Crc32c(buf.data(), static_cast<size_t>(n), f.crc32c);
    f.bytes += static_cast<uint64_t>(n);
  }
  ::close(fd);
  return f;
}

// A name that stays inside the checkpoint directory and is not the manifest itself.
bool IsPlainFileName(const std::string& n) {
  if (n.empty() || n.size() > 255 || n == "." || n == ".." || n == kManifestFile) return false;
  for (unsigned char c : n)
    if (c == '/' || c == '\\' || c < 0x20 || c == 0x7f) return false;
  return true;
}

// Exactly 8 hex digits, as the writer writes them.
std::optional<uint32_t> ParseCrcHex(const std::string& s) {
  if (s.size() != 8) return std::nullopt;
  uint32_t v = 0;
  for (char c : s) {
    int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
    if (d < 0) return std::nullopt;
    v = v << 4 | static_cast<uint32_t>(d);
  }
  return v;
}

StatusOr<CheckpointManifest> ParseManifestText(const std::string& path, const std::string& text) {
  ASSIGN_OR_RETURN(nlohmann::json j, internal::ParseObject(path, text));
  internal::Fields top(j, path);
  ASSIGN_OR_RETURN(std::string format, top.String("format", 64));
  if (format != "vlorch-checkpoint") return top.Error("format", "is not \"vlorch-checkpoint\"");
  ASSIGN_OR_RETURN(int64_t version, top.Int("version", INT64_MIN, INT64_MAX));
  if (version != CheckpointManifest::kVersion)
    return top.Error("version", fmt::format("is {}: unsupported \"version\" (this vlorch reads version {})", version,
                                            CheckpointManifest::kVersion));
  CheckpointManifest m;
  ASSIGN_OR_RETURN(m.stage, top.String("stage", 256));
  ASSIGN_OR_RETURN(m.step, top.Int("step", 0, kMaxStep));
  ASSIGN_OR_RETURN(const nlohmann::json* files, top.Array("files", kMaxManifestFiles));
  std::set<std::string> seen;
  for (size_t i = 0; i < files->size(); ++i) {
    const nlohmann::json& e = (*files)[i];
    const std::string prefix = fmt::format("files[{}].", i);
    if (!e.is_object())
      return CorruptionError(fmt::format("{}: field \"files[{}]\" is a JSON {}, expected an object", path, i, e.type_name()));
    internal::Fields f(e, path, prefix);
    ManifestFile mf;
    ASSIGN_OR_RETURN(mf.name, f.String("name", 255));
    if (!IsPlainFileName(mf.name)) return f.Error("name", "is not a plain file name inside the checkpoint directory");
    if (!seen.insert(mf.name).second) return f.Error("name", fmt::format("lists {} a second time", mf.name));
    ASSIGN_OR_RETURN(int64_t bytes, f.Int("bytes", 0, INT64_MAX));
    mf.bytes = static_cast<uint64_t>(bytes);
    ASSIGN_OR_RETURN(std::string crc, f.String("crc32c", 64));
    std::optional<uint32_t> v = ParseCrcHex(crc);
    if (!v) return f.Error("crc32c", "is not 8 hex digits");
    mf.crc32c = *v;
    m.files.push_back(std::move(mf));
  }
  return m;
}

StatusOr<CheckpointManifest> Verify(const std::string& path) {
  ASSIGN_OR_RETURN(CheckpointManifest m, ParseManifest((fs::path(path) / kManifestFile).string()));
  const std::string dir_name = fs::path(path).filename().string();
  if (std::optional<int64_t> dir_step = ParseStepDirName(dir_name); dir_step && *dir_step != m.step)
    return CorruptionError(fmt::format("{}/{}: field \"step\" is {} but the directory is {}", path, kManifestFile, m.step,
                                       dir_name));
  for (const char* required : {kModelFile, kOptimizerFile, kTrainerStateFile}) {
    bool listed = false;
    for (const auto& f : m.files) listed |= f.name == required;
    if (!listed) return CorruptionError(fmt::format("{}: the manifest does not list {}", path, required));
  }
  for (const auto& f : m.files) {
    const std::string file = (fs::path(path) / f.name).string();
    struct stat st {};
    if (::stat(file.c_str(), &st) != 0) return CorruptionError(fmt::format("{} is missing", file));
    if (!S_ISREG(st.st_mode)) return CorruptionError(fmt::format("{} is not a regular file", file));
    const uint64_t size = static_cast<uint64_t>(st.st_size);
    if (size != f.bytes)
      return CorruptionError(fmt::format("{} has {} bytes but the manifest says {} (truncated?)", file, size, f.bytes));
    ASSIGN_OR_RETURN(ManifestFile actual, Describe(file, f.name));
    if (actual.crc32c != f.crc32c)
      return CorruptionError(fmt::format("{} has CRC32C {:08x} but the manifest says {:08x} (damaged on disk)", file,
                                         actual.crc32c, f.crc32c));
  }
  return m;
}

}  // namespace

std::string StepDirName(int64_t step) { return fmt::format("step-{:08d}", step); }

std::optional<int64_t> ParseStepDirName(std::string_view name) {
  if (name.substr(0, 5) != "step-") return std::nullopt;
  const std::string_view digits = name.substr(5);
  if (digits.size() < 8 || digits.size() > 18) return std::nullopt;
  int64_t v = 0;
  for (char c : digits) {
    if (c < '0' || c > '9') return std::nullopt;
    v = v * 10 + (c - '0');
  }
  if (StepDirName(v) != name) return std::nullopt;  // "step-000000040": not how step 40 is named
  return v;
}

std::string ManifestJson(const CheckpointManifest& m) {
  nlohmann::json j;
  j["format"] = "vlorch-checkpoint";
  j["version"] = CheckpointManifest::kVersion;
  j["stage"] = m.stage;
  j["step"] = m.step;
  j["files"] = nlohmann::json::array();
  for (const auto& f : m.files)
    j["files"].push_back({{"name", f.name}, {"bytes", f.bytes}, {"crc32c", fmt::format("{:08x}", f.crc32c)}});
  return j.dump(2) + "\n";
}

StatusOr<CheckpointManifest> ParseManifest(const std::string& path) {
  auto text = internal::ReadSmallFile(path, kMaxManifestBytes);
  if (!text.ok()) {
    if (text.status().code() == StatusCode::kNotFound)
      return NotFoundError(fmt::format("{} is missing (the save did not finish)", path));
    return text.status();
  }
  try {
    return ParseManifestText(path, *text);
  } catch (const std::exception& e) {  // the checks above leave nothing to throw; a bug if reached
    return CorruptionError(fmt::format("{}: {}", path, e.what()));
  }
}

StatusOr<CheckpointManifest> VerifyCheckpoint(const std::string& path) {
  try {
    return Verify(path);
  } catch (const std::exception& e) {
    return CorruptionError(fmt::format("{}: {}", path, e.what()));
  }
}

StatusOr<std::optional<FoundCheckpoint>> FindLatest(const std::string& dir, std::vector<std::string>* skipped,
                                                    const ContentCheck& check) {
  std::error_code ec;
  const fs::file_status st = fs::status(dir, ec);
  if (st.type() == fs::file_type::not_found) return std::optional<FoundCheckpoint>();
  if (ec) return IOError(fmt::format("cannot read checkpoint directory {}: {}", dir, ec.message()));
  if (st.type() != fs::file_type::directory)
    return FailedPreconditionError(fmt::format("{} is not a directory; it should hold the stage's checkpoints", dir));
  std::vector<std::pair<int64_t, std::string>> committed;
  auto note = [&](const std::string& name, const std::string& why) {
    if (skipped) skipped->push_back(fmt::format("{}: {}", name, why));
  };
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string n = it->path().filename().string();
    if (n.rfind("step-", 0) != 0) continue;
    std::optional<int64_t> step = ParseStepDirName(n);
    std::error_code type_ec;
    if (!step) {
      note(n, "not a checkpoint directory name (expected step-NNNNNNNN)");
    } else if (!it->is_directory(type_ec)) {
      note(n, "not a directory");
    } else {
      committed.emplace_back(*step, n);
    }
  }
  if (ec) return IOError(fmt::format("cannot list checkpoint directory {}: {}", dir, ec.message()));
  std::sort(committed.rbegin(), committed.rend());
  for (const auto& [step, n] : committed) {
    const std::string path = (fs::path(dir) / n).string();
    StatusOr<CheckpointManifest> m = VerifyCheckpoint(path);
    if (!m.ok()) {
      note(n, m.status().message());
      continue;
    }
    if (check) {
      Status s = check(path, *m);
      if (!s.ok()) {
        note(n, s.message());
        continue;
      }
    }
    return std::optional<FoundCheckpoint>(FoundCheckpoint{path, std::move(m).value()});
  }
  return std::optional<FoundCheckpoint>();
}

}  // namespace vlorch::checkpoint
