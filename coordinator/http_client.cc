#include "coordinator/http_client.h"

#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>

#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <fmt/format.h>

#include "common/secret.h"

namespace vlorch::coord {
namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;

}  // namespace

StatusOr<HttpResult> HttpCall(const std::string& host, int port, const std::string& method, const std::string& target,
                              const std::string& body, const std::string& token, double timeout_s) {
  try {
    asio::io_context ioc;
    tcp::resolver resolver(ioc);
    beast::tcp_stream stream(ioc);
    const auto timeout = std::chrono::milliseconds(static_cast<int64_t>(timeout_s * 1000));
    beast::error_code ec;
    auto results = resolver.resolve(host, std::to_string(port), ec);
    if (ec) return UnavailableError(fmt::format("cannot resolve {}: {}", host, ec.message()));
    stream.expires_after(timeout);
    stream.connect(results, ec);
    if (ec) return UnavailableError(fmt::format("no coordinator at {}:{} ({})", host, port, ec.message()));
    http::request<http::string_body> req(http::string_to_verb(method), target, 11);
    req.set(http::field::host, host);
    if (!token.empty()) req.set(http::field::authorization, "Bearer " + token);
    if (!body.empty()) req.set(http::field::content_type, "application/json");
    req.body() = body;
    req.prepare_payload();
    stream.expires_after(timeout);
    http::write(stream, req, ec);
    if (ec) return UnavailableError(fmt::format("sending to {}:{}: {}", host, port, ec.message()));
    beast::flat_buffer buffer;
    http::response_parser<http::string_body> parser;
    parser.body_limit(64 << 20);
    stream.expires_after(timeout);
    http::read(stream, buffer, parser, ec);
    if (ec) return UnavailableError(fmt::format("reading the reply of {}:{}: {}", host, port, ec.message()));
    stream.socket().shutdown(tcp::socket::shutdown_both, ec);
    HttpResult r;
    r.status = static_cast<int>(parser.get().result_int());
    r.body = std::move(parser.get().body());
    return r;
  } catch (const std::exception& e) {
    return UnavailableError(fmt::format("HTTP {} {}:{}{}: {}", method, host, port, target, e.what()));
  }
}

Status SplitHostPort(const std::string& text, std::string* host, int* port) {
  std::string t = text;
  if (t.rfind("http://", 0) == 0) t = t.substr(7);
  if (!t.empty() && t.back() == '/') t.pop_back();
  const auto colon = t.rfind(':');
  if (colon == std::string::npos || colon == 0)
    return InvalidArgumentError(fmt::format("'{}' is not host:port (e.g. 127.0.0.1:7010)", text));
  *host = t.substr(0, colon);
  try {
    *port = std::stoi(t.substr(colon + 1));
  } catch (...) {
    *port = -1;
  }
  if (*port < 0 || *port > 65535) return InvalidArgumentError(fmt::format("'{}' has no valid port", text));
  return Status::OK();
}

std::string TokenDiscoveryPath(int port) {
  return (std::filesystem::path(VlorchHomeDir()) / "tokens" / std::to_string(port)).string();
}

std::string DiscoverToken(const std::string& host, int port) {
  if (!NamesThisMachine(host)) return "";
  auto token = ReadSecretFile(TokenDiscoveryPath(port));
  return token.ok() ? *token : "";
}

}  // namespace vlorch::coord
