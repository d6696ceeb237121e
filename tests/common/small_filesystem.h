// A tmpfs mounted over a test's folder, for disk-full tests: the test chooses its size (and
// inode count), fills it, and grows it back with Remount. Unmounted when it goes out of
// scope. Mounting needs root (CI runs as root); elsewhere ok() is false and why() says so,
// for the test to GTEST_SKIP() with — visibly, never as a pass.
#pragma once

#include <sys/mount.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <string>

namespace vlorch::test_support {

class SmallFilesystem {
 public:
  // `options`: tmpfs mount options, e.g. "size=1m" or "size=64m,nr_inodes=64".
  SmallFilesystem(const std::filesystem::path& dir, const std::string& options) : dir_(dir) {
    std::filesystem::create_directories(dir);
    if (::mount("tmpfs", dir.c_str(), "tmpfs", 0, options.c_str()) == 0) {
      mounted_ = true;
    } else {
      why_ = "cannot mount a tmpfs at " + dir.string() + " (" + std::strerror(errno) +
             "): the disk-full tests need root";
    }
  }
  ~SmallFilesystem() {
    if (mounted_) ::umount2(dir_.c_str(), MNT_DETACH);
  }
  SmallFilesystem(const SmallFilesystem&) = delete;
  SmallFilesystem& operator=(const SmallFilesystem&) = delete;

  bool ok() const { return mounted_; }
  const std::string& why() const { return why_; }
  // New options (e.g. a larger size: "space returns"); what is stored stays. errno on failure.
  int Remount(const std::string& options) {
    return ::mount("tmpfs", dir_.c_str(), "tmpfs", MS_REMOUNT, options.c_str()) == 0 ? 0 : errno;
  }

 private:
  std::filesystem::path dir_;
  bool mounted_ = false;
  std::string why_;
};

}  // namespace vlorch::test_support
