#include "dataflow/gpt2_bpe.h"

#include <unicode/uchar.h>

#include <array>
#include <climits>
#include <fstream>
#include <sstream>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

namespace vlorch::dataflow {
namespace {

// A decoded code point and where its bytes are.
struct Cp {
  int32_t c;  // -1 for an invalid byte
  size_t begin, end;
};

std::vector<Cp> DecodeUtf8(std::string_view s) {
  std::vector<Cp> out;
  size_t i = 0;
  while (i < s.size()) {
    uint8_t b = static_cast<uint8_t>(s[i]);
    int len = b < 0x80 ? 1 : (b & 0xe0) == 0xc0 ? 2 : (b & 0xf0) == 0xe0 ? 3 : (b & 0xf8) == 0xf0 ? 4 : 0;
    int32_t c = len == 1 ? b : len == 2 ? (b & 0x1f) : len == 3 ? (b & 0x0f) : (b & 0x07);
    bool ok = len > 0 && i + len <= s.size();
    for (int k = 1; ok && k < len; ++k) {
      uint8_t cc = static_cast<uint8_t>(s[i + k]);
      if ((cc & 0xc0) != 0x80) ok = false;
      c = (c << 6) | (cc & 0x3f);
    }
    if (!ok) {
      out.push_back({-1, i, i + 1});
      ++i;
    } else {
      out.push_back({c, i, i + len});
      i += len;
    }
  }
  return out;
}

// Unicode White_Space, the set Python's `regex` matches with \s.
bool IsSpace(int32_t c) {
  switch (c) {
    case 0x09: case 0x0a: case 0x0b: case 0x0c: case 0x0d: case 0x20: case 0x85: case 0xa0: case 0x1680:
    case 0x2028: case 0x2029: case 0x202f: case 0x205f: case 0x3000:
      return true;
    default:
      return c >= 0x2000 && c <= 0x200a;
  }
}

bool IsLetter(int32_t c) {
  if (c < 0) return false;
  int8_t t = u_charType(c);
  return t == U_UPPERCASE_LETTER || t == U_LOWERCASE_LETTER || t == U_TITLECASE_LETTER || t == U_MODIFIER_LETTER ||
         t == U_OTHER_LETTER;
}

bool IsNumber(int32_t c) {
  if (c < 0) return false;
  int8_t t = u_charType(c);
  return t == U_DECIMAL_DIGIT_NUMBER || t == U_LETTER_NUMBER || t == U_OTHER_NUMBER;
}

bool IsOther(int32_t c) { return !IsSpace(c) && !IsLetter(c) && !IsNumber(c); }

// GPT-2's bytes_to_unicode: printable bytes map to themselves, the rest to 256 + n.
const std::array<std::string, 256>& ByteToUnicode() {
  static const std::array<std::string, 256> table = [] {
    std::array<std::string, 256> t;
    int n = 0;
    for (int b = 0; b < 256; ++b) {
      bool keep = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
      int32_t cp = keep ? b : 256 + n++;
      std::string s;
      if (cp < 0x80) {
        s.push_back(static_cast<char>(cp));
      } else {
        s.push_back(static_cast<char>(0xc0 | (cp >> 6)));
        s.push_back(static_cast<char>(0x80 | (cp & 0x3f)));
      }
      t[b] = s;
    }
    return t;
  }();
  return table;
}

}  // namespace

std::vector<std::string> Gpt2PreTokenize(std::string_view text) {
  std::vector<Cp> cps = DecodeUtf8(text);
  std::vector<std::string> out;
  const size_t n = cps.size();
  auto piece = [&](size_t from, size_t to) {  // code point range [from, to)
    out.emplace_back(text.substr(cps[from].begin, cps[to - 1].end - cps[from].begin));
  };
  size_t i = 0;
  while (i < n) {
    const int32_t c = cps[i].c;
    // 's|'t|'re|'ve|'m|'ll|'d
    if (c == '\'' && i + 1 < n) {
      auto at = [&](size_t k, char ch) { return i + k < n && cps[i + k].c == ch; };
      size_t len = 0;
      if (at(1, 's') || at(1, 't') || at(1, 'm') || at(1, 'd')) len = 2;
      else if ((at(1, 'r') && at(2, 'e')) || (at(1, 'v') && at(2, 'e')) || (at(1, 'l') && at(2, 'l'))) len = 3;
      if (len) {
        piece(i, i + len);
        i += len;
        continue;
      }
    }
    // ` ?X+` for X in {letters, numbers, others}: an optional single space, then a run.
    const size_t start = (c == ' ' && i + 1 < n) ? i + 1 : i;
    bool (*classes[])(int32_t) = {IsLetter, IsNumber, IsOther};
    bool matched = false;
    for (auto cls : classes) {
      if (cls(cps[start].c) && (start == i || c == ' ')) {
        size_t j = start;
        while (j < n && cls(cps[j].c)) ++j;
        piece(i, j);
        i = j;
        matched = true;
        break;
      }
    }
    if (matched) continue;
    // \s+(?!\S) | \s+ : a whitespace run, leaving its last character to the next piece when
    // a non-space follows (so " word" keeps its space), unless the run is one character.
    size_t j = i;
    while (j < n && IsSpace(cps[j].c)) ++j;
    if (j == i) {  // cannot happen: every character is space, letter, number or other
      piece(i, i + 1);
      ++i;
      continue;
    }
    if (j < n && j - i >= 2) --j;
    piece(i, j);
    i = j;
  }
  return out;
}

StatusOr<std::unique_ptr<Gpt2BpeTokenizer>> Gpt2BpeTokenizer::Load(const std::string& vocab_json,
                                                                  const std::string& merges_txt) {
  auto tok = std::unique_ptr<Gpt2BpeTokenizer>(new Gpt2BpeTokenizer());
  std::ifstream vf(vocab_json);
  if (!vf) return NotFoundError(fmt::format("cannot open vocabulary '{}'", vocab_json));
  try {
    auto j = nlohmann::json::parse(vf);
    if (!j.is_object()) return InvalidArgumentError(fmt::format("'{}' is not a JSON object of token -> id", vocab_json));
    for (auto it = j.begin(); it != j.end(); ++it) {
      if (!it.value().is_number_integer() || it.value().get<int64_t>() < 0 || it.value().get<int64_t>() > INT32_MAX)
        return InvalidArgumentError(fmt::format("'{}': token '{}' has no valid id", vocab_json, it.key()));
      int32_t id = it.value().get<int32_t>();
      tok->vocab_[it.key()] = id;
      if (tok->id_to_token_.size() <= static_cast<size_t>(id)) tok->id_to_token_.resize(id + 1);
      tok->id_to_token_[id] = it.key();
    }
  } catch (const nlohmann::json::exception& e) {
    return InvalidArgumentError(fmt::format("'{}' is not valid JSON: {}", vocab_json, e.what()));
  }
  std::ifstream mf(merges_txt);
  if (!mf) return NotFoundError(fmt::format("cannot open merges '{}'", merges_txt));
  std::string line;
  int line_no = 0, rank = 0;
  while (std::getline(mf, line)) {
    ++line_no;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.empty() || (line_no == 1 && line.rfind("#version", 0) == 0)) continue;
    size_t sp = line.find(' ');
    if (sp == std::string::npos || sp == 0 || sp + 1 >= line.size() || line.find(' ', sp + 1) != std::string::npos)
      return InvalidArgumentError(fmt::format("'{}' line {}: expected two symbols separated by one space", merges_txt, line_no));
    std::string a = line.substr(0, sp), b = line.substr(sp + 1);
    if (!tok->vocab_.count(a + b))
      return InvalidArgumentError(fmt::format("'{}' line {}: merge result '{}' is not in the vocabulary", merges_txt,
                                              line_no, a + b));
    tok->ranks_.emplace(std::make_pair(a, b), rank++);
  }
  for (const std::string& s : ByteToUnicode()) {
    if (!tok->vocab_.count(s))
      return InvalidArgumentError(fmt::format("'{}' lacks the byte symbol '{}' every GPT-2 vocabulary has", vocab_json, s));
  }
  return tok;
}

