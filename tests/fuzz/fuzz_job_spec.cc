// YAML job specs and recipes: ParseJobSpec on any text returns a spec or an error naming
// file, line and field, never throws or crashes (yaml-cpp exceptions caught at the boundary).
#include <cstdint>
#include <string>

#include "jobs/job_spec.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size > 64 * 1024) return 0;
  const std::string text(reinterpret_cast<const char*>(data), size);
  auto spec = vlorch::ParseJobSpec(text, "fuzz.yaml", "/fuzz");
  if (!spec.ok() && spec.status().message().rfind("fuzz.yaml", 0) != 0)
    __builtin_trap();  // every error names the file
  return 0;
}
