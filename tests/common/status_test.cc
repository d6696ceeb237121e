#include "common/status.h"

#include <gtest/gtest.h>

namespace vlorch {
namespace {

Status FailIf(bool fail) { return fail ? NotFoundError("no such shard 7") : Status::OK(); }

Status Chain(bool fail) {
  RETURN_IF_ERROR_CTX(FailIf(fail), "opening store");
  return InternalError("reached the end");
}

StatusOr<int> Half(int x) {
  if (x % 2) return InvalidArgumentError("odd: " + std::to_string(x));
  return x / 2;
}

StatusOr<int> Quarter(int x) {
  ASSIGN_OR_RETURN(int h, Half(x));
  ASSIGN_OR_RETURN(int q, Half(h));
  return q;
}

TEST(StatusTest, OkHasNoMessage) {
  Status s(StatusCode::kOk, "ignored");
  EXPECT_TRUE(s.ok());
  EXPECT_EQ(s.message(), "");
  EXPECT_EQ(s.ToString(), "OK");
}

TEST(StatusTest, ToStringNamesTheCode) {
  EXPECT_EQ(TimedOutError("allreduce #3").ToString(), "TimedOut: allreduce #3");
  EXPECT_EQ(CorruptionError("x").code(), StatusCode::kCorruption);
  EXPECT_EQ(StatusCodeName(StatusCode::kFailedPrecondition), "FailedPrecondition");
}

TEST(StatusTest, ReturnIfErrorPropagatesWithContext) {
  Status s = Chain(true);
  EXPECT_EQ(s.code(), StatusCode::kNotFound);
  EXPECT_EQ(s.message(), "opening store: no such shard 7");
  EXPECT_EQ(Chain(false).code(), StatusCode::kInternal);
}

TEST(StatusTest, AssignOrReturn) {
  EXPECT_EQ(*Quarter(12), 3);
  StatusOr<int> bad = Quarter(6);  // 6 -> 3 -> odd
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().message(), "odd: 3");
}

TEST(StatusTest, ErrnoErrorNamesPathAndReason) {
  Status s = ErrnoError("cannot open", "/x/y", ENOENT);
  EXPECT_EQ(s.code(), StatusCode::kIOError);
  EXPECT_EQ(s.message(), "cannot open '/x/y': No such file or directory");
}

TEST(StatusDeathTest, ValueOfErrorAborts) {
  StatusOr<int> bad = InvalidArgumentError("nope");
  EXPECT_DEATH((void)bad.value(), "nope");
}

}  // namespace
}  // namespace vlorch
