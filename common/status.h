// Status and StatusOr<T>: how every expected failure in vlorch is reported.
//
// Expected failures (bad input, missing file, corrupt checkpoint, timeout, lost peer) are
// returned as a Status whose message tells the user what went wrong and what to do. Bugs
// are VLORCH_CHECKs (common/check.h), not Statuses. Exceptions thrown by LibTorch, RocksDB
// or yaml-cpp are caught at module boundaries and turned into a Status.
//
// Status is [[nodiscard]]: ignoring one is a compile warning. Use IgnoreError() to say so.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <variant>

namespace vlorch {

enum class StatusCode : int {
  kOk = 0,
  kInvalidArgument = 1,     // the caller's input is wrong (bad flag, bad layout, bad file)
  kNotFound = 2,            // a named thing does not exist
  kCorruption = 3,          // stored data fails a format or checksum check
  kIOError = 4,             // the OS refused a read/write/open
  kTimedOut = 5,            // a deadline passed (collective, heartbeat, connect)
  kAborted = 6,             // the operation was cancelled or its group was torn down
  kUnavailable = 7,         // a peer or service cannot be reached; retrying may help
  kFailedPrecondition = 8,  // the system is not in a state where this can run
  kInternal = 9,            // an invariant broke inside a dependency
  kResourceExhausted = 10,  // a disk, memory or count limit was reached; freeing it and retrying helps
};

std::string_view StatusCodeName(StatusCode code);

class [[nodiscard]] Status {
 public:
  Status() = default;
  Status(StatusCode code, std::string message);

  static Status OK() { return Status(); }

  bool ok() const { return code_ == StatusCode::kOk; }
  StatusCode code() const { return code_; }
  const std::string& message() const { return message_; }

  // "TimedOut: allreduce #12 on group dp ..." or "OK".
  std::string ToString() const;

  // Returns a copy whose message is "context: message". No-op on OK.
  Status WithContext(std::string_view context) const;

  void IgnoreError() const {}

  bool operator==(const Status& o) const { return code_ == o.code_ && message_ == o.message_; }
  bool operator!=(const Status& o) const { return !(*this == o); }

 private:
  StatusCode code_ = StatusCode::kOk;
  std::string message_;
};

Status InvalidArgumentError(std::string message);
Status NotFoundError(std::string message);
Status CorruptionError(std::string message);
Status IOError(std::string message);
Status TimedOutError(std::string message);
Status AbortedError(std::string message);
Status UnavailableError(std::string message);
Status FailedPreconditionError(std::string message);
Status InternalError(std::string message);
Status ResourceExhaustedError(std::string message);

// IOError for a failed syscall: "<what> '<path>': <strerror(errno_value)>".
Status ErrnoError(std::string_view what, std::string_view path, int errno_value);

// StatusOr<T> holds either a value or a non-OK Status.
template <typename T>
class [[nodiscard]] StatusOr {
 public:
  StatusOr(const Status& status) : rep_(status) { CheckNotOk(); }  // NOLINT: implicit
  StatusOr(Status&& status) : rep_(std::move(status)) { CheckNotOk(); }  // NOLINT
  StatusOr(const T& value) : rep_(value) {}  // NOLINT: implicit by design
  StatusOr(T&& value) : rep_(std::move(value)) {}  // NOLINT
  template <typename U,
            typename = std::enable_if_t<std::is_constructible_v<T, U&&> &&
                                        !std::is_same_v<std::decay_t<U>, Status> &&
                                        !std::is_same_v<std::decay_t<U>, StatusOr<T>> &&
                                        !std::is_same_v<std::decay_t<U>, T>>>
  StatusOr(U&& value) : rep_(T(std::forward<U>(value))) {}  // NOLINT

  bool ok() const { return std::holds_alternative<T>(rep_); }
  Status status() const { return ok() ? Status::OK() : std::get<Status>(rep_); }

  // Precondition: ok(). Calling these on an error is a bug and aborts with the status.
  const T& value() const& { CheckOk(); return std::get<T>(rep_); }
  T& value() & { CheckOk(); return std::get<T>(rep_); }
  T&& value() && { CheckOk(); return std::get<T>(std::move(rep_)); }
  const T& operator*() const& { return value(); }
  T& operator*() & { return value(); }
  T&& operator*() && { return std::move(*this).value(); }
  const T* operator->() const { return &value(); }
  T* operator->() { return &value(); }

 private:
  void CheckNotOk() const;
  void CheckOk() const;
  std::variant<Status, T> rep_;
};

namespace internal {
[[noreturn]] void DieBecauseStatusOrHasNoValue(const Status& s);
[[noreturn]] void DieBecauseStatusOrGotOk();
}  // namespace internal

template <typename T>
void StatusOr<T>::CheckNotOk() const {
  if (std::get<Status>(rep_).ok()) internal::DieBecauseStatusOrGotOk();
}
template <typename T>
void StatusOr<T>::CheckOk() const {
  if (!ok()) internal::DieBecauseStatusOrHasNoValue(std::get<Status>(rep_));
}

inline const Status& GetStatus(const Status& s) { return s; }
template <typename T>
Status GetStatus(const StatusOr<T>& s) { return s.status(); }

}  // namespace vlorch

#define VLORCH_CONCAT_INNER_(a, b) a##b
#define VLORCH_CONCAT_(a, b) VLORCH_CONCAT_INNER_(a, b)

// Returns from the enclosing function if `expr` (a Status or StatusOr) is not OK.
#define RETURN_IF_ERROR(expr)                                             \
  do {                                                                    \
    ::vlorch::Status vlorch_status_ = ::vlorch::GetStatus(expr);          \
    if (!vlorch_status_.ok()) return vlorch_status_;                      \
  } while (0)

// Like RETURN_IF_ERROR, prefixing the error message with `context`.
#define RETURN_IF_ERROR_CTX(expr, context)                                \
  do {                                                                    \
    ::vlorch::Status vlorch_status_ = ::vlorch::GetStatus(expr);          \
    if (!vlorch_status_.ok()) return vlorch_status_.WithContext(context); \
  } while (0)

// ASSIGN_OR_RETURN(auto x, MakeX()); declares/assigns x or returns the error.
#define ASSIGN_OR_RETURN(lhs, rexpr) \
  ASSIGN_OR_RETURN_IMPL_(VLORCH_CONCAT_(vlorch_statusor_, __LINE__), lhs, rexpr)
#define ASSIGN_OR_RETURN_IMPL_(tmp, lhs, rexpr) \
  auto tmp = (rexpr);                           \
  if (!tmp.ok()) return tmp.status();           \
  lhs = std::move(tmp).value()
