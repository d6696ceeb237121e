// transfer_vpg: VPGTrans (Zhang et al., 2023) as a resumable stage.
//
// From the source stage's sealed checkpoint the target model takes the vision encoder and the
// VPG (query_tokens, qformer.*) unchanged. A linear word-embedding converter g fitted from the
// source LLM's input embeddings to the target LLM's (loss 1 - cos, Adam) is fused with the
// source projector's last linear layer, so the target projector starts as g . P_src:
//
//   W = W_g W_src,   b = W_g b_src + b_g
//
// (mlp and two_linear projectors keep their first layer and fuse the last.) The target LLM
// comes from the stage's `init.weights`; everything else from the target model's seeded init.
//
// Distributed: every rank holds the pairs; each optimisation step's batch of pairs is split
// over the ranks, gradients are summed with one all-reduce, and all ranks apply the same
// update. Rank 0 checkpoints the converter (with Adam's state) every `checkpoint_every` steps
// under <stage>/converter/, so a killed transform re-run resumes from there and ends with the
// same bytes; the result is committed as <stage>/checkpoints/step-N and the stage sealed.
#pragma once

#include <map>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

#include "common/status.h"
#include "dataflow/tokenizer.h"
#include "jobs/job_spec.h"
#include "worker/comm/device_mesh.h"
#include "worker/train/stage_runner.h"

namespace vlorch::transforms {

// Source-to-target token pairs the converter is fitted on (sorted, unique).
struct TokenPairs {
  std::vector<int64_t> source, target;
  std::string mode;           // "shared_ids" or "captions"
  int64_t captions_read = 0;  // captions mode
  int64_t captions_used = 0;  // those both tokenizers split into the same number of tokens
};

// (i, i) for every id both vocabularies have.
TokenPairs SharedIdPairs(int64_t source_vocab, int64_t target_vocab);

// Tokens at the same position of every caption that both tokenizers split into the same
// number of tokens.
TokenPairs CaptionPairs(const dataflow::Tokenizer& source, const dataflow::Tokenizer& target,
                        const std::vector<std::string>& captions);

// The target projector's tensors (by name) from the source projector's and the converter
// (wg [target_hidden, source_hidden], bg [target_hidden]). InvalidArgument naming a missing
// or mis-shaped tensor.
StatusOr<std::map<std::string, at::Tensor>> FuseProjector(ProjectorKind kind,
                                                          const std::map<std::string, at::Tensor>& source,
                                                          const at::Tensor& wg, const at::Tensor& bg);

// The input-embedding tensor's name for an LLM family.
std::string EmbeddingName(const LlmConfig& llm);

StatusOr<train::StageResult> RunTransferVpg(const JobSpec& job, const StageSpec& stage, comm::DeviceMesh& mesh,
                                            const train::StageRunOptions& options);

}  // namespace vlorch::transforms
