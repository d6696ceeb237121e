#include "common/disk_space.h"

#include <sys/statvfs.h>

#include <cerrno>
#include <cstring>

#include <fmt/format.h>

namespace vlorch {

std::string FormatBytes(uint64_t n) {
  if (n >= (uint64_t{1} << 30)) return fmt::format("{:.1f} GiB ({} bytes)", n / double(uint64_t{1} << 30), n);
  if (n >= (uint64_t{1} << 20)) return fmt::format("{:.1f} MiB ({} bytes)", n / double(uint64_t{1} << 20), n);
  return fmt::format("{} bytes", n);
}

StatusOr<uint64_t> FreeBytes(const std::string& path) {
  struct statvfs st;
  if (::statvfs(path.c_str(), &st) != 0) return ErrnoError("statvfs", path, errno);
  return static_cast<uint64_t>(st.f_bavail) * static_cast<uint64_t>(st.f_frsize);
}

Status CheckFreeSpace(const std::string& path, uint64_t need, std::string_view what, std::string_view advice) {
  auto free = FreeBytes(path);
  if (!free.ok() || *free >= need) return Status::OK();
  return ResourceExhaustedError(fmt::format("{} needs {} on the filesystem of {}, which has {} free: {}", what,
                                            FormatBytes(need), path, FormatBytes(*free), advice));
}

Status OutOfSpaceError(const std::string& path, uint64_t need, std::string_view what, std::string_view advice,
                       const Status& cause) {
  auto free = FreeBytes(path);
  return ResourceExhaustedError(fmt::format("{} ran out of space on the filesystem of {} (it needs about {}, {} free "
                                            "now): {} [{}]",
                                            what, path, FormatBytes(need),
                                            free.ok() ? FormatBytes(*free) : std::string("unknown"), advice,
                                            cause.message()));
}

bool IsOutOfSpace(const Status& s) {
  if (s.ok()) return false;
  if (s.code() == StatusCode::kResourceExhausted) return true;
  const std::string& m = s.message();
  return m.find(std::strerror(ENOSPC)) != std::string::npos || m.find(std::strerror(EDQUOT)) != std::string::npos ||
         m.find("No space left on device") != std::string::npos || m.find("NoSpace") != std::string::npos;
}

}  // namespace vlorch
