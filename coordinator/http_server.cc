#include "coordinator/http_server.h"

#include <atomic>
#include <thread>

#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

namespace vlorch::coord {
namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;

std::string PercentDecode(std::string_view s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '%' && i + 2 < s.size() && std::isxdigit(static_cast<unsigned char>(s[i + 1])) &&
        std::isxdigit(static_cast<unsigned char>(s[i + 2]))) {
      out += static_cast<char>(std::stoi(std::string(s.substr(i + 1, 2)), nullptr, 16));
      i += 2;
    } else if (s[i] == '+') {
      out += ' ';
    } else {
      out += s[i];
    }
  }
  return out;
}

bool PeerIsLoopback(const tcp::socket& socket) {
  beast::error_code peer_ec;
  const tcp::endpoint peer = socket.remote_endpoint(peer_ec);
  if (peer_ec) return false;
  const auto a = peer.address();
  return a.is_loopback() || (a.is_v6() && a.to_v6().is_v4_mapped() &&
                             asio::ip::make_address_v4(asio::ip::v4_mapped, a.to_v6()).is_loopback());
}

// The one parser configuration, for sockets and for ParseHttpRequest.
void Configure(http::request_parser<http::string_body>& parser) {
  parser.body_limit(kHttpBodyLimit);
  parser.header_limit(kHttpHeaderLimit);
}

HttpRequest Convert(const http::request<http::string_body>& req, bool peer_loopback) {
  HttpRequest r;
  r.peer_loopback = peer_loopback;
  if (auto it = req.find(http::field::host); it != req.end()) r.host = std::string(it->value());
  if (auto it = req.find(http::field::origin); it != req.end()) r.origin = std::string(it->value()), r.has_origin = true;
  r.method = std::string(req.method_string());
  const std::string target(req.target());
  const auto q = target.find('?');
  r.path = PercentDecode(target.substr(0, q));
  if (q != std::string::npos) {
    std::string_view rest(target);
    rest.remove_prefix(q + 1);
    while (!rest.empty()) {
      const auto amp = rest.find('&');
      std::string_view part = rest.substr(0, amp);
      const auto eq = part.find('=');
      r.query[PercentDecode(part.substr(0, eq))] = eq == std::string_view::npos ? "" : PercentDecode(part.substr(eq + 1));
      if (amp == std::string_view::npos) break;
      rest.remove_prefix(amp + 1);
    }
  }
  r.body = req.body();
  if (auto it = req.find(http::field::authorization); it != req.end()) r.authorization = std::string(it->value());
  return r;
}

class Session : public std::enable_shared_from_this<Session> {
 public:
  Session(tcp::socket socket, const HttpServer::Handler* handler, asio::thread_pool* workers)
      : stream_(std::move(socket)), handler_(handler), workers_(workers) {}
  void Start() { Read(); }

 private:
  void Read() {
    parser_.emplace();
    Configure(*parser_);
    stream_.expires_after(std::chrono::seconds(30));
    http::async_read(stream_, buffer_, *parser_,
                     [self = shared_from_this()](beast::error_code ec, size_t) { self->OnRead(ec); });
  }

  void OnRead(beast::error_code ec) {
    if (ec == http::error::end_of_stream || ec == beast::error::timeout || ec == asio::error::connection_reset) {
      Close();
      return;
    }
    if (ec == http::error::body_limit) return Write(JsonError(413, fmt::format("request body over {} bytes", kHttpBodyLimit)), false);
    if (ec) return Write(JsonError(400, fmt::format("malformed HTTP request: {}", ec.message())), false);
    const auto& req = parser_->get();
    const bool keep_alive = req.keep_alive();
    // The handler runs on the worker pool, not this I/O thread: one that reads a submitted
    // spec or hostfile from a slow disk, or waits for the job table, holds up only its own
    // connection while the others (health checks, status polls, /metrics) are still served.
    // Its response is written back on the I/O thread.
    asio::post(*workers_, [self = shared_from_this(), r = Convert(req, PeerIsLoopback(stream_.socket())), keep_alive] {
      HttpResponse out;
      try {
        out = (*self->handler_)(r);
      } catch (const std::exception& e) {
        out = JsonError(500, fmt::format("internal error: {}", e.what()));
      }
      asio::post(self->stream_.get_executor(),
                 [self, out = std::move(out), keep_alive]() mutable { self->Write(std::move(out), keep_alive); });
    });
  }

