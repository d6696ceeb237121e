// The ingest against hostile sources: every size a source declares is checked against the
// bytes it holds and against the limits before anything is allocated, every image path stays
// inside images/, and every JPEG is bounded in pixels and scans. Each test attacks one class
// and checks that the ingest finishes, quarantines exactly the hostile records with a reason
// naming the record and the limit, and stores everything else.
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>

#include <fmt/format.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "sharding/dataset_gen.h"
#include "sharding/ingest.h"
#include "sharding/readers.h"
#include "tests/sharding/hostile_inputs.h"

namespace vlorch::sharding {
namespace {

using testing::TarEnd;
using testing::TarMember;
using testing::WriteFile;

std::string Fresh(const std::string& name) {
  std::string dir = ::testing::TempDir() + "/vlorch_limits_" + name + "_" + std::to_string(getpid());
  EXPECT_EQ(std::system(("rm -rf '" + dir + "' && mkdir -p '" + dir + "'").c_str()), 0);
  return dir;
}

std::unique_ptr<ShardStore> OpenStore(const std::string& dir) {
  auto s = ShardStore::Open(dir, ShardStoreOptions());
  EXPECT_TRUE(s.ok()) << s.status().ToString();
  return s.ok() ? std::move(s).value() : nullptr;
}

// reason -> count, and id -> detail, of everything quarantined.
struct Quarantined {
  std::map<std::string, uint64_t> counts;
  std::map<std::string, std::string> detail;
  std::map<std::string, std::string> reason;
  std::map<std::string, std::string> detail_by_reason;  // the last one
};
Quarantined ReadQuarantine(const ShardStore& store) {
  Quarantined q;
  EXPECT_TRUE(store.ForEachQuarantined([&](const QuarantineEntry& e) {
    ++q.counts[e.reason];
    q.detail[e.id] = e.detail;
    q.reason[e.id] = e.reason;
    q.detail_by_reason[e.reason] = e.detail;
    return true;
  }).ok());
  return q;
}

std::vector<std::string> StoredIds(const ShardStore& store) {
  std::vector<std::string> ids;
  for (uint64_t i = 0; i < store.num_samples(); ++i) {
    auto s = store.Get(i, false);
    EXPECT_TRUE(s.ok());
    if (s.ok()) ids.push_back(s->record.id);
  }
  return ids;
}

// An img2dataset record's three members.
std::string GoodRecord(const std::string& key, uint64_t seed) {
  return TarMember(key + ".txt", "a photo of a dog " + key) +
         TarMember(key + ".json", nlohmann::json({{"key", key}, {"status", "success"}}).dump()) +
         TarMember(key + ".jpg", EncodeTestJpeg(40, 32, seed));
}

// The issue's reproduction: a 3 KB tar whose last member's header declares 40 GiB. Before,
// the reader allocated 40 GiB and the process died of std::bad_alloc. Now the record is
// quarantined from the header alone, the records before it and the next source are stored,
// and the ingest's peak memory stays small.
TEST(IngestLimitsTest, TarMemberDeclaring40GiBIsQuarantinedAndTheRestIngested) {
  const std::string root = Fresh("tar40g");
  const uint64_t k40GiB = uint64_t{40} << 30;
  WriteFile(root + "/00000.tar", GoodRecord("000000000", 1) + GoodRecord("000000001", 2) +
                                     TarMember("000000002.txt", "a caption") +
                                     TarMember("000000002.jpg", EncodeTestJpeg(40, 32, 3), k40GiB) + TarEnd());
  WriteFile(root + "/00001.tar", GoodRecord("000010000", 4) + GoodRecord("000010001", 5) + TarEnd());
  auto store = OpenStore(root + "/store");
  IngestOptions io;
  io.format = SourceFormat::kImg2Dataset;
  io.sources = {root + "/00000.tar", root + "/00001.tar"};
  testing::ResetPeakMemory();
  const uint64_t before = testing::CurrentMemory();
  auto r = Ingest(*store, io);
  const uint64_t peak = testing::PeakMemory();
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_LT(peak, before + (uint64_t{256} << 20)) << "peak " << peak << " from " << before;
  EXPECT_EQ(r->records, 5u);
  EXPECT_EQ(r->ingested, 4u);
  EXPECT_EQ(StoredIds(*store), (std::vector<std::string>{"000000000", "000000001", "000010000", "000010001"}));
  const Quarantined q = ReadQuarantine(*store);
  EXPECT_EQ(q.counts, (std::map<std::string, uint64_t>{{"truncated_tar_member", 1}}));
  const std::string& d = q.detail.at("000000002");
  EXPECT_NE(d.find("member '000000002.jpg' declares 40.0 GiB (42949672960 bytes) but only"), std::string::npos) << d;
  EXPECT_NE(d.find("follow its header"), std::string::npos) << d;
}

// Honest members over the limits (here lowered to 32 KiB per image and 1 KiB per text
// member) are skipped without being read, and the archive is read on past them; JSON
// nested deeper than the limit is refused before it is parsed.
TEST(IngestLimitsTest, TarMembersOverTheLimitsAreSkippedAndTheArchiveReadOn) {
  const std::string root = Fresh("taroversize");
  std::string big_image = EncodeTestJpeg(40, 32, 7);
  big_image.resize(40 << 10, 'x');  // 40 KiB
  std::string deep = std::string(150, '[') + std::string(150, ']');
  WriteFile(root + "/00000.tar",
            GoodRecord("000000000", 1) +
                TarMember("000000001.txt", "caption") + TarMember("000000001.jpg", big_image) +
                GoodRecord("000000002", 2) +
                TarMember("000000003.txt", std::string(2048, 'w')) + TarMember("000000003.jpg", EncodeTestJpeg(40, 32, 8)) +
                TarMember("000000004.txt", "caption") + TarMember("000000004.json", deep) +
                TarMember("000000004.jpg", EncodeTestJpeg(40, 32, 9)) +
                GoodRecord("000000005", 3) + TarEnd());
  auto store = OpenStore(root + "/store");
  IngestOptions io;
  io.sources = {root + "/00000.tar"};
  io.read_limits.max_image_bytes = 32 << 10;
  io.read_limits.max_record_bytes = 1 << 10;
  auto r = Ingest(*store, io);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->records, 6u);
  EXPECT_EQ(StoredIds(*store), (std::vector<std::string>{"000000000", "000000002", "000000005"}));
  const Quarantined q = ReadQuarantine(*store);
  EXPECT_EQ(q.counts, (std::map<std::string, uint64_t>{{"oversize_record", 2}, {"malformed_json", 1}}));
  EXPECT_NE(q.detail.at("000000001").find("member '000000001.jpg' is 40960 bytes, over the 32768 bytes limit for one "
                                          "image (ReadLimits::max_image_bytes)"),
            std::string::npos)
      << q.detail.at("000000001");
  EXPECT_NE(q.detail.at("000000003").find("member '000000003.txt' is 2048 bytes, over the 1024 bytes limit for one "
                                          "text record (ReadLimits::max_record_bytes)"),
            std::string::npos)
      << q.detail.at("000000003");
  EXPECT_NE(q.detail.at("000000004").find("nested more than 100 levels"), std::string::npos) << q.detail.at("000000004");
}

// A JSONL line over the 16 MiB default is read to its end through a fixed buffer, not kept,
// and quarantined; so is a line nested 200,000 levels deep (nlohmann's dump() would recurse
// that deep and overflow the stack). Line numbers and byte offsets after them stay right.
TEST(IngestLimitsTest, JsonlLinesOverTheLimitsAreQuarantined) {
  const std::string root = Fresh("jsonl");
  const std::string big = "{\"text\": \"" + std::string((uint64_t{16} << 20) + 10, 'a') + "\"}";
  const std::string deep = "{\"text\": \"deep\", \"m\": " + std::string(200000, '[') + std::string(200000, ']') + "}";
  const std::string lines[] = {R"({"text": "one"})", big, R"({"text": "three"})", deep, R"({"text": "five"})"};
  std::string file;
  for (const auto& l : lines) file += l + "\n";
  WriteFile(root + "/text.jsonl", file);
  auto store = OpenStore(root + "/store");
  IngestOptions io;
  io.format = SourceFormat::kJsonl;
  io.sources = {root + "/text.jsonl"};
  auto r = Ingest(*store, io);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->records, 5u);
  EXPECT_EQ(StoredIds(*store), (std::vector<std::string>{"line 1", "line 3", "line 5"}));
  const Quarantined q = ReadQuarantine(*store);
  EXPECT_EQ(q.counts, (std::map<std::string, uint64_t>{{"oversize_record", 1}, {"malformed_json", 1}}));
  EXPECT_EQ(q.reason.at("line 2"), "oversize_record");
  EXPECT_NE(q.detail.at("line 2").find(fmt::format("line 2, byte offset 16: the line is 16.0 MiB ({} bytes), over the "
                                                   "16.0 MiB (16777216 bytes) limit for one record",
                                                   big.size())),
            std::string::npos)
      << q.detail.at("line 2");
  EXPECT_EQ(q.reason.at("line 4"), "malformed_json");
  EXPECT_NE(q.detail.at("line 4").find(fmt::format("byte offset {}", 16 + big.size() + 1 + 18)), std::string::npos)
      << q.detail.at("line 4");
}

