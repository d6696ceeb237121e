#include "worker/comm/mpi_runtime.h"

#include <mpi.h>

#include <fmt/format.h>

#include "common/logging.h"

namespace vlorch::comm {
namespace {

MpiSession* g_session = nullptr;
std::thread::id g_init_thread;
std::mutex g_serialize_mu;

int ToMpi(MpiThreadLevel l) {
  switch (l) {
    case MpiThreadLevel::kSingle: return MPI_THREAD_SINGLE;
    case MpiThreadLevel::kFunneled: return MPI_THREAD_FUNNELED;
    case MpiThreadLevel::kSerialized: return MPI_THREAD_SERIALIZED;
    case MpiThreadLevel::kMultiple: return MPI_THREAD_MULTIPLE;
  }
  return MPI_THREAD_SINGLE;
}

MpiThreadLevel FromMpi(int l) {
  if (l >= MPI_THREAD_MULTIPLE) return MpiThreadLevel::kMultiple;
  if (l >= MPI_THREAD_SERIALIZED) return MpiThreadLevel::kSerialized;
  if (l >= MPI_THREAD_FUNNELED) return MpiThreadLevel::kFunneled;
  return MpiThreadLevel::kSingle;
}

}  // namespace

const char* MpiThreadLevelName(MpiThreadLevel level) {
  switch (level) {
    case MpiThreadLevel::kSingle: return "single";
    case MpiThreadLevel::kFunneled: return "funneled";
    case MpiThreadLevel::kSerialized: return "serialized";
    case MpiThreadLevel::kMultiple: return "multiple";
  }
  return "?";
}

std::string MpiErrorString(int code) {
  char buf[MPI_MAX_ERROR_STRING] = {0};
  int len = 0;
  MPI_Error_string(code, buf, &len);
  return std::string(buf, len);
}

StatusOr<std::unique_ptr<MpiSession>> MpiSession::Init(int* argc, char*** argv,
                                                       MpiThreadLevel requested) {
  int initialized = 0;
  MPI_Initialized(&initialized);
  if (initialized || g_session != nullptr)
    return FailedPreconditionError("MPI is already initialised; create one MpiSession per process");
  int provided = 0;
  int rc = MPI_Init_thread(argc, argv, ToMpi(requested), &provided);
  if (rc != MPI_SUCCESS)
    return UnavailableError("MPI_Init_thread failed: " + MpiErrorString(rc) +
                            " (is this process started by mpirun, and can it reach its peers?)");
  MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
  std::unique_ptr<MpiSession> s(new MpiSession());
  s->provided_ = FromMpi(provided);
  MPI_Comm_rank(MPI_COMM_WORLD, &s->world_rank_);
  MPI_Comm_size(MPI_COMM_WORLD, &s->world_size_);
  MPI_Comm local;
  MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, s->world_rank_, MPI_INFO_NULL, &local);
  MPI_Comm_rank(local, &s->local_rank_);
  MPI_Comm_size(local, &s->local_size_);
  MPI_Comm_free(&local);
  g_init_thread = std::this_thread::get_id();
  g_session = s.get();
  if (s->provided_ < requested) {
    VLOG_WARNING("asked MPI for thread level {}, got {}", MpiThreadLevelName(requested),
                 MpiThreadLevelName(s->provided_));
  }
  return s;
}

MpiSession::~MpiSession() {
  g_session = nullptr;
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized) MPI_Finalize();
}

MpiSession* MpiSession::Get() { return g_session; }

StatusOr<MpiCallGuard> MpiCallGuard::Acquire(const char* what) {
  MpiSession* s = MpiSession::Get();
  if (s == nullptr) return FailedPreconditionError(fmt::format("{}: MPI is not initialised", what));
  MpiCallGuard g;
  switch (s->provided()) {
    case MpiThreadLevel::kMultiple:
      break;
    case MpiThreadLevel::kSerialized:
      g.lock_ = std::unique_lock<std::mutex>(g_serialize_mu);
      break;
    case MpiThreadLevel::kFunneled:
    case MpiThreadLevel::kSingle:
      if (std::this_thread::get_id() != g_init_thread)
        return FailedPreconditionError(fmt::format(
            "{}: called from a thread other than the one that initialised MPI, but MPI granted "
            "only thread level '{}'; request 'serialized' or 'multiple'",
            what, MpiThreadLevelName(s->provided())));
      break;
  }
  return g;
}

}  // namespace vlorch::comm
