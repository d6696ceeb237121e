// The tokenizer a stage's data names, with the special ids its LLM family uses.
#pragma once

#include <cstdint>
#include <memory>

#include "common/status.h"
#include "dataflow/tokenizer.h"
#include "jobs/job_spec.h"

namespace vlorch::train {

struct Tokenization {
  std::unique_ptr<dataflow::Tokenizer> tokenizer;
  int32_t pad = 0, bos = -1, eos = -1;
};

// byte: pad/bos/eos 0/1/2; gpt2: OPT's <pad> 1 and </s> 2; sentencepiece: LLaMA's 0/1/2.
// InvalidArgument when the model's vocabulary is smaller than the byte tokenizer's; the
// tokenizer's own errors (missing or malformed files) otherwise.
StatusOr<Tokenization> MakeTokenizer(const JobSpec& job, const DataSpec& data, const ModelConfig& model);

// True when two data specs name the same tokenizer (kind and resolved files).
bool SameTokenizer(const JobSpec& job, const DataSpec& a, const DataSpec& b);

}  // namespace vlorch::train