// A CC595K dataset (images/ folder or images.zip) whose chat.json also names images by
// "../", absolute, backslash and "./.." paths, and (folder) symlinks in images/ that lead
// out of it, to a file or through a directory. The file they aim at is a valid JPEG, so it
// would have been stored: each is quarantined instead, and its bytes appear nowhere in the
// store. A symlink that stays inside images/ is followed. A chat.json element over the
// 16 MiB limit is quarantined too.
class LlavaPathTest : public ::testing::TestWithParam<bool> {};

TEST_P(LlavaPathTest, ImagePathsThatLeaveTheImagesFolderAreQuarantined) {
  const bool zip = GetParam();
  const std::string root = Fresh(zip ? "paths_zip" : "paths_dir");
  LlavaGenOptions lo;
  lo.dir = root + "/cc595k";
  lo.records = 20;
  lo.zip = zip;
  lo.bad_cases = false;
  lo.min_px = 16;
  lo.max_px = 40;
  auto g = MakeLlava(lo);
  ASSERT_TRUE(g.ok()) << g.status().ToString();
  const std::string secret = EncodeTestJpeg(48, 40, 4242);
  WriteFile(lo.dir + "/secret.jpg", secret);
  WriteFile(root + "/outside.jpg", secret);
  char* real = ::realpath((lo.dir + "/secret.jpg").c_str(), nullptr);
  ASSERT_NE(real, nullptr);
  const std::string absolute = real;
  std::free(real);

  std::map<std::string, std::string> attacks = {
      {"EVIL_parent", "../secret.jpg"},
      {"EVIL_grandparent", "../../outside.jpg"},
      {"EVIL_absolute", absolute},
      {"EVIL_backslash", "..\\secret.jpg"},
      {"EVIL_dot_parent", "./../secret.jpg"},
      {"EVIL_inner_parent", "images/../../secret.jpg"},
  };
  std::string inside_id;
  if (!zip) {
    ASSERT_EQ(::symlink("../secret.jpg", (lo.dir + "/images/evil_link.jpg").c_str()), 0);
    ASSERT_EQ(::symlink(absolute.c_str(), (lo.dir + "/images/evil_absolute_link.jpg").c_str()), 0);
    ASSERT_EQ(::symlink("..", (lo.dir + "/images/up").c_str()), 0);
    attacks["EVIL_symlink"] = "evil_link.jpg";
    attacks["EVIL_absolute_symlink"] = "evil_absolute_link.jpg";
    attacks["EVIL_symlinked_dir"] = "up/secret.jpg";
    // Allowed: a symlink to another image inside the folder.
    ASSERT_EQ(::symlink("GCC_train_000001003.jpg", (lo.dir + "/images/inside_link.jpg").c_str()), 0);
    inside_id = "INSIDE_symlink";
  }
  nlohmann::json chat;
  {
    std::ifstream in(lo.dir + "/chat.json");
    chat = nlohmann::json::parse(in);
  }
  auto element = [](const std::string& id, const std::string& image, const std::string& caption) {
    return nlohmann::json({{"id", id},
                           {"image", image},
                           {"conversations",
                            {{{"from", "human"}, {"value", "<image>\nDescribe the image."}},
                             {{"from", "gpt"}, {"value", caption}}}}});
  };
  for (const auto& [id, image] : attacks) chat.push_back(element(id, image, "a stolen file"));
  if (!inside_id.empty()) chat.push_back(element(inside_id, "inside_link.jpg", "a linked image"));
  chat.push_back(element("BIG_element", "GCC_train_000001004.jpg", std::string((uint64_t{16} << 20) + 1, 'c')));
  WriteFile(lo.dir + "/chat.json", chat.dump());

  auto store = OpenStore(root + "/store");
  IngestOptions io;
  io.format = SourceFormat::kLlava;
  io.sources = g->files;
  auto r = Ingest(*store, io);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->records, 20u + attacks.size() + (inside_id.empty() ? 0 : 1) + 1);
  EXPECT_EQ(store->num_samples(), 20u + (inside_id.empty() ? 0 : 1));
  const Quarantined q = ReadQuarantine(*store);
  EXPECT_EQ(q.counts, (std::map<std::string, uint64_t>{{"unsafe_image_path", attacks.size()}, {"oversize_record", 1}}));
  for (const auto& [id, image] : attacks) {
    ASSERT_TRUE(q.detail.count(id)) << id;
    EXPECT_EQ(q.reason.at(id), "unsafe_image_path") << id;
    EXPECT_NE(q.detail.at(id).find("escapes the images directory"), std::string::npos) << id << ": " << q.detail.at(id);
  }
  EXPECT_NE(q.detail.at("EVIL_parent").find("image path '../secret.jpg' escapes the images directory (it has a '..' "
                                            "component)"),
            std::string::npos)
      << q.detail.at("EVIL_parent");
  EXPECT_NE(q.detail.at("EVIL_absolute").find("(it is absolute)"), std::string::npos);
  EXPECT_NE(q.detail.at("EVIL_backslash").find("'..\\x5csecret.jpg'"), std::string::npos) << q.detail.at("EVIL_backslash");
  if (!zip) {
    EXPECT_NE(q.detail.at("EVIL_symlink").find("resolves to '" + absolute + "', outside"), std::string::npos)
        << q.detail.at("EVIL_symlink");
  }
  // An element over the limit is not parsed, so its id is unknown: the entry names its number and offset.
  const std::string& big = q.detail_by_reason.at("oversize_record");
  EXPECT_NE(big.find(fmt::format("chat.json element {} at byte", r->records - 1)), std::string::npos) << big;
  EXPECT_NE(big.find("the element is 16.0 MiB"), std::string::npos) << big;
  for (uint64_t i = 0; i < store->num_samples(); ++i) {
    auto s = store->Get(i, true);
    ASSERT_TRUE(s.ok());
    EXPECT_NE(s->image, secret) << "sample " << i << " (" << s->record.id << ") holds the file outside images/";
    EXPECT_EQ(s->record.id.rfind("EVIL", 0), std::string::npos) << s->record.id;
  }
}

