#include "common/logging.h"

#include <gtest/gtest.h>

namespace vlorch {
namespace {

TEST(LoggingTest, LinesCarryRankAndHost) {
  LogOptions o;
  o.rank = 3;
  o.host = "node07";
  InitLogging(o);
  ::testing::internal::CaptureStderr();
  VLOG_INFO("joined group {} of {}", "dp", 4);
  VLOG_DEBUG("not shown at info level");
  std::string out = ::testing::internal::GetCapturedStderr();
  EXPECT_NE(out.find("r3@node07] joined group dp of 4\n"), std::string::npos) << out;
  EXPECT_EQ(out.rfind("I ", 0), 0u) << out;
  EXPECT_EQ(out.find("not shown"), std::string::npos) << out;
  EXPECT_EQ(RankTag(), "r3@node07");
}

TEST(LoggingDeathTest, CheckAbortsWithFileAndMessage) {
  EXPECT_DEATH({ VLORCH_CHECK(1 + 1 == 3) << "arithmetic broke"; }, "CHECK failed: 1 \\+ 1 == 3 arithmetic broke");
}

}  // namespace
}  // namespace vlorch
