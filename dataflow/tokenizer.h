// The interface templates and the pipeline use, implemented by Gpt2BpeTokenizer and
// SentencePieceTokenizer.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace vlorch::dataflow {

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;
  // Plain ids of `text`: no BOS/EOS (templates add them).
  virtual std::vector<int32_t> EncodeText(std::string_view text) const = 0;
};

}  // namespace vlorch::dataflow