INSTANTIATE_TEST_SUITE_P(FolderAndZip, LlavaPathTest, ::testing::Values(false, true),
                         [](const auto& info) { return info.param ? "ImagesZip" : "ImagesFolder"; });

// Overwrites the uncompressed size images.zip declares for `name`, in its central directory
// entry and its local header.
void PatchZipDeclaredSize(const std::string& zip_path, const std::string& name, uint32_t size) {
  std::string z;
  {
    std::ifstream in(zip_path, std::ios::binary);
    z.assign(std::istreambuf_iterator<char>(in), {});
  }
  auto u16 = [&](size_t at) { return static_cast<uint32_t>(static_cast<unsigned char>(z[at]) | static_cast<unsigned char>(z[at + 1]) << 8); };
  auto u32 = [&](size_t at) { return u16(at) | u16(at + 2) << 16; };
  auto put32 = [&](size_t at, uint32_t v) {
    for (int i = 0; i < 4; ++i) z[at + i] = static_cast<char>((v >> (8 * i)) & 0xff);
  };
  bool found = false;
  for (size_t at = z.find("PK\x01\x02"); at != std::string::npos; at = z.find("PK\x01\x02", at + 4)) {
    const uint32_t name_len = u16(at + 28);
    if (z.compare(at + 46, name_len, name) != 0) continue;
    put32(at + 24, size);
    const uint32_t local = u32(at + 42);
    ASSERT_EQ(z.compare(local, 4, "PK\x03\x04"), 0);
    put32(local + 22, size);
    found = true;
  }
  ASSERT_TRUE(found) << name;
  WriteFile(zip_path, z);
}

