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

// "host:port" or "http://host:port/" -> parts; errors name the text.
Status SplitHostPort(const std::string& text, std::string* host, int* port);

}  // namespace vlorch::coord
