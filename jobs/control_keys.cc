#include "jobs/control_keys.h"

#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <sstream>

#include <fmt/format.h>

#include "common/secret.h"

namespace vlorch {
namespace {

bool IsZ85Key(const std::string& k) {
  static constexpr std::string_view kAlphabet =
      "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#";
  return k.size() == 40 && k.find_first_not_of(kAlphabet) == std::string::npos;
}

// Host and port of "tcp://host:port"; port -1 when not of that form.
void SplitTcp(const std::string& endpoint, std::string* host, int* port) {
  *port = -1;
  if (endpoint.rfind("tcp://", 0) != 0) return;
  const std::string rest = endpoint.substr(6);
  const auto colon = rest.rfind(':');
  if (colon == std::string::npos) return;
  *host = rest.substr(0, colon);
  if (host->size() >= 2 && (*host)[0] == '[') *host = host->substr(1, host->size() - 2);
  try {
    *port = std::stoi(rest.substr(colon + 1));
  } catch (...) {
    *port = -1;
  }
}

}  // namespace

bool CurveCredentials::Valid() const { return IsZ85Key(server_public) && IsZ85Key(public_key) && IsZ85Key(secret_key); }

std::string CurveDiscoveryPath(int zmq_port) {
  return (std::filesystem::path(VlorchHomeDir()) / "curve" / std::to_string(zmq_port)).string();
}

std::string FormatCurveFile(const CurveCredentials& c) {
  return fmt::format("server {}\npublic {}\nsecret {}\n", c.server_public, c.public_key, c.secret_key);
}

StatusOr<CurveCredentials> ParseCurveFile(const std::string& text, const std::string& source) {
  CurveCredentials c;
  std::istringstream in(text);
  std::string line;
  int n = 0;
  while (std::getline(in, line)) {
    ++n;
    if (line.empty()) continue;
    std::istringstream words(line);
    std::string key, value;
    words >> key >> value;
    std::string* slot = key == "server" ? &c.server_public : key == "public" ? &c.public_key : key == "secret" ? &c.secret_key : nullptr;
    if (slot == nullptr || !IsZ85Key(value))
      return InvalidArgumentError(fmt::format("{}:{}: expected `server|public|secret <40-character Z85 key>`", source, n));
    *slot = value;
  }
  if (!c.Valid()) return InvalidArgumentError(fmt::format("{}: needs the three lines server, public and secret", source));
  return c;
}

StatusOr<std::optional<CurveCredentials>> FindCurveCredentials(const std::string& endpoint) {
  const char* server = std::getenv(kCurveServerEnv);
  const char* pub = std::getenv(kCurvePublicEnv);
  const char* sec = std::getenv(kCurveSecretEnv);
  if (server != nullptr || pub != nullptr || sec != nullptr) {
    CurveCredentials c{server ? server : "", pub ? pub : "", sec ? sec : ""};
    if (!c.Valid())
      return InvalidArgumentError(fmt::format("{}, {} and {} must all be set to 40-character Z85 keys (the coordinator "
                                              "sets them for the ranks it launches; for your own mpirun, copy them "
                                              "from ~/.vlorch/curve/<zmq port> on the coordinator's machine)",
                                              kCurveServerEnv, kCurvePublicEnv, kCurveSecretEnv));
    return std::optional<CurveCredentials>(c);
  }
  std::string host;
  int port = -1;
  SplitTcp(endpoint, &host, &port);
  if (port < 0) return std::optional<CurveCredentials>();
  if (!NamesThisMachine(host)) return std::optional<CurveCredentials>();
  const std::string path = CurveDiscoveryPath(port);
  auto text = ReadSecretFile(path);
  if (!text.ok()) {
    if (text.status().code() == StatusCode::kNotFound) return std::optional<CurveCredentials>();
    return text.status();
  }
  ASSIGN_OR_RETURN(CurveCredentials c, ParseCurveFile(*text, path));
  return std::optional<CurveCredentials>(c);
}

}  // namespace vlorch