std::vector<std::string> Gpt2BpeTokenizer::Bpe(const std::string& mapped) const {
  // Split into symbols (code points of the mapped text).
  std::vector<std::string> word;
  for (const Cp& cp : DecodeUtf8(mapped)) word.emplace_back(mapped.substr(cp.begin, cp.end - cp.begin));
  while (word.size() > 1) {
    int best = INT_MAX;
    std::pair<std::string, std::string> bigram;
    for (size_t k = 0; k + 1 < word.size(); ++k) {
      auto it = ranks_.find({word[k], word[k + 1]});
      if (it != ranks_.end() && it->second < best) {
        best = it->second;
        bigram = it->first;
      }
    }
    if (best == INT_MAX) break;
    std::vector<std::string> merged;
    for (size_t k = 0; k < word.size();) {
      if (k + 1 < word.size() && word[k] == bigram.first && word[k + 1] == bigram.second) {
        merged.push_back(word[k] + word[k + 1]);
        k += 2;
      } else {
        merged.push_back(word[k]);
        ++k;
      }
    }
    word = std::move(merged);
  }
  return word;
}

std::vector<int32_t> Gpt2BpeTokenizer::Encode(std::string_view text) const {
  std::vector<int32_t> ids;
  const auto& table = ByteToUnicode();
  std::unordered_map<std::string, std::vector<int32_t>> cache;
  for (const std::string& piece : Gpt2PreTokenize(text)) {
    auto hit = cache.find(piece);
    if (hit == cache.end()) {
      std::string mapped;
      for (unsigned char b : piece) mapped += table[b];
      std::vector<int32_t> out;
      for (const std::string& sym : Bpe(mapped)) out.push_back(vocab_.at(sym));  // Load checked bytes + merges
      hit = cache.emplace(piece, std::move(out)).first;
    }
    ids.insert(ids.end(), hit->second.begin(), hit->second.end());
  }
  return ids;
}

std::string Gpt2BpeTokenizer::Decode(const std::vector<int32_t>& ids) const {
  static const std::unordered_map<std::string, unsigned char> inverse = [] {
    std::unordered_map<std::string, unsigned char> m;
    const auto& t = ByteToUnicode();
    for (int b = 0; b < 256; ++b) m[t[b]] = static_cast<unsigned char>(b);
    return m;
  }();
  std::string out;
  for (int32_t id : ids) {
    if (id < 0 || static_cast<size_t>(id) >= id_to_token_.size()) continue;
    const std::string& tok = id_to_token_[id];
    for (const Cp& cp : DecodeUtf8(tok)) {
      auto it = inverse.find(tok.substr(cp.begin, cp.end - cp.begin));
      if (it != inverse.end()) out.push_back(static_cast<char>(it->second));
    }
  }
  return out;
}

}  // namespace vlorch::dataflow
