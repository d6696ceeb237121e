// Open MPI hostfiles given to `vlorch submit --hostfile`: any bytes give hosts or an error
// naming the file; every host is a plain host name and the slot total fits the rank limit.
#include <cstdint>

#include "coordinator/launcher.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = vlorch::fuzz::WriteScratch("hostfile", data, size);
  auto hosts = vlorch::coord::ParseHostfile(path);
  if (!hosts.ok()) {
    if (hosts.status().message().find(path) == std::string::npos) __builtin_trap();
    return 0;
  }
  if (hosts->empty()) __builtin_trap();
  const int64_t total = vlorch::coord::TotalSlots(*hosts);
  if (total < 1 || total > vlorch::coord::kMaxHostfileSlots) __builtin_trap();
  for (const auto& h : *hosts) {
    if (h.host.empty() || h.host[0] == '-' || h.slots < 1) __builtin_trap();
    for (char ch : h.host)
      if (!(std::isalnum(static_cast<unsigned char>(ch)) || ch == '.' || ch == '-' || ch == '_' || ch == ':'))
        __builtin_trap();
  }
  return 0;
}
