// Free space on a filesystem, and the one message every writer gives when it runs out
// (checkpoints, the shard store's ingest): what needed how much where, what is free, what to
// do. Used before a write that can be sized (refuse early, nothing written) and after one
// that failed (say why, with the numbers).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "common/status.h"

namespace vlorch {

// "40.0 GiB (42949672960 bytes)", "3.2 MiB (3355443 bytes)", "512 bytes".
std::string FormatBytes(uint64_t n);

// Bytes an unprivileged writer can still use on the filesystem holding `path` (statvfs:
// f_bavail x f_frsize). `path` must exist. IOError naming it otherwise.
StatusOr<uint64_t> FreeBytes(const std::string& path);

// ResourceExhausted "<what> needs <need> on the filesystem of <path>, which has <free> free:
// <advice>" when fewer than `need` bytes are free there; OK otherwise (also when the free
// space cannot be read: the write itself will then tell).
Status CheckFreeSpace(const std::string& path, uint64_t need, std::string_view what, std::string_view advice);

// The same message for a write that already failed with `cause` (e.g. ENOSPC from RocksDB
// or write(2)); `need` is what the whole operation was estimated to need.
Status OutOfSpaceError(const std::string& path, uint64_t need, std::string_view what, std::string_view advice,
                       const Status& cause);

// Whether `s` reports a full filesystem or quota (ENOSPC / EDQUOT text from strerror, or
// RocksDB's "No space left on device").
bool IsOutOfSpace(const Status& s);

}  // namespace vlorch
