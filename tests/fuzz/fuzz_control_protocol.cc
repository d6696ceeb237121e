// The coordinator's ZeroMQ messages: DecodeMessage on any bytes must return a message or an
// InvalidArgument, never throw or crash; what it accepts must encode and decode again to
// the same message.
#include <cstdint>
#include <string_view>

#include "jobs/control_protocol.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto m = vlorch::DecodeMessage(std::string_view(reinterpret_cast<const char*>(data), size));
  if (!m.ok()) return 0;
  auto again = vlorch::DecodeMessage(vlorch::EncodeMessage(*m));
  if (!again.ok() || again->type != m->type || again->job != m->job || again->rank != m->rank ||
      again->incarnation != m->incarnation || again->cause != m->cause || again->stage != m->stage)
    __builtin_trap();  // a message the coordinator accepted does not survive its own encoding
  return 0;
}
