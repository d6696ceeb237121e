// Durable small-file writes: the primitives of every commit protocol in vlorch (checkpoint
// manifests and `latest`, stage state). LevelDB's SetCurrentFile pattern: write a temporary
// file, fsync it, rename it over the target, fsync the directory.
#pragma once

#include <string>

#include "common/status.h"

namespace vlorch {

// Creates or truncates `path` with `data`; fsyncs it when `sync`.
Status WriteFileDurably(const std::string& path, const std::string& data, bool sync);

// Replaces `path` atomically: readers see the old content or the new, never a mix, also
// after a crash. `sync` false skips the fsyncs (benchmarks of the page cache only).
Status WriteFileAtomically(const std::string& path, const std::string& data, bool sync = true);

// fsync of a file or directory by path.
Status FsyncPath(const std::string& path, bool directory);

// Reads a file named by outside input (a job spec, a hostfile): it must be a regular file
// (a FIFO, device or directory is refused without blocking: opened O_NONBLOCK) of at most
// `max_bytes`. Errors name the path and what to do.
StatusOr<std::string> ReadRegularFile(const std::string& path, size_t max_bytes);

// ReadRegularFile for a file a commit protocol wrote (checkpoint metadata, stage state):
// NotFound "<path> is missing" when absent; Corruption (the file is damaged, skip what it
// describes) when it is not a regular file or is over `max_bytes`.
StatusOr<std::string> ReadMetadataFile(const std::string& path, size_t max_bytes);

}  // namespace vlorch
