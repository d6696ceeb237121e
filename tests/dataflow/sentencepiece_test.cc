// SentencePiece wrapper: a BPE model with byte fallback (as LLaMA's tokenizer.model) trained
// by Debian's python3-sentencepiece (not linked here: this binary has LibTorch, see
// dataflow/spm_shim/spm_shim.cc), ids compared with the same Python package.
#include "dataflow/sentencepiece_tokenizer.h"

#include <unistd.h>

#include <fstream>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

namespace vlorch::dataflow {
namespace {

const std::vector<std::string> kTexts = {
    "Hello world", "the quick brown fox jumps over the lazy dog.", "  leading and trailing  ",
    "numbers 3.14159 and 2023", "Les élèves à l'école", "中文的句子", "emoji 😀 rocket 🚀",
    "tabs\tand\nnewlines", "", "###Human: <Img><ImageHere></Img> describe###Assistant: ",
};

bool HavePythonSpm() { return std::system("/usr/bin/python3 -c 'import sentencepiece' 2>/dev/null") == 0; }

std::string TrainModel() {
  static std::string model = [] {
    std::string dir = ::testing::TempDir() + "/spm_" + std::to_string(getpid());
    EXPECT_EQ(std::system(("mkdir -p " + dir).c_str()), 0);
    std::ofstream corpus(dir + "/corpus.txt");
    for (int i = 0; i < 200; ++i)
      corpus << "the quick brown fox jumps over the lazy dog number " << i << "\n"
             << "a photo of a red car near the river with people walking\n"
             << "Les élèves étudient à l'école et au café\n";
    corpus.close();
    std::string cmd = "/usr/bin/python3 -c \"import sentencepiece as s; s.SentencePieceTrainer.train(input='" + dir +
                      "/corpus.txt', model_prefix='" + dir +
                      "/tok', vocab_size=400, model_type='bpe', byte_fallback=True, character_coverage=1.0, "
                      "bos_id=1, eos_id=2, unk_id=0, minloglevel=2)\" > /dev/null 2>&1";
    EXPECT_EQ(std::system(cmd.c_str()), 0) << cmd;
    return dir + "/tok.model";
  }();
  return model;
}

TEST(SentencePieceTest, MatchesPythonSentencePiece) {
  if (!HavePythonSpm()) GTEST_SKIP() << "/usr/bin/python3 lacks sentencepiece (python3-sentencepiece)";
  std::string model = TrainModel();
  auto tok = SentencePieceTokenizer::Load(model);
  ASSERT_TRUE(tok.ok()) << tok.status().ToString();
  std::string dir = model.substr(0, model.rfind('/'));
  std::ofstream(dir + "/in.json") << nlohmann::json(kTexts).dump();
  std::string cmd = "/usr/bin/python3 -c \"import json,sys,sentencepiece as s; p=s.SentencePieceProcessor(model_file='" +
                    model + "'); print(json.dumps([p.encode(t) for t in json.load(open('" + dir +
                    "/in.json'))]))\" > " + dir + "/out.json";
  ASSERT_EQ(std::system(cmd.c_str()), 0);
  auto want = nlohmann::json::parse(std::ifstream(dir + "/out.json"));
  for (size_t i = 0; i < kTexts.size(); ++i) {
    auto got = (*tok)->Encode(kTexts[i]);
    EXPECT_EQ(got, want[i].get<std::vector<int32_t>>()) << "'" << kTexts[i] << "'";
  }
  // Byte fallback: characters never seen in training still encode (as byte pieces) and
  // decode back.
  auto ids = (*tok)->Encode("中文 😀");
  EXPECT_EQ((*tok)->Decode(ids), "中文 😀");
}

TEST(SentencePieceTest, BosAndErrors) {
  if (!HavePythonSpm()) GTEST_SKIP() << "/usr/bin/python3 lacks sentencepiece (python3-sentencepiece)";
  auto tok = SentencePieceTokenizer::Load(TrainModel());
  ASSERT_TRUE(tok.ok());
  EXPECT_EQ((*tok)->bos_id(), 1);
  EXPECT_EQ((*tok)->eos_id(), 2);
  EXPECT_EQ((*tok)->vocab_size(), 400);
  auto plain = (*tok)->Encode("the dog");
  auto with_bos = (*tok)->Encode("the dog", /*add_bos=*/true);
  ASSERT_EQ(with_bos.size(), plain.size() + 1);
  EXPECT_EQ(with_bos[0], 1);
  EXPECT_EQ(SentencePieceTokenizer::Load("/nonexistent/tokenizer.model").status().code(), StatusCode::kNotFound);
  std::string junk = ::testing::TempDir() + "/junk_" + std::to_string(getpid()) + ".model";
  std::ofstream(junk) << "not a model";
  auto bad = SentencePieceTokenizer::Load(junk);
  EXPECT_EQ(bad.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("is not a SentencePiece model"), std::string::npos);
}

}  // namespace
}  // namespace vlorch::dataflow
