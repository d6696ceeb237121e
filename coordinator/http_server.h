// A small HTTP/1.1 server on Boost.Asio/Beast for the coordinator's API: one I/O thread,
// keep-alive, a 1 MiB body limit, a 30 s timeout per read and write, and a handler that turns
// one request into one response. Handlers run on kHttpHandlerThreads worker threads (so they
// must be thread-safe), never on the I/O thread: a slow one (a spec on a slow disk) delays
// its own connection only. Beast stays in http_server.cc and http_client.cc.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>

#include "common/status.h"
#include "coordinator/http_client.h"

namespace vlorch::coord {

struct HttpRequest {
  std::string method;                         // "GET", "POST", ...
  std::string path;                           // without the query, percent-decoded
  std::map<std::string, std::string> query;   // decoded
  std::string body;
  std::string authorization;                  // the Authorization header
  std::string host;                           // the Host header ("" when absent)
  std::string origin;                         // the Origin header ("" when absent)
  bool has_origin = false;
  bool peer_loopback = false;                 // the TCP peer's address is a loopback address
};

struct HttpResponse {
  int status = 200;
  std::string content_type = "application/json";
  std::string body;
};

HttpResponse JsonError(int status, const std::string& message);

// What the server accepts of one request: headers up to 16 KiB, a body up to 1 MiB (413 over).
inline constexpr size_t kHttpHeaderLimit = 16 * 1024;
inline constexpr size_t kHttpBodyLimit = 1 << 20;
// Requests handled at once; more wait for a free thread while the I/O thread keeps reading.
inline constexpr int kHttpHandlerThreads = 4;

// Parses one HTTP/1.1 request from `bytes` with the parser and limits the server applies to
// its sockets, into what a Handler sees. InvalidArgument when the bytes are not one complete
// request within the limits. For in-process callers (the HTTP fuzz target).
StatusOr<HttpRequest> ParseHttpRequest(std::string_view bytes, bool peer_loopback);

class HttpServer {
 public:
  using Handler = std::function<HttpResponse(const HttpRequest&)>;
  static StatusOr<std::unique_ptr<HttpServer>> Start(const std::string& address, int port, Handler handler);
  virtual ~HttpServer() = default;
  virtual int port() const = 0;
  virtual void Stop() = 0;
};

}  // namespace vlorch::coord
