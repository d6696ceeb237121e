// The reader and writer against hand-built files of the published format (Hugging Face's
// `safetensors` Python package is not in Debian, so expected bytes are spelled out here).
#include "common/safetensors.h"
#include "common/hash.h"

#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>
#include <string>

#include <gtest/gtest.h>

namespace vlorch::safetensors {
namespace {

std::string Le64(uint64_t n) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i) s[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  return s;
}

// A file image: 8-byte length + header + data.
std::string Image(const std::string& header, const std::string& data) {
  return Le64(header.size()) + header + data;
}

std::string Floats(std::initializer_list<float> v) {
  std::string s(v.size() * 4, '\0');
  std::memcpy(s.data(), std::data(v), s.size());
  return s;
}

Status ParseError(const std::string& image) {
  return SafetensorsFile::FromBytes("bad.safetensors", image).status();
}

// The test vector from the safetensors crate's documentation: an I32 [2,2] tensor with an
// unpadded 60-byte header.
TEST(SafetensorsReadTest, ReadsTheReferenceCrateExample) {
  std::string header = R"({"test":{"dtype":"I32","shape":[2,2],"data_offsets":[0,16]}})";
  ASSERT_EQ(header.size(), 60u);
  std::string image = Image(header, std::string(16, '\0'));
  ASSERT_EQ(image.substr(0, 8), std::string("<\0\0\0\0\0\0\0", 8));
  auto f = SafetensorsFile::FromBytes("ref", image);
  ASSERT_TRUE(f.ok()) << f.status().ToString();
  ASSERT_EQ((*f)->tensors().size(), 1u);
  const TensorView* t = (*f)->Find("test");
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(t->dtype, Dtype::kI32);
  EXPECT_EQ(t->shape, (std::vector<int64_t>{2, 2}));
  EXPECT_EQ(t->nbytes, 16u);
  EXPECT_EQ(t->numel(), 4);
  EXPECT_EQ((*f)->Find("missing"), nullptr);
}

// What Hugging Face's save_file({"b": zeros(2, dtype=f16), "a": [1, 2] f32, "c": [[3]] f32},
// metadata={"format": "pt"}) writes: metadata first, tensors by dtype (F32 before F16 in
// safetensors' descending Dtype order) then name, compact JSON, spaces to a multiple of 8.
TEST(SafetensorsWriteTest, MatchesTheHuggingFaceLayoutByteForByte) {
  float a[] = {1.0f, 2.0f};
  float c[] = {3.0f};
  uint16_t b[] = {0, 0};
  std::vector<TensorToWrite> in = {
      {"b", Dtype::kF16, {2}, b, sizeof(b)},
      {"a", Dtype::kF32, {2}, a, sizeof(a)},
      {"c", Dtype::kF32, {1, 1}, c, sizeof(c)},
  };
  auto bytes = Serialize(in, {{"format", "pt"}});
  ASSERT_TRUE(bytes.ok()) << bytes.status().ToString();
  std::string header =
      R"({"__metadata__":{"format":"pt"},)"
      R"("a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
      R"("c":{"dtype":"F32","shape":[1,1],"data_offsets":[8,12]},)"
      R"("b":{"dtype":"F16","shape":[2],"data_offsets":[12,16]}})";
  header.append((8 - header.size() % 8) % 8, ' ');
  std::string expected = Image(header, Floats({1, 2}) + Floats({3}) + std::string(4, '\0'));
  EXPECT_EQ(*bytes, expected);
  EXPECT_EQ((8 + header.size()) % 8, 0u) << "data section must be 8-byte aligned";
}

TEST(SafetensorsWriteTest, CallerOrderWhenAsked) {
  float a[] = {1}, b[] = {2};
  WriteOptions opts;
  opts.huggingface_order = false;
  auto bytes = Serialize({{"z", Dtype::kF32, {1}, a, 4}, {"a", Dtype::kF32, {1}, b, 4}}, {}, opts);
  ASSERT_TRUE(bytes.ok());
  auto f = SafetensorsFile::FromBytes("x", *bytes);
  ASSERT_TRUE(f.ok());
  EXPECT_EQ((*f)->tensors()[0].name, "z");
  EXPECT_EQ((*f)->tensors()[1].name, "a");
}

TEST(SafetensorsWriteTest, FileRoundTripThroughMmap) {
  std::vector<float> w(1000);
  for (size_t i = 0; i < w.size(); ++i) w[i] = static_cast<float>(i) * 0.5f;
  std::vector<int64_t> ids = {7, -3, 1LL << 40};
  uint16_t bf[6] = {0x3f80, 0x4000, 0, 0, 0, 0};
  std::string path = ::testing::TempDir() + "/roundtrip.safetensors";
  WriteOptions opts;
  opts.fsync = true;
  Status s = WriteFile(path,
                       {{"model.layers.0.mlp.gate_proj.weight", Dtype::kF32, {10, 100}, w.data(), w.size() * 4},
                        {"ids", Dtype::kI64, {3}, ids.data(), 24},
                        {"empty", Dtype::kF32, {0, 4}, nullptr, 0},
                        {"bf", Dtype::kBF16, {2, 3}, bf, sizeof(bf)}},
                       {{"format", "pt"}, {"step", "12"}}, opts);
  ASSERT_TRUE(s.ok()) << s.ToString();
  auto f = SafetensorsFile::Open(path);
  ASSERT_TRUE(f.ok()) << f.status().ToString();
  EXPECT_EQ((*f)->metadata().at("step"), "12");
  const TensorView* t = (*f)->Find("model.layers.0.mlp.gate_proj.weight");
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(t->shape, (std::vector<int64_t>{10, 100}));
  EXPECT_EQ(std::memcmp(t->data, w.data(), w.size() * 4), 0);
  const TensorView* i = (*f)->Find("ids");
  ASSERT_NE(i, nullptr);
  EXPECT_EQ(std::memcmp(i->data, ids.data(), 24), 0);
  EXPECT_EQ((*f)->Find("empty")->nbytes, 0u);
  EXPECT_EQ((*f)->Find("bf")->dtype, Dtype::kBF16);
  std::remove(path.c_str());
}

// The size and CRC32C that WriteFile reports are those of the file's bytes (checkpoint
// manifests record them instead of reading each file back), including a tensor larger than
// the 4 MiB pieces the checksum is taken in.
TEST(SafetensorsWriteTest, ReportsTheSizeAndChecksumOfWhatItWrote) {
  std::vector<float> big(3 * 1024 * 1024 + 5);  // 12 MiB + 20 bytes
  for (size_t i = 0; i < big.size(); ++i) big[i] = static_cast<float>(i % 977) - 3.5f;
  uint16_t small[3] = {1, 2, 3};
  const std::string path = ::testing::TempDir() + "/written.safetensors";
  WrittenFile written;
  ASSERT_TRUE(WriteFile(path, {{"big", Dtype::kF32, {static_cast<int64_t>(big.size())}, big.data(), big.size() * 4},
                               {"small", Dtype::kF16, {3}, small, sizeof(small)}},
                        {{"format", "pt"}}, {}, &written)
                  .ok());
  std::ifstream in(path, std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_EQ(written.bytes, bytes.size());
  EXPECT_EQ(written.crc32c, Crc32c(bytes));
  bytes[bytes.size() / 2] ^= 1;
  EXPECT_NE(written.crc32c, Crc32c(bytes)) << "the checksum covers the tensor data";
  std::remove(path.c_str());
}

TEST(SafetensorsWriteTest, RejectsBadTensors) {
  float a[] = {1, 2};
  EXPECT_EQ(Serialize({{"a", Dtype::kF32, {3}, a, 8}}, {}).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(Serialize({{"a", Dtype::kF32, {2}, a, 8}, {"a", Dtype::kF32, {2}, a, 8}}, {}).status().code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(Serialize({{"__metadata__", Dtype::kF32, {2}, a, 8}}, {}).status().code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(Serialize({{"", Dtype::kF32, {2}, a, 8}}, {}).status().code(), StatusCode::kInvalidArgument);
  auto bad_utf8 = Serialize({{"\xff\xfe", Dtype::kF32, {2}, a, 8}}, {});
  EXPECT_EQ(bad_utf8.status().code(), StatusCode::kInvalidArgument);
  Status s = Serialize({{"w", Dtype::kF32, {2, 2}, a, 8}}, {}).status();
  EXPECT_NE(s.message().find("tensor 'w' has 8 bytes but shape [2,2] of F32 needs 16"), std::string::npos)
      << s.message();
}

TEST(SafetensorsWriteTest, UnwritablePathIsIOError) {
  float a[] = {1};
  Status s = WriteFile("/nonexistent-dir/x.safetensors", {{"a", Dtype::kF32, {1}, a, 4}}, {});
  EXPECT_EQ(s.code(), StatusCode::kIOError);
  EXPECT_NE(s.message().find("/nonexistent-dir/x.safetensors"), std::string::npos);
}

TEST(SafetensorsReadTest, MissingFileIsNotFound) {
  auto f = SafetensorsFile::Open("/nonexistent/model.safetensors");
  EXPECT_EQ(f.status().code(), StatusCode::kNotFound);
  EXPECT_NE(f.status().message().find("/nonexistent/model.safetensors"), std::string::npos);
}

struct MalformedCase {
  const char* name;
  std::string image;
  const char* expect;  // a phrase the error must contain
};

void PrintTo(const MalformedCase& c, std::ostream* os) { *os << c.name; }

std::vector<MalformedCase> MalformedCases() {
  const std::string f8 = Floats({1, 2});
  auto one = [](const std::string& info) { return std::string(R"({"w":)") + info + "}"; };
  std::string huge(8, '\0');
  huge[4] = 1;  // 2^32 bytes of header
  return {
      {"EmptyFile", "", "must start with an 8-byte header length"},
      {"ShortFile", "abc", "must start with an 8-byte header length"},
      {"HeaderOver100MB", Le64(200'000'000) + "{}", "exceeds the 100 MB limit"},
      {"HeaderHuge", huge + "{}", "exceeds the 100 MB limit"},
      {"HeaderPastEnd", Le64(64) + "{}", "runs past the end"},
      {"NotJson", Image("{not json", ""), "not valid JSON"},
      {"NotObject", Image("[1,2]   ", ""), "does not start with '{'"},
      {"TruncatedJson", Image(R"({"w":{"dtype":"F32")", ""), "not valid JSON"},
      {"UnknownDtype", Image(one(R"({"dtype":"F31","shape":[2],"data_offsets":[0,8]})"), f8), "unknown dtype 'F31'"},
      {"MissingDtype", Image(one(R"({"shape":[2],"data_offsets":[0,8]})"), f8), "missing string field 'dtype'"},
      {"MissingShape", Image(one(R"({"dtype":"F32","data_offsets":[0,8]})"), f8), "missing array field 'shape'"},
      {"NegativeShape", Image(one(R"({"dtype":"F32","shape":[-2],"data_offsets":[0,8]})"), f8), "not a non-negative integer"},
      {"FloatShape", Image(one(R"({"dtype":"F32","shape":[2.0],"data_offsets":[0,8]})"), f8), "not a non-negative integer"},
      {"UnknownField", Image(one(R"({"dtype":"F32","shape":[2],"data_offsets":[0,8],"x":1})"), f8), "unknown field 'x'"},
      {"BadOffsets", Image(one(R"({"dtype":"F32","shape":[2],"data_offsets":[0]})"), f8), "'data_offsets' must be [begin, end]"},
      {"ReversedOffsets", Image(one(R"({"dtype":"F32","shape":[0],"data_offsets":[8,0]})"), f8), "end before they begin"},
      {"OffsetsPastData", Image(one(R"({"dtype":"F32","shape":[4],"data_offsets":[0,16]})"), f8), "run past the 8-byte data section"},
      {"ShapeSizeMismatch", Image(one(R"({"dtype":"F32","shape":[3],"data_offsets":[0,8]})"), f8), "hold 8 bytes but shape [3] of F32 needs 12"},
      {"ShapeOverflow", Image(one(R"({"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,8]})"), f8), "overflows"},
      {"Overlap",
       Image(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", f8),
       "overlaps the previous tensor"},
      {"Gap",
       Image(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}})",
             f8 + Floats({3})),
       "gap of 4 bytes before tensor 'b'"},
      {"TrailingBytes", Image(one(R"({"dtype":"F32","shape":[1],"data_offsets":[0,4]})"), f8), "4 trailing bytes"},
      {"MetadataNotStrings", Image(R"({"__metadata__":{"step":12}})", ""), "is not a string"},
      {"MetadataNotObject", Image(R"({"__metadata__":[1]})", ""), "must be an object of strings"},
      {"EntryNotObject", Image(R"({"w":[1,2]})", ""), "entry is not an object"},
  };
}

class SafetensorsMalformedTest : public ::testing::TestWithParam<MalformedCase> {};

TEST_P(SafetensorsMalformedTest, RejectedWithClearError) {
  Status s = ParseError(GetParam().image);
  EXPECT_EQ(s.code(), StatusCode::kCorruption) << s.ToString();
  EXPECT_NE(s.message().find("bad.safetensors"), std::string::npos) << s.message();
  EXPECT_NE(s.message().find(GetParam().expect), std::string::npos) << s.message();
}

INSTANTIATE_TEST_SUITE_P(AllCases, SafetensorsMalformedTest, ::testing::ValuesIn(MalformedCases()),
                         [](const auto& info) { return std::string(info.param.name); });

TEST(SafetensorsReadTest, TruncatedFileOnDiskNamesThePath) {
  float a[] = {1, 2, 3, 4};
  std::string path = ::testing::TempDir() + "/trunc.safetensors";
  ASSERT_TRUE(WriteFile(path, {{"w", Dtype::kF32, {4}, a, 16}}, {}).ok());
  ASSERT_EQ(::truncate(path.c_str(), 8 + 64 + 4), 0);  // cut into the data
  auto f = SafetensorsFile::Open(path);
  EXPECT_EQ(f.status().code(), StatusCode::kCorruption);
  EXPECT_NE(f.status().message().find(path), std::string::npos);
  std::remove(path.c_str());
}

TEST(SafetensorsReadTest, ZeroTensorsIsValid) {
  auto f = SafetensorsFile::FromBytes("empty", Image("{}      ", ""));
  ASSERT_TRUE(f.ok()) << f.status().ToString();
  EXPECT_TRUE((*f)->tensors().empty());
}

}  // namespace
}  // namespace vlorch::safetensors
