// SentencePiece tokenizer (LLaMA's `tokenizer.model`) through libsentencepiece.
// Thread-safe after Load (SentencePieceProcessor's encode is const).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"
#include "dataflow/tokenizer.h"

namespace vlorch::dataflow {

class SentencePieceTokenizer : public Tokenizer {
 public:
  // NotFound / InvalidArgument naming the file when it is missing or not a model.
  static StatusOr<std::unique_ptr<SentencePieceTokenizer>> Load(const std::string& model_path);
  ~SentencePieceTokenizer() override;

  // Token ids of `text`; with add_bos the model's BOS id first (LLaMA's convention).
  std::vector<int32_t> Encode(std::string_view text, bool add_bos = false) const;
  std::vector<int32_t> EncodeText(std::string_view text) const override { return Encode(text); }
  std::string Decode(const std::vector<int32_t>& ids) const;
  int32_t vocab_size() const;
  int32_t bos_id() const;  // -1 when the model has none
  int32_t eos_id() const;
  int32_t pad_id() const;

 private:
  SentencePieceTokenizer();
  struct Rep;
  std::unique_ptr<Rep> rep_;
};

}  // namespace vlorch::dataflow
