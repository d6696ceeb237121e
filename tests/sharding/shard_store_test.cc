#include "sharding/shard_store.h"

#include <dirent.h>
#include <dlfcn.h>
#include <link.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <functional>
#include <iterator>

#include <gtest/gtest.h>

namespace vlorch::sharding {
namespace {

std::string FreshDir(const std::string& name) {
  std::string dir = ::testing::TempDir() + "/vlorch_store_" + name + "_" + std::to_string(getpid());
  std::string cmd = "rm -rf '" + dir + "'";
  EXPECT_EQ(std::system(cmd.c_str()), 0);
  return dir;
}

Sample Caption(const std::string& id, const std::string& text, std::string image, uint64_t ordinal) {
  Sample s;
  s.record.kind = SampleKind::kCaption;
  s.record.id = id;
  s.record.text = text;
  s.record.source_format = "img2dataset";
  s.record.source_file = "00000.tar";
  s.record.source_ordinal = ordinal;
  s.image = std::move(image);
  return s;
}

// Fills a store with n samples (shard size 4), committed in batches of 3.
void Fill(const std::string& dir, int n) {
  ShardStoreOptions o;
  o.shard_size = 4;
  auto store = ShardStore::Open(dir, o);
  ASSERT_TRUE(store.ok()) << store.status().ToString();
  SourceState src;
  src.format = "img2dataset";
  src.path = "00000.tar";
  for (int i = 0; i < n;) {
    ShardStore::Batch b;
    for (int k = 0; k < 3 && i < n; ++k, ++i)
      b.samples.push_back(Caption("key" + std::to_string(i), "caption " + std::to_string(i),
                                  std::string(1000 + i, static_cast<char>('a' + i % 26)), i));
    src.next_ordinal = i;
    src.ingested = i;
    b.source = src;
    ASSERT_TRUE((*store)->Commit(b).ok());
  }
}

TEST(ShardStoreTest, CommitReopenRead) {
  std::string dir = FreshDir("basic");
  Fill(dir, 10);
  ShardStoreOptions ro;
  ro.read_only = true;
  auto store = ShardStore::Open(dir, ro);
  ASSERT_TRUE(store.ok()) << store.status().ToString();
  EXPECT_EQ((*store)->num_samples(), 10u);
  EXPECT_EQ((*store)->shard_size(), 4u);
  EXPECT_EQ((*store)->num_shards(), 3u);
  for (uint64_t i = 0; i < 10; ++i) {
    auto s = (*store)->Get(i, true);
    ASSERT_TRUE(s.ok()) << s.status().ToString();
    EXPECT_EQ(s->record.id, "key" + std::to_string(i));
    EXPECT_EQ(s->image, std::string(1000 + i, static_cast<char>('a' + i % 26)));
    EXPECT_EQ(s->record.image_bytes, 1000 + i);
  }
  auto past = (*store)->Get(10, false);
  EXPECT_EQ(past.status().code(), StatusCode::kNotFound);
  auto found = (*store)->FindId("img2dataset", "key7");
  ASSERT_TRUE(found.ok());
  EXPECT_EQ(**found, 7u);
  EXPECT_FALSE((*(*store)->FindId("img2dataset", "nope")).has_value());
  auto sources = (*store)->Sources();
  ASSERT_TRUE(sources.ok());
  ASSERT_EQ(sources->size(), 1u);
  EXPECT_EQ((*sources)[0].next_ordinal, 10u);
  ShardStore::Batch b;
  EXPECT_EQ((*store)->Commit(b).code(), StatusCode::kFailedPrecondition);
}

TEST(ShardStoreTest, QuarantineAndSourceState) {
  std::string dir = FreshDir("quarantine");
  auto store = ShardStore::Open(dir, {});
  ASSERT_TRUE(store.ok());
  ShardStore::Batch b;
  b.source.format = "jsonl";
  b.source.path = "a.jsonl";
  b.source.next_ordinal = 3;
  b.source.quarantined["malformed_json"] = 1;
  b.quarantine.push_back({"a.jsonl", 2, "", "malformed_json", "unexpected end", 120});
  ASSERT_TRUE((*store)->Commit(b).ok());
  std::vector<QuarantineEntry> seen;
  ASSERT_TRUE((*store)->ForEachQuarantined([&](const QuarantineEntry& q) {
    seen.push_back(q);
    return true;
  }).ok());
  ASSERT_EQ(seen.size(), 1u);
  EXPECT_EQ(seen[0].source_file, "a.jsonl");
  EXPECT_EQ(seen[0].ordinal, 2u);
  EXPECT_EQ(seen[0].reason, "malformed_json");
  EXPECT_EQ(seen[0].byte_offset, 120);
  auto st = (*store)->Source("jsonl", "a.jsonl");
  ASSERT_TRUE(st.ok());
  EXPECT_EQ(st->quarantined.at("malformed_json"), 1u);
  EXPECT_EQ((*store)->Source("llava", "a.jsonl").status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ((*store)->Source("jsonl", "b.jsonl")->next_ordinal, 0u);
}

TEST(ShardStoreTest, OpenErrorsSayWhatToDo) {
  ShardStoreOptions ro;
  ro.read_only = true;
  auto missing = ShardStore::Open("/nonexistent/store", ro);
  EXPECT_EQ(missing.status().code(), StatusCode::kNotFound);
  EXPECT_NE(missing.status().message().find("vlorch shards ingest"), std::string::npos);
  std::string dir = FreshDir("lock");
  auto writer = ShardStore::Open(dir, {});
  ASSERT_TRUE(writer.ok());
  auto second = ShardStore::Open(dir, {});
  EXPECT_EQ(second.status().code(), StatusCode::kUnavailable) << second.status().ToString();
  EXPECT_NE(second.status().message().find("open for writing by another process"), std::string::npos);
}

// A byte flipped inside the images' blob file is detected on read, never returned as data.
// The blob file of a filled store (images move there when the store is reopened).
std::string BlobFile(const std::string& dir) {
  std::string blob;
  DIR* d = opendir(dir.c_str());
  if (d == nullptr) return blob;
  while (dirent* e = readdir(d)) {
    std::string n = e->d_name;
    if (n.size() > 5 && n.substr(n.size() - 5) == ".blob") blob = dir + "/" + n;
  }
  closedir(d);
  return blob;
}

// Flips one byte of `path` at `offset`.
void FlipByte(const std::string& path, std::streamoff offset) {
  std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
  char c;
  f.seekg(offset);
  f.get(c);
  f.seekp(offset);
  f.put(static_cast<char>(c ^ 0x55));
}

std::string ReadAll(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), {});
}

// Fills a store with 6 samples, moves the images into a blob file (by reopening), flips the
// byte of that file at `where(file bytes)`, and reopens it read-only.
std::unique_ptr<ShardStore> DamagedStore(const std::string& name, const std::function<size_t(const std::string&)>& where) {
  std::string dir = FreshDir(name);
  Fill(dir, 6);
  {
    ShardStoreOptions o;
    auto s = ShardStore::Open(dir, o);
    EXPECT_TRUE(s.ok());
  }
  const std::string blob = BlobFile(dir);
  EXPECT_FALSE(blob.empty()) << "images should be in a blob file after reopening";
  const size_t at = where(ReadAll(blob));
  EXPECT_NE(at, std::string::npos);
  if (blob.empty() || at == std::string::npos) return nullptr;
  FlipByte(blob, static_cast<std::streamoff>(at));
  ShardStoreOptions ro;
  ro.read_only = true;
  auto store = ShardStore::Open(dir, ro);
  EXPECT_TRUE(store.ok());
  return store.ok() ? std::move(store).value() : nullptr;
}

// A damaged byte inside an image is caught by the record's CRC32C on every read (RocksDB's
// blob checksum is not recomputed on the read path), only that sample fails, and the full
// storage pass behind `vlorch shards verify` fails too.
TEST(ShardStoreTest, CorruptImageIsDetected) {
  // Sample 2's image is 1002 bytes of 'c': damage its middle.
  auto store = DamagedStore("corrupt", [](const std::string& b) {
    const size_t at = b.find(std::string(1002, 'c'));
    return at == std::string::npos ? at : at + 501;
  });
  ASSERT_NE(store, nullptr);
  for (uint64_t i = 0; i < 6; ++i) {
    auto s = store->Get(i, true);
    if (i == 2) {
      ASSERT_FALSE(s.ok());
      EXPECT_EQ(s.status().code(), StatusCode::kCorruption) << s.status().ToString();
      EXPECT_NE(s.status().message().find("sample 2"), std::string::npos) << s.status().message();
    } else {
      ASSERT_TRUE(s.ok()) << i << ": " << s.status().ToString();
      EXPECT_EQ(s->image, std::string(1000 + i, static_cast<char>('a' + i % 26)));
    }
  }
  EXPECT_TRUE(store->Get(2, false).ok()) << "the record itself is intact";
  EXPECT_EQ(store->VerifyStorageChecksums().code(), StatusCode::kCorruption);
}

// Damage outside the image bytes (a blob record's key) leaves every image readable and
// correct, and the storage pass still reports it.
TEST(ShardStoreTest, DamagedBlobRecordHeaderIsReportedByTheStoragePass) {
  // The last byte of sample 3's key, just before its image (1003 bytes of 'd').
  auto store = DamagedStore("corrupt_key", [](const std::string& b) {
    const size_t at = b.find(std::string(1003, 'd'));
    return at == std::string::npos || at == 0 ? std::string::npos : at - 1;
  });
  ASSERT_NE(store, nullptr);
  for (uint64_t i = 0; i < 6; ++i) {
    auto s = store->Get(i, true);
    ASSERT_TRUE(s.ok()) << i << ": " << s.status().ToString();
    EXPECT_EQ(s->image, std::string(1000 + i, static_cast<char>('a' + i % 26)));
  }
  EXPECT_EQ(store->VerifyStorageChecksums().code(), StatusCode::kCorruption);
}

// RocksDB's checksum function resolves to vlorch's hardware CRC32C (sharding/shard_store.cc)
// everywhere in the process, and gives exactly the library's own values, so stores written
// before, or by another build, still verify.
TEST(ShardStoreTest, RocksDbsCrc32cIsOursAndEqualsTheLibrarysOwn) {
  using Extend = uint32_t (*)(uint32_t, const char*, size_t);
  const char* kName = "_ZN7rocksdb6crc32c6ExtendEjPKcm";  // rocksdb::crc32c::Extend(uint32_t, const char*, size_t)
  auto global = reinterpret_cast<Extend>(dlsym(RTLD_DEFAULT, kName));
  ASSERT_NE(global, nullptr);
  Dl_info where{};
  ASSERT_NE(dladdr(reinterpret_cast<void*>(global), &where), 0);
  EXPECT_EQ(std::string(where.dli_fname).find("librocksdb"), std::string::npos)
      << "rocksdb::crc32c::Extend resolves to " << where.dli_fname;
  // The library's own definition: looked up from librocksdb's own handle.
  std::string path;
  dl_iterate_phdr(
      [](dl_phdr_info* info, size_t, void* out) {
        if (info->dlpi_name && std::string(info->dlpi_name).find("librocksdb") != std::string::npos)
          *static_cast<std::string*>(out) = info->dlpi_name;
        return 0;
      },
      &path);
  ASSERT_FALSE(path.empty()) << "librocksdb is not loaded";
  void* handle = dlopen(path.c_str(), RTLD_LAZY | RTLD_NOLOAD);
  ASSERT_NE(handle, nullptr) << path;
  auto own = reinterpret_cast<Extend>(dlsym(handle, kName));
  ASSERT_NE(own, nullptr);
  EXPECT_NE(reinterpret_cast<void*>(own), reinterpret_cast<void*>(global));
  std::string data(70000, '\0');
  uint64_t x = 0x9E3779B97F4A7C15ull;
  for (char& c : data) {
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    c = static_cast<char>(x);
  }
  for (size_t len : {size_t{0}, size_t{1}, size_t{9}, size_t{4097}, size_t{12288}, size_t{12301}, size_t{70000}})
    for (uint32_t seed : {0u, 0x1234abcdu}) EXPECT_EQ(global(seed, data.data(), len), own(seed, data.data(), len)) << len;
  EXPECT_EQ(global(0, "123456789", 9), 0xE3069283u);
  dlclose(handle);
}

// Four processes open the store read-only at the same time and read every sample.
TEST(ShardStoreTest, FourProcessesReadConcurrently) {
  std::string dir = FreshDir("concurrent");
  Fill(dir, 40);
  std::vector<pid_t> kids;
  for (int p = 0; p < 4; ++p) {
    pid_t pid = fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      ShardStoreOptions ro;
      ro.read_only = true;
      auto store = ShardStore::Open(dir, ro);
      if (!store.ok()) _exit(2);
      for (int round = 0; round < 20; ++round) {
        for (uint64_t i = 0; i < 40; ++i) {
          auto s = (*store)->Get((i * 7 + p) % 40, true);
          if (!s.ok() || s->record.id != "key" + std::to_string((i * 7 + p) % 40)) _exit(3);
        }
      }
      _exit(0);
    }
    kids.push_back(pid);
  }
  for (pid_t k : kids) {
    int status = 0;
    ASSERT_EQ(waitpid(k, &status, 0), k);
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "reader exited with " << status;
  }
}

}  // namespace
}  // namespace vlorch::sharding
