// The "byte" tokenizer: id = UTF-8 byte + 3, with 0 = pad, 1 = BOS, 2 = EOS (vocabulary 259).
// No files to ship, so tiny models, the demo and tests train on real text with it.
#pragma once

#include "dataflow/tokenizer.h"

namespace vlorch::dataflow {

class ByteTokenizer : public Tokenizer {
 public:
  static constexpr int32_t kPad = 0, kBos = 1, kEos = 2, kOffset = 3, kVocabSize = 256 + kOffset;
  std::vector<int32_t> EncodeText(std::string_view text) const override {
    std::vector<int32_t> out;
    out.reserve(text.size());
    for (unsigned char c : text) out.push_back(c + kOffset);
    return out;
  }
};

}  // namespace vlorch::dataflow
