// The coordinator's HTTP API: any bytes are parsed as one request by the server's own parser
// (ParseHttpRequest: Beast, the server's header and body limits) and answered by a real
// coordinator (RocksDB state, CURVE control plane, a launcher that cannot start anything).
// Invariants: no crash or sanitizer report; a request without the token is refused unless it
// is the open health check; no response carries the token unless the request did.
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <string>
#include <string_view>

#include "coordinator/coordinator.h"
#include "coordinator/http_server.h"
#include "tests/fuzz/fuzz_util.h"

namespace {

constexpr char kToken[] = "fuzz-token-0123456789abcdef";

vlorch::coord::Coordinator* TheCoordinator() {
  static vlorch::coord::Coordinator* c = [] {
    vlorch::coord::CoordinatorOptions o;
    o.state_dir = (vlorch::fuzz::ScratchDir() / "http-state").string();
    o.http_port = 0;
    o.zmq_endpoint = "tcp://127.0.0.1:*";
    o.token = kToken;
    o.publish_token = false;
    o.mpirun = "/bin/false";  // a job that passes validation fails at launch, nothing runs
    o.run_root = vlorch::fuzz::ScratchDir().string();
    auto started = vlorch::coord::Coordinator::Start(o);
    if (!started.ok()) {
      std::fprintf(stderr, "fuzz_http_api: coordinator did not start: %s\n", started.status().ToString().c_str());
      std::abort();
    }
    return started->release();  // lives for the process
  }();
  return c;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  vlorch::coord::Coordinator* c = TheCoordinator();
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);
  // The first byte picks whether the peer is on loopback (public_read is off either way).
  auto req = vlorch::coord::ParseHttpRequest(bytes, size > 0 && (data[0] & 1));
  if (!req.ok()) return 0;
  const vlorch::coord::HttpResponse res = c->Route(*req);
  // The token never leaves in a response, except as an echo of what the caller itself sent
  // (a refused Host header quoted in the 403 may hold any bytes the caller put there).
  if (res.body.find(kToken) != std::string::npos && bytes.find(kToken) == std::string_view::npos) __builtin_trap();
  const bool authorized = req->authorization == std::string("Bearer ") + kToken;
  const bool open_health = req->method == "GET" && req->path == "/api/health";
  if (!authorized && !open_health && res.status < 400) __builtin_trap();
  return 0;
}
