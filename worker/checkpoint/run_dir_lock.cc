#include "worker/checkpoint/run_dir_lock.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <map>
#include <mutex>
#include <utility>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "common/host.h"
#include "common/logging.h"
#include "jobs/json_fields.h"

namespace vlorch::checkpoint {
namespace fs = std::filesystem;

struct RunDirLock::Held {
  Held(int fd, std::string path) : fd(fd), path(std::move(path)) {}
  ~Held() {
    // 5. The text goes first, while the lock still keeps everyone else out.
    if (::ftruncate(fd, 0) != 0) {
      // Harmless: the next holder overwrites it.
    }
    ::flock(fd, LOCK_UN);
    ::close(fd);
  }
  int fd;
  std::string path;
};

namespace {

using FileKey = std::pair<dev_t, ino_t>;

struct Registry {
  std::mutex mu;
  // The locks this process holds, by locked file. `pid` tells a forked child that the
  // entries it inherited are its parent's.
  std::map<FileKey, std::pair<pid_t, std::weak_ptr<RunDirLock::Held>>> held;
};

Registry& TheRegistry() {
  static Registry* r = new Registry;  // never destroyed: handles may outlive static teardown
  return *r;
}

std::string NowUtc() {
  const std::time_t t = std::time(nullptr);
  std::tm tm {};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

// Text from the lock file, safe to print: control characters replaced.
std::string Printable(std::string s) {
  for (char& c : s)
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) c = '?';
  return s;
}

// "pid 4242 on host node3 (job 'tiny', since 2025-01-01T10:00:00Z)", and how to stop it,
// from the holder's file; it is read as untrusted text (a dead holder may have left it half
// written).
std::pair<std::string, std::string> DescribeHolder(int fd, const std::string& path) {
  char buf[4096];
  ssize_t n = ::pread(fd, buf, sizeof buf, 0);
  const std::string text = n > 0 ? std::string(buf, static_cast<size_t>(n)) : std::string();
  auto j = internal::ParseObject(path, text);
  if (!j.ok() || text.empty())
    return {"a process that has not written its pid into it yet", "find it with `fuser -v " + path + "`"};
  internal::Fields f(*j, path);
  auto pid = f.Int("pid", 1, INT32_MAX);
  auto host = f.String("host", 255);
  if (!pid.ok() || !host.ok()) return {"a process whose lock file names no pid and host", "find it with `fuser -v " + path + "`"};
  std::string extra;
  if (auto what = f.String("what", 1024); what.ok() && !what->empty()) extra += Printable(*what);
  if (auto since = f.String("started", 64); since.ok()) extra += (extra.empty() ? "" : ", ") + ("since " + Printable(*since));
  const std::string h = Printable(*host);
  return {fmt::format("pid {} on host {}{}", *pid, h, extra.empty() ? "" : " (" + extra + ")"),
          fmt::format("on {}: kill {}", h, *pid)};
}

}  // namespace

RunDirLock::~RunDirLock() = default;

const std::string& RunDirLock::path() const { return held_->path; }

StatusOr<RunDirLock> RunDirLock::Acquire(const std::string& run_dir, const std::string& what) {
  std::error_code ec;
  fs::create_directories(run_dir, ec);
  if (ec) return IOError(fmt::format("cannot create run directory {}: {}", run_dir, ec.message()));
  const std::string path = (fs::path(run_dir) / kRunDirLockFile).string();
  Registry& reg = TheRegistry();
  for (int attempt = 0; attempt < 8; ++attempt) {
    // 1. Open or create; a symlink in its place is refused (O_NOFOLLOW).
    const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0644);
    if (fd < 0) return ErrnoError("open the run-directory lock", path, errno);
    struct stat st {};
    if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
      ::close(fd);
      return FailedPreconditionError(fmt::format("{} is not a regular file; it is the run directory's lock", path));
    }
    const FileKey key{st.st_dev, st.st_ino};
    std::lock_guard<std::mutex> lock(reg.mu);
    for (auto it = reg.held.begin(); it != reg.held.end();)
      it = it->second.second.expired() ? reg.held.erase(it) : std::next(it);
    if (auto it = reg.held.find(key); it != reg.held.end() && it->second.first == ::getpid()) {
      if (auto held = it->second.second.lock()) {
        ::close(fd);  // another handle on the lock this process holds
        return RunDirLock(std::move(held));
      }
    }
    // 2. Lock, or name who holds it.
    int rc;
    do rc = ::flock(fd, LOCK_EX | LOCK_NB);
    while (rc != 0 && errno == EINTR);
    if (rc != 0) {
      const int err = errno;
      if (err == EWOULDBLOCK) {
        auto [holder, stop] = DescribeHolder(fd, path);
        ::close(fd);
        return FailedPreconditionError(fmt::format(
            "run directory {} is in use by another writer: {} holds {}. Two writers in one run directory delete each "
            "other's checkpoint saves. Wait for that run to end or stop it ({}), or give this run another --run-dir. "
            "A lock whose holder has died frees itself; nothing needs deleting (docs/checkpoints.md)",
            run_dir, holder, path, stop));
      }
      ::close(fd);
      return FailedPreconditionError(fmt::format(
          "cannot lock {}: flock: {}. The file system of the run directory does not support flock(2), so nothing "
          "would keep a second writer out; put the run directory on a local disk or an NFSv4 mount with locking",
          path, std::strerror(err)));
    }
    // 3. Still the file at `path`? (Deleted or replaced meanwhile: lock the new one.)
    struct stat now {};
    if (::stat(path.c_str(), &now) != 0 || now.st_dev != st.st_dev || now.st_ino != st.st_ino) {
      ::flock(fd, LOCK_UN);
      ::close(fd);
      continue;
    }
    // 4. Who holds it, replacing a dead holder's text.
    nlohmann::json j = {{"pid", static_cast<int64_t>(::getpid())},
                        {"host", HostName()},
                        {"started", NowUtc()},
                        {"what", what}};
    const std::string text = j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
    if (::ftruncate(fd, 0) != 0 || ::pwrite(fd, text.data(), text.size(), 0) != static_cast<ssize_t>(text.size()))
      VLOG_WARNING("holding {} but could not write this process's pid into it: {}", path, std::strerror(errno));
    auto held = std::make_shared<Held>(fd, path);
    reg.held[key] = {::getpid(), held};
    return RunDirLock(std::move(held));
  }
  return IOError(fmt::format("{} kept being replaced while it was being locked; is something deleting it?", path));
}

}  // namespace vlorch::checkpoint
