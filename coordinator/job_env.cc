#include "coordinator/job_env.h"

#include <algorithm>
#include <array>
#include <string_view>

#include <fmt/format.h>

namespace vlorch::coord {
namespace {

bool StartsWith(std::string_view s, std::string_view prefix) { return s.substr(0, prefix.size()) == prefix; }

// Names (exact) and prefixes (ending in '*') that change what code a process loads or how a
// launcher starts processes. Checked before any allow-list.
struct Rule {
  std::string_view pattern;
  std::string_view why;
};
constexpr std::array<Rule, 33> kForbidden = {{
    {"LD_*", "a dynamic-loader setting (preloads or redirects shared libraries)"},
    {"GLIBC_TUNABLES", "a C-library loader setting"},
    {"GCONV_PATH", "a C-library module path"},
    {"LOCPATH", "a C-library data path"},
    {"NLSPATH", "a C-library data path"},
    {"HOSTALIASES", "a C-library resolver setting"},
    {"MALLOC_*", "a C-library allocator setting (the coordinator sets its own)"},
    {"PATH", "the program search path (it picks which mpirun and orted run)"},
    {"IFS", "a shell setting"},
    {"ENV", "a shell start-up file"},
    {"BASH_ENV", "a shell start-up file"},
    {"BASH_FUNC_*", "an exported shell function"},
    {"SHELLOPTS", "a shell setting"},
    {"PS4", "a shell setting"},
    {"PYTHON*", "an interpreter start-up or module path"},
    {"PERL*", "an interpreter start-up or module path"},
    {"RUBY*", "an interpreter start-up or module path"},
    {"NODE_OPTIONS", "an interpreter start-up setting"},
    {"OMPI_*", "an Open MPI launch setting (agents, MCA parameters)"},
    {"OPAL_*", "an Open MPI launch setting"},
    {"ORTE_*", "an Open MPI launch setting"},
    {"PRTE_*", "a PRRTE launch setting"},
    {"PMIX_*", "a PMIx launch setting"},
    {"HWLOC_*", "an hwloc setting (plugin paths)"},
    {"UCX_*", "a UCX setting (module paths)"},
    {"FI_*", "a libfabric setting (provider paths)"},
    {"CUDA_INJECTION*", "a CUDA injection library"},
    {"NCCL_NET_PLUGIN", "an NCCL plugin library"},
    {"NCCL_TUNER_PLUGIN", "an NCCL plugin library"},
    {"NCCL_PROFILER_PLUGIN", "an NCCL plugin library"},
    {"NCCL_CONF_FILE", "an NCCL configuration file (it can name plugins)"},
    {"VLORCH_SPM_SHIM", "a library vlorch-worker loads"},
    {"HOME", "the home directory (start-up files of every tool)"},
}};

bool Matches(std::string_view pattern, std::string_view name) {
  if (!pattern.empty() && pattern.back() == '*') return StartsWith(name, pattern.substr(0, pattern.size() - 1));
  return pattern == name;
}

// What a job may set without the operator's word, and whose values are not secrets.
constexpr std::array<std::string_view, 16> kAllowed = {
    "VLORCH_FAULT", "VLORCH_LOG_LEVEL", "VLORCH_OVERSUBSCRIBE",
    "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
    "CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER", "CUDA_LAUNCH_BLOCKING",
    "NCCL_*", "TORCH_SHOW_CPP_STACKTRACES", "TZ", "LANG", "LC_ALL", "LC_CTYPE", "TOKENIZERS_PARALLELISM",
};

bool BuiltInAllowed(std::string_view name) {
  return std::any_of(kAllowed.begin(), kAllowed.end(), [&](std::string_view p) { return Matches(p, name); });
}

bool ValidName(std::string_view name) {
  if (name.empty() || name.size() > 128 || (name[0] >= '0' && name[0] <= '9')) return false;
  return std::all_of(name.begin(), name.end(), [](char c) {
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_';
  });
}

}  // namespace

std::string ForbiddenEnvReason(const std::string& name) {
  for (const Rule& r : kForbidden) {
    if (Matches(r.pattern, name)) return std::string(r.why);
  }
  return "";
}

Status CheckOperatorAllowList(const std::vector<std::string>& operator_allowed) {
  for (const std::string& a : operator_allowed) {
    const std::string stem = !a.empty() && a.back() == '*' ? a.substr(0, a.size() - 1) : a;
    if (!ValidName(stem.empty() ? "X" : stem))
      return InvalidArgumentError(fmt::format("--allow-env '{}' is not a variable name or a NAME_PREFIX* pattern", a));
    // A prefix that covers a forbidden name ("L*" covers LD_PRELOAD) is refused as well.
    for (const Rule& r : kForbidden) {
      const std::string_view p = r.pattern.back() == '*' ? r.pattern.substr(0, r.pattern.size() - 1) : r.pattern;
      const bool overlaps = a.back() == '*' ? StartsWith(p, stem) || StartsWith(stem, p) : Matches(r.pattern, a);
      if (overlaps)
        return InvalidArgumentError(fmt::format("--allow-env '{}' would allow {} ({}): the coordinator never forwards "
                                                "those (docs/security.md#job-environment)",
                                                a, r.pattern, r.why));
    }
  }
  return Status::OK();
}

Status CheckJobEnv(const std::map<std::string, std::string>& env, const std::vector<std::string>& operator_allowed) {
  for (const auto& entry : env) {
    // Not a structured binding: lambdas may not capture those in C++17 (clang refuses).
    const std::string& name = entry.first;
    const std::string& value = entry.second;
    if (!ValidName(name))
      return InvalidArgumentError(fmt::format("environment variable name '{}' is not valid (letters, digits and '_', "
                                              "not starting with a digit, at most 128 characters)",
                                              name.substr(0, 128)));
    if (value.size() > 64 * 1024 || value.find('\0') != std::string::npos)
      return InvalidArgumentError(fmt::format("environment variable {}: the value is over 64 KiB or holds a NUL byte", name));
    if (const std::string why = ForbiddenEnvReason(name); !why.empty())
      return InvalidArgumentError(fmt::format("environment variable {} is refused: it is {}, and a job's environment "
                                              "reaches mpirun and every rank as the coordinator's user "
                                              "(docs/security.md#job-environment); remove it from the submission",
                                              name, why));
    const bool allowed = BuiltInAllowed(name) || std::any_of(operator_allowed.begin(), operator_allowed.end(),
                                                            [&](const std::string& p) { return Matches(p, name); });
    if (!allowed)
      return InvalidArgumentError(fmt::format("environment variable {} is not on the coordinator's allow-list "
                                              "(docs/security.md#job-environment): start the coordinator with "
                                              "`--allow-env {}` to let jobs set it",
                                              name, name));
  }
  return Status::OK();
}

std::map<std::string, std::string> RedactedEnv(const std::map<std::string, std::string>& env) {
  std::map<std::string, std::string> out;
  for (const auto& [name, value] : env) out[name] = BuiltInAllowed(name) ? value : "<redacted>";
  return out;
}

}  // namespace vlorch::coord
