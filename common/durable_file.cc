#include "common/durable_file.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <filesystem>

namespace vlorch {

Status FsyncPath(const std::string& path, bool directory) {
  int fd = ::open(path.c_str(), (directory ? O_RDONLY | O_DIRECTORY : O_RDONLY) | O_CLOEXEC);
  if (fd < 0) return ErrnoError("open for fsync", path, errno);
  int rc = ::fsync(fd);
  int err = errno;
  ::close(fd);
  if (rc != 0) return ErrnoError("fsync", path, err);
  return Status::OK();
}

Status WriteFileDurably(const std::string& path, const std::string& data, bool sync) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return ErrnoError("create", path, errno);
  size_t off = 0;
  while (off < data.size()) {
    ssize_t n = ::write(fd, data.data() + off, data.size() - off);
    if (n < 0) {
      if (errno == EINTR) continue;
      int err = errno;
      ::close(fd);
      return ErrnoError("write", path, err);
    }
    off += static_cast<size_t>(n);
  }
  if (sync && ::fsync(fd) != 0) {
    int err = errno;
    ::close(fd);
    return ErrnoError("fsync", path, err);
  }
  if (::close(fd) != 0) return ErrnoError("close", path, errno);
  return Status::OK();
}

Status WriteFileAtomically(const std::string& path, const std::string& data, bool sync) {
  const std::string tmp = path + ".tmp";
  RETURN_IF_ERROR(WriteFileDurably(tmp, data, sync));
  if (std::rename(tmp.c_str(), path.c_str()) != 0) return ErrnoError("rename over", path, errno);
  if (!sync) return Status::OK();
  std::string dir = std::filesystem::path(path).parent_path().string();
  return FsyncPath(dir.empty() ? "." : dir, true);
}

}  // namespace vlorch
