#include "common/durable_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <filesystem>
#include <string>

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

StatusOr<std::string> ReadRegularFile(const std::string& path, size_t max_bytes) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) {
    if (errno == ENOENT) return NotFoundError(path + " does not exist");
    return ErrnoError("open", path, errno);
  }
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    return ErrnoError("stat", path, err);
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    return InvalidArgumentError(path + " is not a regular file (a FIFO, device or directory): name the file itself");
  }
  if (static_cast<uint64_t>(st.st_size) > max_bytes) {
    ::close(fd);
    return InvalidArgumentError(path + " is " + std::to_string(st.st_size) + " bytes, over the limit of " +
                                std::to_string(max_bytes) + " bytes for this kind of file");
  }
  // No fmt in this file: the `vlorch` front end links it and no libfmt.
  // Clear O_NONBLOCK (meaningless for regular files, but keep reads ordinary).
  ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) & ~O_NONBLOCK);
  std::string out(static_cast<size_t>(st.st_size), '\0');
  size_t got = 0;
  while (got < out.size()) {
    const ssize_t n = ::read(fd, out.data() + got, out.size() - got);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      const int err = errno;
      ::close(fd);
      return ErrnoError("read", path, err);
    }
    if (n == 0) break;  // shrank meanwhile
    got += static_cast<size_t>(n);
  }
  ::close(fd);
  out.resize(got);
  return out;
}

StatusOr<std::string> ReadMetadataFile(const std::string& path, size_t max_bytes) {
  auto text = ReadRegularFile(path, max_bytes);
  if (text.ok()) return text;
  switch (text.status().code()) {
    case StatusCode::kNotFound: return NotFoundError(path + " is missing");
    case StatusCode::kInvalidArgument: return CorruptionError(text.status().message());
    default: return text.status();
  }
}

}  // namespace vlorch
