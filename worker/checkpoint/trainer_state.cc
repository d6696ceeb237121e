#include "worker/checkpoint/trainer_state.h"

#include <filesystem>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "jobs/json_fields.h"

namespace vlorch::checkpoint {
namespace {

constexpr size_t kMaxTrainerStateBytes = 1 << 20;
constexpr size_t kMaxRngStateBytes = 64 << 10;  // the CPU generator's is ~5 KB

std::string Hex(const std::vector<uint8_t>& bytes) {
  static const char* d = "0123456789abcdef";
  std::string s(2 * bytes.size(), '0');
  for (size_t i = 0; i < bytes.size(); ++i) s[2 * i] = d[bytes[i] >> 4], s[2 * i + 1] = d[bytes[i] & 15];
  return s;
}

int HexDigit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

StatusOr<TrainerState> Parse(const std::string& path, const std::string& text, int64_t expected_step,
                             size_t rng_state_bytes) {
  ASSIGN_OR_RETURN(nlohmann::json j, internal::ParseObject(path, text));
  internal::Fields f(j, path);
  TrainerState s;
  ASSIGN_OR_RETURN(s.job, f.String("job", 1024));
  ASSIGN_OR_RETURN(s.stage, f.String("stage", 1024));
  ASSIGN_OR_RETURN(s.step, f.Int("step", 0, INT64_MAX));
  if (s.step != expected_step)
    return f.Error("step", fmt::format("is {} but the manifest says {}", s.step, expected_step));
  ASSIGN_OR_RETURN(s.optimizer_steps, f.Int("optimizer_steps", 0, INT64_MAX));
  ASSIGN_OR_RETURN(s.total_steps, f.Int("total_steps", 0, INT64_MAX));
  ASSIGN_OR_RETURN(std::string cursor, f.String("cursor", 64 << 10));
  auto parsed = dataflow::Cursor::Parse(cursor);
  if (!parsed.ok()) return f.Error("cursor", "is not a data cursor (expected \"v1;slot=N;taken=A,B,...\")");
  s.cursor = *parsed;
  ASSIGN_OR_RETURN(s.samples, f.Int("samples", 0, INT64_MAX));
  ASSIGN_OR_RETURN(s.tokens, f.Int("tokens", 0, INT64_MAX));
  ASSIGN_OR_RETURN(s.lr, f.Number("lr"));
  ASSIGN_OR_RETURN(s.loss, f.Number("loss"));
  ASSIGN_OR_RETURN(s.seed, f.Uint("seed", UINT64_MAX));
  ASSIGN_OR_RETURN(int64_t dp, f.Int("dp", 1, 1 << 20));
  ASSIGN_OR_RETURN(int64_t tp, f.Int("tp", 1, 1 << 20));
  ASSIGN_OR_RETURN(int64_t ep, f.Int("ep", 1, 1 << 20));
  s.dp = static_cast<int>(dp), s.tp = static_cast<int>(tp), s.ep = static_cast<int>(ep);
  ASSIGN_OR_RETURN(std::string hex, f.String("rng_state", 2 * kMaxRngStateBytes));
  if (hex.size() % 2) return f.Error("rng_state", fmt::format("has {} hex digits, an odd number", hex.size()));
  s.rng_state.resize(hex.size() / 2);
  for (size_t i = 0; i < s.rng_state.size(); ++i) {
    const int hi = HexDigit(hex[2 * i]), lo = HexDigit(hex[2 * i + 1]);
    if (hi < 0 || lo < 0) return f.Error("rng_state", "is not hex");
    s.rng_state[i] = static_cast<uint8_t>(hi * 16 + lo);
  }
  if (rng_state_bytes > 0 && s.rng_state.size() != rng_state_bytes)
    return f.Error("rng_state", fmt::format("holds {} bytes, but this build's CPU generator state has {}",
                                            s.rng_state.size(), rng_state_bytes));
  return s;
}

}  // namespace

std::string TrainerStateJson(const TrainerState& s) {
  nlohmann::json j;
  j["job"] = s.job;
  j["stage"] = s.stage;
  j["step"] = s.step;
  j["optimizer_steps"] = s.optimizer_steps;
  j["total_steps"] = s.total_steps;
  j["cursor"] = s.cursor.Serialize();
  j["samples"] = s.samples;
  j["tokens"] = s.tokens;
  j["lr"] = s.lr;
  j["loss"] = s.loss;
  j["seed"] = s.seed;
  j["dp"] = s.dp;
  j["tp"] = s.tp;
  j["ep"] = s.ep;
  j["rng_state"] = Hex(s.rng_state);
  return j.dump(2) + "\n";
}

StatusOr<TrainerState> ReadTrainerState(const std::string& checkpoint_dir, int64_t expected_step,
                                        size_t rng_state_bytes) {
  const std::string path = (std::filesystem::path(checkpoint_dir) / kTrainerStateFile).string();
  ASSIGN_OR_RETURN(std::string text, internal::ReadSmallFile(path, kMaxTrainerStateBytes));
  try {
    return Parse(path, text, expected_step, rng_state_bytes);
  } catch (const std::exception& e) {  // the checks above leave nothing to throw; a bug if reached
    return CorruptionError(fmt::format("{}: {}", path, e.what()));
  }
}

}  // namespace vlorch::checkpoint
