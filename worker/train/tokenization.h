// The tokenizer a stage's data names, with the special ids its LLM family uses.
#pragma once

#include <cstdint>
#include <memory>

#include "common/status.h"
#include "dataflow/pipeline.h"
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

// The stage's prompt template with the model's visual-token count and the tokenizer's ids.
StatusOr<dataflow::PromptTemplate> StageTemplate(const DataSpec& data, const ModelConfig& model, const Tokenization& tok);

// Pipeline options for `stores` with everything the data spec, model and tokenizer decide
// (seed, window, template, lengths, padding, image size, threads); the caller sets placement
// (dp, rank, batch size) and the start cursor. `tok` must outlive the pipeline.
dataflow::PipelineOptions StagePipelineOptions(const JobSpec& job, const DataSpec& data, const ModelConfig& model,
                                               const Tokenization& tok, const dataflow::PromptTemplate& tmpl);

// True when two data specs name the same tokenizer (kind and resolved files).
bool SameTokenizer(const JobSpec& job, const DataSpec& a, const DataSpec& b);

}  // namespace vlorch::train