  void Write(HttpResponse out, bool keep_alive) {
    res_ = std::make_shared<http::response<http::string_body>>(static_cast<http::status>(out.status), 11);
    res_->set(http::field::server, "vlorch-coordinator");
    res_->set(http::field::content_type, out.content_type);
    res_->keep_alive(keep_alive);
    res_->body() = std::move(out.body);
    res_->prepare_payload();
    stream_.expires_after(std::chrono::seconds(30));
    http::async_write(stream_, *res_, [self = shared_from_this(), keep_alive](beast::error_code wec, size_t) {
      if (wec || !keep_alive) {
        self->Close();
        return;
      }
      self->Read();
    });
  }

  void Close() {
    beast::error_code ignored;
    stream_.socket().shutdown(tcp::socket::shutdown_send, ignored);
  }

  beast::tcp_stream stream_;
  beast::flat_buffer buffer_;
  std::optional<http::request_parser<http::string_body>> parser_;
  std::shared_ptr<http::response<http::string_body>> res_;
  const HttpServer::Handler* handler_;
  asio::thread_pool* workers_;
};

class BeastServer : public HttpServer {
 public:
  BeastServer(Handler handler) : handler_(std::move(handler)), acceptor_(ioc_) {}
  ~BeastServer() override { Stop(); }

  Status Listen(const std::string& address, int port) {
    beast::error_code ec;
    auto addr = asio::ip::make_address(address, ec);
    if (ec) return InvalidArgumentError(fmt::format("HTTP bind address '{}' is not an IP address", address));
    tcp::endpoint ep(addr, static_cast<unsigned short>(port));
    acceptor_.open(ep.protocol(), ec);
    if (!ec) acceptor_.set_option(asio::socket_base::reuse_address(true), ec);
    if (!ec) acceptor_.bind(ep, ec);
    if (!ec) acceptor_.listen(asio::socket_base::max_listen_connections, ec);
    if (ec)
      return UnavailableError(fmt::format("cannot listen on {}:{}: {} (another coordinator running? `vlorch "
                                          "coordinator status` tells; or pick another --http port)",
                                          address, port, ec.message()));
    port_ = acceptor_.local_endpoint().port();
    Accept();
    thread_ = std::thread([this] { ioc_.run(); });
    return Status::OK();
  }

  int port() const override { return port_; }

  void Stop() override {
    if (stopped_.exchange(true)) return;
    ioc_.stop();
    if (thread_.joinable()) thread_.join();
    // Handlers still running finish (their responses are dropped with the I/O context); none
    // starts after this.
    workers_.stop();
    workers_.join();
  }

 private:
  void Accept() {
    acceptor_.async_accept([this](beast::error_code ec, tcp::socket socket) {
      if (!ec) std::make_shared<Session>(std::move(socket), &handler_, &workers_)->Start();
      if (!stopped_) Accept();
    });
  }

  Handler handler_;
  asio::thread_pool workers_{kHttpHandlerThreads};
  asio::io_context ioc_{1};
  tcp::acceptor acceptor_;
  std::thread thread_;
  int port_ = 0;
  std::atomic<bool> stopped_{false};
};

}  // namespace

HttpResponse JsonError(int status, const std::string& message) {
  HttpResponse r;
  r.status = status;
  r.body = nlohmann::json{{"error", message}}.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  return r;
}

StatusOr<HttpRequest> ParseHttpRequest(std::string_view bytes, bool peer_loopback) {
  if (bytes.empty()) return InvalidArgumentError("malformed HTTP request: no bytes");
  http::request_parser<http::string_body> parser;
  Configure(parser);
  parser.eager(true);
  beast::error_code ec;
  while (!bytes.empty() && !parser.is_done()) {
    const size_t used = parser.put(asio::buffer(bytes.data(), bytes.size()), ec);
    if (ec == http::error::need_more) {
      ec = {};
      if (used == 0) break;  // an incomplete message: the end of the bytes decides
    }
    if (ec) break;
    bytes.remove_prefix(used);
  }
  if (!ec && !parser.is_done()) parser.put_eof(ec);
  if (ec == http::error::body_limit) return InvalidArgumentError(fmt::format("request body over {} bytes", kHttpBodyLimit));
  if (ec || !parser.is_done()) return InvalidArgumentError(fmt::format("malformed HTTP request: {}", ec ? ec.message() : "incomplete"));
  return Convert(parser.get(), peer_loopback);
}

StatusOr<std::unique_ptr<HttpServer>> HttpServer::Start(const std::string& address, int port, Handler handler) {
  auto server = std::make_unique<BeastServer>(std::move(handler));
  RETURN_IF_ERROR(server->Listen(address, port));
  return std::unique_ptr<HttpServer>(std::move(server));
}

}  // namespace vlorch::coord
