// The control-plane protocol between vlorch-worker ranks (ZeroMQ DEALER) and the coordinator
// (ZeroMQ ROUTER). docs/protocol.md is the reference; this header is its code.
//
// Every message is one ZeroMQ frame holding one JSON object with at least
//   {"v": 1, "type": "...", "job": "<job id>", "rank": r, "incarnation": n}
// Workers only send; the coordinator never replies (a worker must train on whether or not a
// coordinator listens). Types and their extra fields:
//   register    world, host, pid, stage, spec, run_dir, attach (bool: started outside the
//               coordinator, e.g. by the user's own mpirun inside Slurm)
//   heartbeat   collective: {group, op, seq, inside, seconds, group_size} (optional): the
//               communicator call this rank entered last, whether it is still inside it, and
//               for how long (hang detection)
//   progress    stage, step, total_steps, loss, samples_per_second, data_wait_seconds
//   checkpoint  stage, step, checkpoint (a committed checkpoint directory)
//   stage_done  stage, step, checkpoint (the sealed checkpoint)
//   error       stage, cause
// Decoding is strict: a wrong version, an unknown type, a missing or mistyped field or a
// message over kMaxMessageBytes is an InvalidArgument naming the field, never an exception.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "common/status.h"

namespace vlorch {

constexpr int kProtocolVersion = 1;
constexpr size_t kMaxMessageBytes = 64 * 1024;

enum class MessageType { kRegister, kHeartbeat, kProgress, kCheckpoint, kStageDone, kError };
const char* MessageTypeName(MessageType type);

struct CollectiveState {
  std::string group;      // communicator name, e.g. "dp"
  std::string op;         // "allreduce", "barrier", ...
  uint64_t seq = 0;       // the call's number on that communicator
  bool inside = false;    // still waiting in it
  double seconds = 0;     // since it was entered (inside) or left (not inside)
  int group_size = 0;
};

struct ControlMessage {
  int version = kProtocolVersion;
  MessageType type = MessageType::kHeartbeat;
  std::string job;
  int rank = 0;
  int64_t incarnation = 0;
  // register
  int world = 0;
  std::string host;
  int64_t pid = 0;
  std::string spec;
  std::string run_dir;
  bool attach = false;
  // heartbeat
  std::optional<CollectiveState> collective;
  // progress, checkpoint, stage_done, error
  std::string stage;
  int64_t step = 0;
  int64_t total_steps = 0;
  double loss = 0;
  double samples_per_second = 0;
  double data_wait_seconds = 0;
  std::string checkpoint;
  std::string cause;
};

std::string EncodeMessage(const ControlMessage& message);
StatusOr<ControlMessage> DecodeMessage(std::string_view bytes);

// Job ids name directories and URL paths: 1-64 of [A-Za-z0-9._-], not starting with '.'.
bool IsValidJobId(std::string_view id);
bool IsJobIdChar(char c);

}  // namespace vlorch
