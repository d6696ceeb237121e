// A tokenizer for tests whose ids are easy to write by hand: id = byte + 10.
#pragma once

#include "dataflow/tokenizer.h"

namespace vlorch::dataflow::testing {

class ByteTokenizer : public Tokenizer {
 public:
  std::vector<int32_t> EncodeText(std::string_view text) const override {
    std::vector<int32_t> out;
    for (unsigned char c : text) out.push_back(c + 10);
    return out;
  }
};

}  // namespace vlorch::dataflow::testing
