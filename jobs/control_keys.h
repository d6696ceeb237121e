// The control plane's credentials (ZeroMQ CURVE, docs/security.md#control-plane): how a rank
// gets the coordinator's public key and a key pair of its own, without them ever appearing
// on a command line.
//
// 1. The coordinator keeps its server key pair in <state-dir>/zmq-server-key and an attach key
//    pair in <state-dir>/zmq-attach-key (files 0600).
// 2. For each launch it makes a key pair for that incarnation and hands it, with its public
//    key, to mpirun and every rank in the environment (kCurve*Env, forwarded with `-x NAME`).
// 3. For ranks started by the user's own mpirun (attach mode) it publishes the attach key
//    pair at CurveDiscoveryPath(zmq port) for the same user on the same machine; on other
//    nodes the user sets the three variables from that file.
// 4. Its ZAP handler admits a client key only when it is the attach key or a current
//    incarnation's key, and tells the receive loop which: a key speaks for its own job only.
// Keys are Z85 text, 40 characters. No ZeroMQ here: the coordinator and the agent link it.
#pragma once

#include <optional>
#include <string>

#include "common/status.h"

namespace vlorch {

inline constexpr const char* kCurveServerEnv = "VLORCH_CURVE_SERVER";
inline constexpr const char* kCurvePublicEnv = "VLORCH_CURVE_PUBLIC";
inline constexpr const char* kCurveSecretEnv = "VLORCH_CURVE_SECRET";

struct CurveCredentials {
  std::string server_public;  // the coordinator's public key
  std::string public_key;     // this client's
  std::string secret_key;     // this client's
  // Each a 40-character Z85 key.
  bool Valid() const;
};

// $VLORCH_HOME/curve/<port>, else $HOME/.vlorch/curve/<port>.
std::string CurveDiscoveryPath(int zmq_port);

// "server <z85>\npublic <z85>\nsecret <z85>\n".
std::string FormatCurveFile(const CurveCredentials& c);
// InvalidArgument naming `source` and the line when malformed.
StatusOr<CurveCredentials> ParseCurveFile(const std::string& text, const std::string& source);

// What an agent connecting to `endpoint` uses: the three environment variables when all are
// set; else the published attach credentials when the endpoint is on this machine
// (tcp://127.x, localhost or this host's name) and the file is this user's and private;
// nullopt when there are none (the coordinator then refuses the connection). Malformed
// variables or a refused file: InvalidArgument / FailedPrecondition naming them.
StatusOr<std::optional<CurveCredentials>> FindCurveCredentials(const std::string& endpoint);

}  // namespace vlorch
