#include "sharding/record.h"

#include <gtest/gtest.h>

namespace vlorch::sharding {
namespace {

SampleRecord Example() {
  SampleRecord r;
  r.kind = SampleKind::kConversation;
  r.id = "GCC_train_002582585";
  r.conversation = {{"human", "Provide a brief description of the given image.\n<image>"},
                    {"gpt", "olive oil is a healthy ingredient used liberally ."}};
  r.source_format = "llava";
  r.source_file = "chat.json";
  r.source_ordinal = 41;
  r.metadata_json = R"({"url":"http://x/y.jpg"})";
  r.image_bytes = 12345;
  r.image_crc32c = 0xdeadbeef;
  r.width = 640;
  r.height = 480;
  return r;
}

TEST(RecordTest, RoundTrip) {
  SampleRecord r = Example();
  auto d = DecodeRecord(EncodeRecord(r), "sample 1");
  ASSERT_TRUE(d.ok()) << d.status().ToString();
  EXPECT_EQ(d->kind, r.kind);
  EXPECT_EQ(d->id, r.id);
  ASSERT_EQ(d->conversation.size(), 2u);
  EXPECT_EQ(d->conversation[1].value, r.conversation[1].value);
  EXPECT_EQ(d->source_ordinal, 41u);
  EXPECT_EQ(d->metadata_json, r.metadata_json);
  EXPECT_EQ(d->image_bytes, 12345u);
  EXPECT_EQ(d->image_crc32c, 0xdeadbeefu);
  EXPECT_EQ(d->width, 640u);
  EXPECT_EQ(d->height, 480u);
}

TEST(RecordTest, EveryFlippedByteIsDetected) {
  std::string enc = EncodeRecord(Example());
  for (size_t i = 0; i < enc.size(); ++i) {
    std::string bad = enc;
    bad[i] ^= 0x10;
    auto d = DecodeRecord(bad, "sample 7");
    ASSERT_FALSE(d.ok()) << "byte " << i;
    EXPECT_EQ(d.status().code(), StatusCode::kCorruption);
    EXPECT_NE(d.status().message().find("sample 7"), std::string::npos);
  }
  EXPECT_FALSE(DecodeRecord(enc.substr(0, enc.size() - 1), "s").ok());
  EXPECT_FALSE(DecodeRecord("", "s").ok());
}

TEST(RecordTest, IndexKeysSortNumerically) {
  std::vector<uint64_t> v = {0, 1, 255, 256, 4095, 4096, 1ull << 40, ~0ull};
  for (size_t i = 1; i < v.size(); ++i) {
    EXPECT_LT(IndexKey(v[i - 1]), IndexKey(v[i]));
    EXPECT_EQ(DecodeIndexKey(IndexKey(v[i])), v[i]);
  }
}

TEST(RecordTest, Utf8Validation) {
  EXPECT_TRUE(IsValidUtf8("plain ascii"));
  EXPECT_TRUE(IsValidUtf8("caf\xc3\xa9 \xe4\xb8\xad\xe6\x96\x87 \xf0\x9f\x98\x80"));
  EXPECT_FALSE(IsValidUtf8("\xff"));
  EXPECT_FALSE(IsValidUtf8("caf\xe9"));          // Latin-1 byte
  EXPECT_FALSE(IsValidUtf8("\xc0\xaf"));         // overlong '/'
  EXPECT_FALSE(IsValidUtf8("\xed\xa0\x80"));     // surrogate
  EXPECT_FALSE(IsValidUtf8("\xf4\x90\x80\x80")); // > U+10FFFF
  EXPECT_FALSE(IsValidUtf8("\xe4\xb8"));         // truncated
}

}  // namespace
}  // namespace vlorch::sharding
