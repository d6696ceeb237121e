// GPT-2 byte-level BPE against an independent implementation: GPT-2's published
// encoder.py algorithm in Python with the `regex` module (tests/dataflow/gpt2_reference.py),
// on a vocabulary and merges it trains, for ASCII, Unicode and whitespace edge cases.
#include "dataflow/gpt2_bpe.h"

#include <unistd.h>

#include <cstdio>
#include <fstream>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

namespace vlorch::dataflow {
namespace {

const std::vector<std::string> kTexts = {
    "Hello world",
    "the quick brown fox jumps over the lazy dog.",
    "The dog's owner said it's fine, they'll see; we've I'm you're I'd",
    "'s at the start, and 'll", " leading space", "trailing space ", "trailing spaces   ",
    "two  spaces and   three", "tabs\there\tand\nnew\nlines\n\n", "\n", "   ", "",
    "numbers 3.14159 1,000,000 and 2023-11-23", "a1b2c3 ab12cd",
    "Les élèves étudient à l'école; café naïve Ångström",
    "Привет мир", "中文的句子和图片。", "emoji 😀🚀 and a rocket", "mixed 中文and English123",
    "non-breaking\u00a0space and ideographic\u3000space", "combining e\u0301 accent", "punctuation!!! ??? ...",
    "symbols @#$%^&*() <image> [IMG] ###Human: <Img><ImageHere></Img>",
};

struct Reference {
  std::string dir;
  nlohmann::json results;
  bool skipped = false;
};

const Reference& Ref() {
  static Reference ref = [] {
    Reference r;
    if (std::system("/usr/bin/python3 -c 'import regex' 2>/dev/null") != 0) {
      r.skipped = true;
      return r;
    }
    r.dir = ::testing::TempDir() + "/gpt2ref_" + std::to_string(getpid());
    EXPECT_EQ(std::system(("mkdir -p " + r.dir).c_str()), 0);
    std::ofstream(r.dir + "/in.json") << nlohmann::json(kTexts).dump();
    std::string cmd = "/usr/bin/python3 " VLORCH_TEST_SRC "/gpt2_reference.py " + r.dir + " < " + r.dir +
                      "/in.json > " + r.dir + "/out.json";
    EXPECT_EQ(std::system(cmd.c_str()), 0) << cmd;
    std::ifstream in(r.dir + "/out.json");
    r.results = nlohmann::json::parse(in);
    return r;
  }();
  return ref;
}

TEST(Gpt2BpeTest, PreTokenizationMatchesTheRegexModule) {
  const Reference& r = Ref();
  if (r.skipped) GTEST_SKIP() << "/usr/bin/python3 lacks the regex module (python3-regex)";
  for (size_t i = 0; i < kTexts.size(); ++i) {
    auto want = r.results[i]["pieces"].get<std::vector<std::string>>();
    EXPECT_EQ(Gpt2PreTokenize(kTexts[i]), want) << "text " << i << ": '" << kTexts[i] << "'";
  }
}

TEST(Gpt2BpeTest, IdsMatchTheReferenceAndDecodeRoundTrips) {
  const Reference& r = Ref();
  if (r.skipped) GTEST_SKIP() << "/usr/bin/python3 lacks the regex module (python3-regex)";
  auto tok = Gpt2BpeTokenizer::Load(r.dir + "/vocab.json", r.dir + "/merges.txt");
  ASSERT_TRUE(tok.ok()) << tok.status().ToString();
  EXPECT_GT((*tok)->vocab_size(), 256u + 200u);
  size_t merged = 0;
  for (size_t i = 0; i < kTexts.size(); ++i) {
    auto want = r.results[i]["ids"].get<std::vector<int32_t>>();
    auto got = (*tok)->Encode(kTexts[i]);
    EXPECT_EQ(got, want) << "text " << i << ": '" << kTexts[i] << "'";
    EXPECT_EQ((*tok)->Decode(got), kTexts[i]);
    for (int32_t id : got) merged += id >= 256;
  }
  EXPECT_GT(merged, 50u) << "the test must exercise merges, not only byte symbols";
}

// Hand-worked: with merges "h e", "l l", "he ll", "Ġ w" the text "hello world" becomes
// he|ll -> hell, o ; Ġw, o, r, l, d.
TEST(Gpt2BpeTest, HandWorkedMerges) {
  std::string dir = ::testing::TempDir() + "/gpt2hand_" + std::to_string(getpid());
  ASSERT_EQ(std::system(("mkdir -p " + dir).c_str()), 0);
  nlohmann::json vocab = nlohmann::json::object();
  // The 256 byte symbols in GPT-2's table order get ids 0..255.
  std::vector<int> bs;
  for (int b = 33; b <= 126; ++b) bs.push_back(b);
  for (int b = 161; b <= 172; ++b) bs.push_back(b);
  for (int b = 174; b <= 255; ++b) bs.push_back(b);
  std::vector<std::pair<int, int>> table;
  int n = 0;
  for (int b : bs) table.push_back({b, b});
  for (int b = 0; b < 256; ++b)
    if (std::find(bs.begin(), bs.end(), b) == bs.end()) table.push_back({b, 256 + n++});
  for (size_t i = 0; i < table.size(); ++i) {
    int cp = table[i].second;
    std::string s;
    if (cp < 0x80) s.push_back(static_cast<char>(cp));
    else {
      s.push_back(static_cast<char>(0xc0 | (cp >> 6)));
      s.push_back(static_cast<char>(0x80 | (cp & 0x3f)));
    }
    vocab[s] = static_cast<int>(i);
  }
  vocab["he"] = 256;
  vocab["ll"] = 257;
  vocab["hell"] = 258;
  vocab["\xc4\xa0w"] = 259;  // "Ġw": space maps to U+0120
  std::ofstream(dir + "/vocab.json") << vocab.dump();
  std::ofstream(dir + "/merges.txt") << "#version: 0.2\nh e\nl l\nhe ll\n\xc4\xa0 w\n";
  auto tok = Gpt2BpeTokenizer::Load(dir + "/vocab.json", dir + "/merges.txt");
  ASSERT_TRUE(tok.ok()) << tok.status().ToString();
  auto id = [&](const std::string& s) { return vocab[s].get<int32_t>(); };
  EXPECT_EQ((*tok)->Encode("hello world"),
            (std::vector<int32_t>{258, id("o"), 259, id("o"), id("r"), id("l"), id("d")}));
  // Bad files name the problem.
  std::ofstream(dir + "/bad_merges.txt") << "#version: 0.2\nh e\nx y z\n";
  auto bad = Gpt2BpeTokenizer::Load(dir + "/vocab.json", dir + "/bad_merges.txt");
  EXPECT_EQ(bad.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("line 3"), std::string::npos) << bad.status().message();
  std::ofstream(dir + "/missing_merges.txt") << "q z\n";
  bad = Gpt2BpeTokenizer::Load(dir + "/vocab.json", dir + "/missing_merges.txt");
  EXPECT_NE(bad.status().message().find("'qz' is not in the vocabulary"), std::string::npos) << bad.status().message();
  EXPECT_EQ(Gpt2BpeTokenizer::Load(dir + "/nope.json", dir + "/merges.txt").status().code(), StatusCode::kNotFound);
}

}  // namespace
}  // namespace vlorch::dataflow
