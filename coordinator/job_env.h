// The environment a submitted job may give its ranks (docs/security.md#job-environment).
//
// A job's `env` reaches mpirun's own environment and every rank's, both running as the
// coordinator's user; a loader or launcher setting there (LD_PRELOAD, OMPI_MCA_*, a plugin
// path) is code execution as that user. So a name is accepted only when it is on the
// built-in allow-list or the operator's (`vlorch coordinator start --allow-env`), and never
// when it is a loader, shell, interpreter, MPI-launch or plugin-loading setting, whoever
// allows it. Values are secrets until shown otherwise: API responses and events show only the
// values of the built-in allow-list's harmless settings.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "common/status.h"

namespace vlorch::coord {

// Why `name` can never be forwarded (a loader, MPI-launch, ... setting), or empty.
std::string ForbiddenEnvReason(const std::string& name);

// OK when every name of `env` may be forwarded. `operator_allowed`: extra names, or prefixes
// ending in '*', that the coordinator's operator allowed. InvalidArgument naming the first
// refused variable, the rule, and what to do.
Status CheckJobEnv(const std::map<std::string, std::string>& env, const std::vector<std::string>& operator_allowed);

// `env` with every value that may be a secret replaced by "<redacted>".
std::map<std::string, std::string> RedactedEnv(const std::map<std::string, std::string>& env);

// Checks the operator's --allow-env entries themselves: no forbidden name or prefix.
Status CheckOperatorAllowList(const std::vector<std::string>& operator_allowed);

}  // namespace vlorch::coord
