// Templates with a byte tokenizer (id = byte + 10), so every expected id is written out.
#include "dataflow/prompt_template.h"

#include <gtest/gtest.h>

#include "tests/dataflow/byte_tokenizer.h"

namespace vlorch::dataflow {
namespace {

using testing::ByteTokenizer;

std::vector<int32_t> Ids(const std::string& s) { return ByteTokenizer().EncodeText(s); }

sharding::SampleRecord Conversation(const std::string& human, const std::string& gpt) {
  sharding::SampleRecord r;
  r.kind = sharding::SampleKind::kConversation;
  r.id = "GCC_train_000000001";
  r.conversation = {{"human", human}, {"gpt", gpt}};
  return r;
}

PromptTemplate With(const std::string& name, int image_tokens = 4) {
  PromptTemplate t = *BuiltinTemplate(name);
  t.image_tokens = image_tokens;
  t.image_token_id = 7;
  t.bos_id = 1;
  t.eos_id = 2;
  return t;
}

// Checks input = [1] + prefix + image slots + suffix + answer + [2], labels masked up to the
// answer, image at 1 + |prefix|.
void ExpectLayout(const EncodedSample& e, const std::string& prefix, const std::string& suffix,
                  const std::string& answer, int image_tokens) {
  std::vector<int32_t> want = {1};
  auto p = Ids(prefix), s = Ids(suffix), a = Ids(answer);
  want.insert(want.end(), p.begin(), p.end());
  want.insert(want.end(), image_tokens, 7);
  want.insert(want.end(), s.begin(), s.end());
  const size_t answer_at = want.size();
  want.insert(want.end(), a.begin(), a.end());
  want.push_back(2);
  EXPECT_EQ(e.input_ids, want);
  EXPECT_EQ(e.image_position, static_cast<int32_t>(1 + p.size()));
  ASSERT_EQ(e.labels.size(), want.size());
  for (size_t i = 0; i < want.size(); ++i)
    EXPECT_EQ(e.labels[i], i < answer_at ? kIgnoreIndex : want[i]) << "position " << i;
  EXPECT_FALSE(e.truncated);
}

TEST(PromptTemplateTest, TinyGptV) {
  auto e = EncodeSample(With("tinygpt_v"), ByteTokenizer(), Conversation("<image>\ndescribe this", "a dog"), 0);
  ASSERT_TRUE(e.ok()) << e.status().ToString();
  ExpectLayout(*e, "###Human: <Img>", "</Img> describe this###Assistant: ", "a dog", 4);
}

TEST(PromptTemplateTest, LlavaImageWhereTheHumanTurnHasIt) {
  const std::string sys = "A chat between a curious human and an artificial intelligence assistant. The assistant "
                          "gives helpful, detailed, and polite answers to the human's questions. USER: ";
  auto before = EncodeSample(With("llava_v1"), ByteTokenizer(), Conversation("<image>\nWhat is this?", "A cat."), 0);
  ASSERT_TRUE(before.ok()) << before.status().ToString();
  ExpectLayout(*before, sys, "\nWhat is this? ASSISTANT:", "A cat.", 4);
  auto after = EncodeSample(With("llava_v1"), ByteTokenizer(), Conversation("What is this?\n<image>", "A cat."), 0);
  ASSERT_TRUE(after.ok());
  ExpectLayout(*after, sys + "What is this?\n", " ASSISTANT:", "A cat.", 4);
}

TEST(PromptTemplateTest, Blip2CaptionPrependsTheImage) {
  sharding::SampleRecord r;
  r.kind = sharding::SampleKind::kCaption;
  r.id = "000010042";
  r.text = "a red car";
  auto e = EncodeSample(With("blip2_caption", 32), ByteTokenizer(), r, 0);
  ASSERT_TRUE(e.ok());
  ExpectLayout(*e, "", "", "a red car", 32);
}

TEST(PromptTemplateTest, LlavaPlainDropsTheTagFromTheInstruction) {
  auto e = EncodeSample(With("llava_plain"), ByteTokenizer(), Conversation("Describe.\n<image>", "olive oil"), 0);
  ASSERT_TRUE(e.ok());
  ExpectLayout(*e, "", "", "olive oil\n", 4);
}

TEST(PromptTemplateTest, TextOnlyIsAllTarget) {
  sharding::SampleRecord r;
  r.kind = sharding::SampleKind::kText;
  r.text = "plain text";
  auto e = EncodeSample(With("tinygpt_v"), ByteTokenizer(), r, 0);
  ASSERT_TRUE(e.ok());
  EXPECT_EQ(e->image_position, -1);
  std::vector<int32_t> want = {1};
  auto t = Ids("plain text");
  want.insert(want.end(), t.begin(), t.end());
  want.push_back(2);
  EXPECT_EQ(e->input_ids, want);
  EXPECT_EQ(e->labels[0], kIgnoreIndex);
  EXPECT_EQ(std::vector<int32_t>(e->labels.begin() + 1, e->labels.end()), std::vector<int32_t>(want.begin() + 1, want.end()));
}

TEST(PromptTemplateTest, TruncationCutsTheAnswerNeverThePrompt) {
  auto t = With("tinygpt_v");
  auto full = *EncodeSample(t, ByteTokenizer(), Conversation("<image> hi", "a long answer here"), 0);
  const int n = static_cast<int>(full.input_ids.size());
  auto cut = EncodeSample(t, ByteTokenizer(), Conversation("<image> hi", "a long answer here"), n - 5);
  ASSERT_TRUE(cut.ok());
  EXPECT_TRUE(cut->truncated);
  EXPECT_EQ(cut->input_ids, std::vector<int32_t>(full.input_ids.begin(), full.input_ids.end() - 5));
  EXPECT_EQ(cut->labels, std::vector<int32_t>(full.labels.begin(), full.labels.end() - 5));
  int prompt_len = 0;
  while (full.labels[prompt_len] == kIgnoreIndex) ++prompt_len;
  auto too_long = EncodeSample(t, ByteTokenizer(), Conversation("<image> hi", "answer"), prompt_len);
  EXPECT_EQ(too_long.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(too_long.status().message().find("max_len"), std::string::npos);
}

TEST(PromptTemplateTest, BadTemplatesAndSamples) {
  EXPECT_EQ(BuiltinTemplate("nope").status().code(), StatusCode::kNotFound);
  PromptTemplate t;
  t.name = "empty";
  t.prompt = "no placeholders";
  EXPECT_EQ(EncodeSample(t, ByteTokenizer(), Conversation("<image>", "x"), 0).status().code(),
            StatusCode::kInvalidArgument);
  t.prompt = "{image}{image}";
  EXPECT_FALSE(t.Validate().ok());
  auto no_tag = EncodeSample(With("llava_v1"), ByteTokenizer(), Conversation("no tag here", "x"), 0);
  EXPECT_EQ(no_tag.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(no_tag.status().message().find("<image>"), std::string::npos);
  sharding::SampleRecord no_gpt = Conversation("<image> q", "a");
  no_gpt.conversation.pop_back();
  EXPECT_EQ(EncodeSample(With("tinygpt_v"), ByteTokenizer(), no_gpt, 0).status().code(), StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace vlorch::dataflow
