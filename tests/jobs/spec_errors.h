// Shared by the job spec tests: edit a good spec one way and check the error it gets.
#pragma once

#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "jobs/job_spec.h"

namespace vlorch::testing_util {

struct BadCase {
  std::string from, to, expect;  // replace `from` by `to`; the error must contain `expect`
};

// Every case must fail with InvalidArgument whose message starts with "job.yaml:" (file, then
// line and column where yaml-cpp has a mark) and contains `expect`.
inline void ExpectSpecErrors(const std::string& good, const std::vector<BadCase>& cases) {
  for (const auto& c : cases) {
    std::string text = good;
    const size_t at = text.find(c.from);
    ASSERT_NE(at, std::string::npos) << c.from;
    text.replace(at, c.from.size(), c.to);
    auto spec = ParseJobSpec(text, "job.yaml", "/jobs");
    ASSERT_FALSE(spec.ok()) << "accepted: " << c.to;
    EXPECT_EQ(spec.status().code(), StatusCode::kInvalidArgument);
    EXPECT_NE(spec.status().message().find(c.expect), std::string::npos)
        << "replacing '" << c.from << "': " << spec.status().message();
    EXPECT_EQ(spec.status().message().rfind("job.yaml:", 0), 0u) << spec.status().message();
  }
}

}  // namespace vlorch::testing_util