// images.zip entries whose directory lies about their uncompressed size: one declares ~4 GiB
// (over the limit: quarantined without allocating; before, the reader allocated all 4 GiB),
// one declares 100 bytes but inflates to more (a zip bomb's shape: at most the declared
// size plus one byte is ever held).
TEST(IngestLimitsTest, ZipEntriesThatDeclareHugeOrFalseSizesAreQuarantined) {
  const std::string root = Fresh("zipsize");
  LlavaGenOptions lo;
  lo.dir = root + "/cc595k";
  lo.records = 12;
  lo.zip = true;
  lo.bad_cases = false;
  lo.min_px = 16;
  lo.max_px = 40;
  auto g = MakeLlava(lo);
  ASSERT_TRUE(g.ok()) << g.status().ToString();
  PatchZipDeclaredSize(lo.dir + "/images.zip", "GCC_train_000001003.jpg", 0xFFFFFF00u);
  PatchZipDeclaredSize(lo.dir + "/images.zip", "GCC_train_000001005.jpg", 100);
  auto store = OpenStore(root + "/store");
  IngestOptions io;
  io.format = SourceFormat::kLlava;
  io.sources = g->files;
  testing::ResetPeakMemory();
  const uint64_t before = testing::CurrentMemory();
  auto r = Ingest(*store, io);
  const uint64_t peak = testing::PeakMemory();
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_LT(peak, before + (uint64_t{256} << 20)) << "peak " << peak << " from " << before;
  EXPECT_EQ(r->records, 12u);
  EXPECT_EQ(store->num_samples(), 10u);
  const Quarantined q = ReadQuarantine(*store);
  EXPECT_EQ(q.counts, (std::map<std::string, uint64_t>{{"oversize_record", 1}, {"size_mismatch", 1}}));
  EXPECT_NE(q.detail.at("GCC_train_000001003").find("'GCC_train_000001003.jpg' in images.zip declares 4.0 GiB "
                                                    "(4294967040 bytes), over the 64.0 MiB"),
            std::string::npos)
      << q.detail.at("GCC_train_000001003");
  EXPECT_NE(q.detail.at("GCC_train_000001005").find("inflates past the 100 bytes its directory declares"),
            std::string::npos)
      << q.detail.at("GCC_train_000001005");
}

