// This machine's host name (gethostname), for log prefixes, worker registration and the
// coordinator's view of which ranks run locally.
#pragma once

#include <string>

namespace vlorch {

// `fallback` when the name cannot be read.
std::string HostName(const char* fallback = "localhost");

}  // namespace vlorch
