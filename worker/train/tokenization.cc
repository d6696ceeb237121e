#include "worker/train/tokenization.h"

#include <fmt/format.h>

#include "dataflow/byte_tokenizer.h"
#include "dataflow/gpt2_bpe.h"
#include "dataflow/sentencepiece_tokenizer.h"

namespace vlorch::train {

StatusOr<Tokenization> MakeTokenizer(const JobSpec& job, const DataSpec& data, const ModelConfig& model) {
  Tokenization t;
  const TokenizerSpec& s = data.tokenizer;
  if (s.kind == "byte") {
    t.tokenizer = std::make_unique<dataflow::ByteTokenizer>();
    t.pad = dataflow::ByteTokenizer::kPad, t.bos = dataflow::ByteTokenizer::kBos, t.eos = dataflow::ByteTokenizer::kEos;
    if (model.llm.vocab_size < dataflow::ByteTokenizer::kVocabSize)
      return InvalidArgumentError(fmt::format("{}: llm.vocab_size {} is smaller than the byte tokenizer's {}", job.source,
                                              model.llm.vocab_size, dataflow::ByteTokenizer::kVocabSize));
  } else if (s.kind == "gpt2") {
    ASSIGN_OR_RETURN(auto tok, dataflow::Gpt2BpeTokenizer::Load(job.Resolve(s.vocab), job.Resolve(s.merges)));
    t.tokenizer = std::move(tok);
    t.pad = 1, t.bos = 2, t.eos = 2;  // OPT's ids for <pad> and </s>
  } else {
    ASSIGN_OR_RETURN(auto tok, dataflow::SentencePieceTokenizer::Load(job.Resolve(s.model)));
    t.tokenizer = std::move(tok);
    t.pad = 0, t.bos = 1, t.eos = 2;  // LLaMA's
  }
  return t;
}

StatusOr<dataflow::PromptTemplate> StageTemplate(const DataSpec& data, const ModelConfig& model, const Tokenization& tok) {
  ASSIGN_OR_RETURN(dataflow::PromptTemplate t, dataflow::BuiltinTemplate(data.template_name));
  t.image_tokens = model.visual_tokens();
  t.bos_id = tok.bos;
  t.eos_id = tok.eos;
  t.image_token_id = tok.pad;
  return t;
}

dataflow::PipelineOptions StagePipelineOptions(const JobSpec& job, const DataSpec& data, const ModelConfig& model,
                                               const Tokenization& tok, const dataflow::PromptTemplate& tmpl) {
  dataflow::PipelineOptions po;
  for (const auto& s : data.stores) po.stores.push_back(job.Resolve(s));
  po.weights = data.weights;
  po.seed = job.seed;
  po.shuffle_window = data.shuffle_window;
  po.prompt_template = tmpl;
  po.tokenizer = tok.tokenizer.get();
  po.max_len = data.max_len;
  po.collate.pad_id = tok.pad;
  po.collate.image.size = model.vision.image_size;
  po.workers = data.workers;
  po.prefetch = data.prefetch;
  po.balance_tokens = data.balance_tokens;
  po.balance_group = data.balance_group;
  return po;
}

bool SameTokenizer(const JobSpec& job, const DataSpec& a, const DataSpec& b) {
  const TokenizerSpec &x = a.tokenizer, &y = b.tokenizer;
  return x.kind == y.kind && job.Resolve(x.vocab) == job.Resolve(y.vocab) &&
         job.Resolve(x.merges) == job.Resolve(y.merges) && job.Resolve(x.model) == job.Resolve(y.model);
}

}  // namespace vlorch::train