// Images over the pixel and scan limits, inside an otherwise good tar: quarantined with the
// size or scan count and the limit, the rest stored.
TEST(IngestLimitsTest, JpegsOverThePixelAndScanLimitsAreQuarantined) {
  const std::string root = Fresh("jpeglimits");
  int scans = 0;
  const std::string flood = testing::ProgressiveJpegWithManyScans(64, 48, &scans);
  const std::string huge = testing::WithDeclaredSize(EncodeTestJpeg(64, 48, 3), 60000, 60000);
  WriteFile(root + "/00000.tar", GoodRecord("000000000", 1) + TarMember("000000001.txt", "huge") +
                                     TarMember("000000001.jpg", huge) + TarMember("000000002.txt", "flood") +
                                     TarMember("000000002.jpg", flood) + GoodRecord("000000003", 2) + TarEnd());
  auto store = OpenStore(root + "/store");
  IngestOptions io;
  io.sources = {root + "/00000.tar"};
  auto r = Ingest(*store, io);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(StoredIds(*store), (std::vector<std::string>{"000000000", "000000003"}));
  const Quarantined q = ReadQuarantine(*store);
  EXPECT_EQ(q.counts, (std::map<std::string, uint64_t>{{"image_too_large", 1}, {"too_many_scans", 1}}));
  EXPECT_NE(q.detail.at("000000001").find("declares 60000x60000 (3600000000 pixels), over the limit of 16384 pixels "
                                          "per side and 67108864 pixels"),
            std::string::npos)
      << q.detail.at("000000001");
  EXPECT_NE(q.detail.at("000000002").find("more than 100 scans"), std::string::npos) << q.detail.at("000000002");
  // The limits are options: raised, the same images are judged on their data.
  auto store2 = OpenStore(root + "/store2");
  io.jpeg_limits.max_scans = 200;
  r = Ingest(*store2, io);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(StoredIds(*store2), (std::vector<std::string>{"000000000", "000000002", "000000003"}));
}

