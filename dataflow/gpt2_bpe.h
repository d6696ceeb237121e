// GPT-2 byte-level BPE, as OPT and GPT-2 ship it (vocab.json + merges.txt).
//
//  1. Pre-tokenise with GPT-2's pattern
//       's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
//     implemented as a hand-written scanner over code points (no regex engine): \p{L} and
//     \p{N} from ICU's general categories, \s = Unicode White_Space (what Python's `regex`
//     module, which the pattern was written for, matches).
//  2. Map each piece's UTF-8 bytes to printable characters with GPT-2's byte-to-unicode table.
//  3. Merge adjacent symbols by rank (lowest rank first, all occurrences of a pair at once,
//     left to right), as GPT-2's encoder.py does.
//  4. Look the symbols up in vocab.json.
// Thread-safe after Load (the merge cache is per call).
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "common/status.h"
#include "dataflow/tokenizer.h"

namespace vlorch::dataflow {

// GPT-2's pre-tokenisation of UTF-8 text (invalid bytes count as "other" characters).
std::vector<std::string> Gpt2PreTokenize(std::string_view text);

class Gpt2BpeTokenizer : public Tokenizer {
 public:
  // Errors name the file and line/field: unreadable files, malformed JSON, a merges line that
  // is not two symbols, a merge whose result is missing from the vocabulary.
  static StatusOr<std::unique_ptr<Gpt2BpeTokenizer>> Load(const std::string& vocab_json,
                                                          const std::string& merges_txt);
  std::vector<int32_t> Encode(std::string_view text) const;
  std::vector<int32_t> EncodeText(std::string_view text) const override { return Encode(text); }
  // Inverse of Encode for valid ids; unknown ids are skipped.
  std::string Decode(const std::vector<int32_t>& ids) const;
  size_t vocab_size() const { return vocab_.size(); }

 private:
  std::vector<std::string> Bpe(const std::string& mapped) const;  // mapped = byte-to-unicode text
  std::unordered_map<std::string, int32_t> vocab_;
  std::vector<std::string> id_to_token_;
  std::map<std::pair<std::string, std::string>, int> ranks_;
};

}  // namespace vlorch::dataflow
