// The blocking HTTP/1.1 client of the coordinator's API (the CLI, tests, the load benchmark).
// Its own small library: `vlorch status` links this and not the coordinator (no RocksDB, no
// ZeroMQ), so that it starts in a few milliseconds.
#pragma once

#include <string>

#include "common/status.h"

namespace vlorch::coord {

struct HttpResult {
  int status = 0;
  std::string body;
};

// One request on a fresh connection. Unreachable, refused, timed out (timeout_s for each of
// connect, write and read) or cut off: Unavailable, naming host:port.
StatusOr<HttpResult> HttpCall(const std::string& host, int port, const std::string& method, const std::string& target,
                              const std::string& body = "", const std::string& token = "", double timeout_s = 10);

// Where a coordinator on this machine publishes its API token for clients of the same user:
// $VLORCH_HOME/tokens/<port>, else $HOME/.vlorch/tokens/<port> (file 0600, directory 0700).
// The file's permissions are the proof that a caller is the coordinator's user (or root).
std::string TokenDiscoveryPath(int port);

// The token for a coordinator at host:port when the caller named none: the discovery file's
// content when `host` is this machine (a loopback address, "localhost" or this host's name)
// and the file is this user's and private to it; empty otherwise.
std::string DiscoverToken(const std::string& host, int port);

// "host:port" or "http://host:port/" -> parts; errors name the text.
Status SplitHostPort(const std::string& text, std::string* host, int* port);

}  // namespace vlorch::coord