// A batch stops growing once it holds max_batch_bytes, so records that each name the same
// 40 KB zip entry (or large images) cannot make a batch hold batch_size x the image limit.
TEST(IngestLimitsTest, BatchesAreCutAtTheirByteBudget) {
  const std::string root = Fresh("budget");
  std::string tar;
  for (int i = 0; i < 12; ++i) tar += GoodRecord(fmt::format("{:09d}", i), i);
  WriteFile(root + "/00000.tar", tar + TarEnd());
  auto store = OpenStore(root + "/store");
  IngestOptions io;
  io.sources = {root + "/00000.tar"};
  io.batch_size = 256;
  io.max_batch_bytes = 1;  // every record fills a batch
  int batches = 0;
  io.on_progress = [&](const IngestProgress&) { ++batches; };
  auto r = Ingest(*store, io);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(store->num_samples(), 12u);
  EXPECT_EQ(batches, 13) << "12 one-record batches, then the empty one that marks the source complete";
}

TEST(IngestLimitsTest, LimitsAreValidated) {
  IngestOptions io;
  io.sources = {"x"};
  EXPECT_TRUE(io.Validate().ok());
  io.read_limits.max_image_bytes = 0;
  EXPECT_EQ(io.Validate().code(), StatusCode::kInvalidArgument);
  io.read_limits = {};
  io.jpeg_limits.max_pixels = 0;
  EXPECT_EQ(io.Validate().code(), StatusCode::kInvalidArgument);
  io.jpeg_limits = {};
  io.max_batch_bytes = 0;
  EXPECT_EQ(io.Validate().code(), StatusCode::kInvalidArgument);
}

// The splitter skips an element over its limit to the element's end (strings and nesting
// tracked), reports its full size, and records every element's nesting depth.
TEST(JsonArraySplitterTest, OversizeElementIsSkippedToItsEnd) {
  const std::string path = ::testing::TempDir() + "/split_limit_" + std::to_string(getpid()) + ".json";
  WriteFile(path, R"([{"a": "0123456789]},{0123456789"}, {"b": 1}, [[[1]]], "tail"])");
  JsonArraySplitter s;
  ASSERT_TRUE(s.Open(path, 16).ok());
  JsonArraySplitter::Element e;
  ASSERT_TRUE(*s.Next(&e));
  EXPECT_TRUE(e.oversize);
  EXPECT_TRUE(e.text.empty());
  EXPECT_EQ(e.size, 33u);
  EXPECT_EQ(e.offset, 1);
  ASSERT_TRUE(*s.Next(&e));
  EXPECT_FALSE(e.oversize);
  EXPECT_EQ(e.text, R"({"b": 1})");
  EXPECT_EQ(e.depth, 1);
  ASSERT_TRUE(*s.Next(&e));
  EXPECT_EQ(e.text, "[[[1]]]");
  EXPECT_EQ(e.depth, 3);
  ASSERT_TRUE(*s.Next(&e));
  EXPECT_EQ(e.text, R"("tail")");
  EXPECT_FALSE(*s.Next(&e));
}

}  // namespace
}  // namespace vlorch::sharding
