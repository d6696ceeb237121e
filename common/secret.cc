#include "common/secret.h"

#include <fcntl.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <filesystem>

#include "common/durable_file.h"

namespace vlorch {

std::string VlorchHomeDir() {
  if (const char* home = std::getenv("VLORCH_HOME"); home != nullptr && *home) return home;
  const char* user_home = std::getenv("HOME");
  return (std::filesystem::path(user_home != nullptr && *user_home ? user_home : ".") / ".vlorch").string();
}

bool NamesThisMachine(const std::string& host) {
  if (host == "localhost" || host == "::1" || host == "[::1]" || host.rfind("127.", 0) == 0) return true;
  char name[256] = {};
  return ::gethostname(name, sizeof(name) - 1) == 0 && host == name;
}

StatusOr<std::string> RandomHexToken(size_t bytes) {
  std::string raw(bytes, '\0');
  size_t got = 0;
  while (got < bytes) {
    const ssize_t n = ::getrandom(raw.data() + got, bytes - got, 0);
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoError("getrandom", "a random token", errno);
    }
    got += static_cast<size_t>(n);
  }
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  out.reserve(2 * bytes);
  for (unsigned char c : raw) {
    out += kHex[c >> 4];
    out += kHex[c & 15];
  }
  return out;
}

bool ConstantTimeEquals(std::string_view a, std::string_view b) {
  // Compare over the longer length so that neither the position of the first difference nor
  // a prefix match changes the time taken.
  const size_t n = std::max(a.size(), b.size());
  unsigned char diff = a.size() == b.size() ? 0 : 1;
  for (size_t i = 0; i < n; ++i) {
    const unsigned char x = i < a.size() ? static_cast<unsigned char>(a[i]) : 0;
    const unsigned char y = i < b.size() ? static_cast<unsigned char>(b[i]) : 0;
    diff |= static_cast<unsigned char>(x ^ y);
  }
  // volatile: keep the compiler from turning the loop into an early-exit memcmp.
  volatile unsigned char result = diff;
  return result == 0;
}

Status WriteSecretFile(const std::string& path, const std::string& secret) {
  namespace fs = std::filesystem;
  const fs::path parent = fs::path(path).parent_path();
  if (!parent.empty()) {
    std::error_code ec;
    if (!fs::exists(parent, ec)) {
      fs::create_directories(parent, ec);
      if (ec) return IOError("cannot create " + parent.string() + ": " + ec.message());
      ::chmod(parent.c_str(), 0700);
    }
  }
  const std::string tmp = path + ".tmp";
  ::unlink(tmp.c_str());
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
  if (fd < 0) return ErrnoError("create", tmp, errno);
  ::fchmod(fd, 0600);  // whatever the umask
  size_t off = 0;
  while (off < secret.size()) {
    const ssize_t n = ::write(fd, secret.data() + off, secret.size() - off);
    if (n < 0) {
      if (errno == EINTR) continue;
      const int err = errno;
      ::close(fd);
      return ErrnoError("write", tmp, err);
    }
    off += static_cast<size_t>(n);
  }
  if (::fsync(fd) != 0 || ::close(fd) != 0) return ErrnoError("fsync", tmp, errno);
  if (::rename(tmp.c_str(), path.c_str()) != 0) return ErrnoError("rename over", path, errno);
  return FsyncPath(parent.empty() ? "." : parent.string(), true);
}

StatusOr<std::string> ReadSecretFile(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOFOLLOW);
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
  // No fmt here: the `vlorch` front end links this file and no libfmt.
  auto refuse = [&](const std::string& why) {
    ::close(fd);
    return FailedPreconditionError("secret file " + path + " " + why +
                                   ": remove it (the coordinator makes a new one) or fix it with `chmod 600 " + path + "`");
  };
  if (!S_ISREG(st.st_mode)) return refuse("is not a regular file");
  if (st.st_uid != ::geteuid())
    return refuse("is owned by uid " + std::to_string(st.st_uid) + ", not by this user (" + std::to_string(::geteuid()) + ")");
  if ((st.st_mode & 077) != 0) {
    char mode[8];
    std::snprintf(mode, sizeof(mode), "%03o", static_cast<unsigned>(st.st_mode & 0777));
    return refuse(std::string("is readable or writable by others (mode ") + mode + ")");
  }
  if (st.st_size > 4096) return refuse("is " + std::to_string(st.st_size) + " bytes, more than a secret's 4 KiB");
  std::string out(static_cast<size_t>(st.st_size), '\0');
  size_t got = 0;
  while (got < out.size()) {
    const ssize_t n = ::read(fd, out.data() + got, out.size() - got);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    got += static_cast<size_t>(n);
  }
  ::close(fd);
  out.resize(got);
  while (!out.empty() && (out.back() == '\n' || out.back() == '\r' || out.back() == ' ')) out.pop_back();
  return out;
}

}  // namespace vlorch
