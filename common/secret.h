// Secrets: random tokens from the kernel's CSPRNG, comparisons that take the same time
// whatever the guess, and files that only their owner can read.
#pragma once

#include <string>
#include <string_view>

#include "common/status.h"

namespace vlorch {

// The per-user folder of vlorch's published secrets and default state: $VLORCH_HOME, else
// $HOME/.vlorch (else ./.vlorch when HOME is unset).
std::string VlorchHomeDir();

// Whether `host` names this machine: "localhost", a 127.x or ::1 address, or its host name.
// Secrets published in VlorchHomeDir() are offered only to such addresses.
bool NamesThisMachine(const std::string& host);

// `bytes` random bytes from getrandom(2), hex-encoded (2 * bytes characters).
StatusOr<std::string> RandomHexToken(size_t bytes = 32);

// a == b, in time that depends on the lengths only (no early exit on the first difference).
bool ConstantTimeEquals(std::string_view a, std::string_view b);

// Writes `secret` to `path` with mode 0600 (temp file, fsync, rename), creating the parent
// directory with mode 0700 when missing.
Status WriteSecretFile(const std::string& path, const std::string& secret);

// Reads a secret file written by WriteSecretFile: a regular file owned by this user, not
// readable or writable by group or others, at most 4 KiB; trailing whitespace dropped.
// NotFound when absent; FailedPrecondition naming the file when its owner or mode is wrong.
StatusOr<std::string> ReadSecretFile(const std::string& path);

}  // namespace vlorch
