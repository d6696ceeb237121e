#include "sharding/shard_store.h"

#include <sys/stat.h>

#include <filesystem>

#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <rocksdb/db.h>
#include <rocksdb/options.h>
#include <rocksdb/write_batch.h>

#include "common/hash.h"

// RocksDB checksums every blob record and table block with rocksdb::crc32c::Extend. Debian's
// librocksdb is a portable build without SSE4.2, so its Extend is a table loop (~0.5 GB/s:
// 0.43 s of CPU in the flush thread per 205 MB ingested, 40 % of a warm image read). The
// library calls Extend through its PLT, so this definition, exported by every executable that
// links the shard store, takes its place: the same function (CRC32C, continuing from `crc`),
// computed with the CPU's crc32 instruction (common/hash.h). The values are identical, so
// stores written with either read with either (tested against the library's own Extend).
namespace rocksdb::crc32c {
uint32_t Extend(uint32_t crc, const char* data, size_t n) { return vlorch::Crc32c(data, n, crc); }
}  // namespace rocksdb::crc32c

namespace vlorch::sharding {
namespace {

enum Cf { kMeta = 0, kSamples = 1, kImages = 2, kIds = 3, kQuarantine = 4, kNumCf = 5 };
const char* const kCfNames[kNumCf] = {rocksdb::kDefaultColumnFamilyName.c_str(), "samples", "images", "ids",
                                      "quarantine"};

Status FromRocks(const rocksdb::Status& s, std::string_view context) {
  if (s.ok()) return Status::OK();
  std::string msg = fmt::format("{}: {}", context, s.ToString());
  if (s.IsNotFound()) return NotFoundError(msg);
  if (s.IsCorruption()) return CorruptionError(msg);
  if (s.IsIOError()) return IOError(msg);
  if (s.IsInvalidArgument()) return InvalidArgumentError(msg);
  return InternalError(msg);
}

std::string IdKey(const std::string& format, const std::string& id) { return format + std::string(1, '\0') + id; }

std::string QuarantineKey(const std::string& file, uint64_t ordinal) {
  return file + std::string(1, '\0') + IndexKey(ordinal);
}

std::string EncodeQuarantine(const QuarantineEntry& q) {
  std::string v;
  PutString(&v, q.id);
  PutString(&v, q.reason);
  PutString(&v, q.detail);
  PutVarint(&v, static_cast<uint64_t>(q.byte_offset + 1));
  return v;
}

std::string SourceKey(const std::string& path) { return "source/" + path; }

nlohmann::json SourceToJson(const SourceState& s) {
  return {{"format", s.format},     {"path", s.path},         {"next_ordinal", s.next_ordinal},
          {"complete", s.complete}, {"ingested", s.ingested}, {"already_present", s.already_present},
          {"image_bytes", s.image_bytes}, {"quarantined", s.quarantined}, {"reported", s.reported}};
}

StatusOr<SourceState> SourceFromJson(const std::string& text, const std::string& key) {
  try {
    auto j = nlohmann::json::parse(text);
    SourceState s;
    s.format = j.at("format").get<std::string>();
    s.path = j.at("path").get<std::string>();
    s.next_ordinal = j.at("next_ordinal").get<uint64_t>();
    s.complete = j.at("complete").get<bool>();
    s.ingested = j.at("ingested").get<uint64_t>();
    s.already_present = j.at("already_present").get<uint64_t>();
    s.image_bytes = j.at("image_bytes").get<uint64_t>();
    s.quarantined = j.at("quarantined").get<std::map<std::string, uint64_t>>();
    s.reported = j.at("reported").get<std::map<std::string, int64_t>>();
    return s;
  } catch (const nlohmann::json::exception& e) {
    return CorruptionError(fmt::format("shard store metadata '{}' is damaged: {}", key, e.what()));
  }
}

}  // namespace

struct ShardStore::Rep {
  std::unique_ptr<rocksdb::DB> db;
  std::vector<rocksdb::ColumnFamilyHandle*> cf;
  bool sync = true;
  bool bulk_load = false;
  ~Rep() {
    for (auto* h : cf) {
      if (h != nullptr && db) db->DestroyColumnFamilyHandle(h);
    }
  }
  StatusOr<std::optional<std::string>> GetMeta(const std::string& key) const {
    std::string v;
    rocksdb::Status s = db->Get(rocksdb::ReadOptions(), cf[kMeta], key, &v);
    if (s.IsNotFound()) return std::optional<std::string>();
    RETURN_IF_ERROR(FromRocks(s, "reading shard store metadata '" + key + "'"));
    return std::optional<std::string>(std::move(v));
  }
};

Status ShardStoreOptions::Validate() const { return Status::OK(); }

ShardStore::ShardStore(std::unique_ptr<Rep> rep) : rep_(std::move(rep)) {}
ShardStore::~ShardStore() = default;

StatusOr<std::unique_ptr<ShardStore>> ShardStore::Open(const std::string& dir, const ShardStoreOptions& options) {
  RETURN_IF_ERROR(options.Validate());
  struct stat st;
  const bool exists = ::stat((dir + "/CURRENT").c_str(), &st) == 0;
  if (!exists && (options.read_only || !options.create_if_missing))
    return NotFoundError(fmt::format("no shard store at '{}' (create one with `vlorch shards ingest ... --store {}`)",
                                     dir, dir));
  if (!exists) {
    // RocksDB creates the store's directory but not its parents ("data/store").
    std::error_code ec;
    std::filesystem::create_directories(std::filesystem::path(dir).parent_path(), ec);
  }
  rocksdb::DBOptions dbo;
  dbo.create_if_missing = !options.read_only && options.create_if_missing;
  dbo.create_missing_column_families = !options.read_only;
  dbo.max_background_jobs = 2;
  // Flush all column families as one, so that progress (default CF) never becomes durable
  // without its samples and images (bulk_load commits skip the WAL).
  dbo.atomic_flush = true;
  dbo.info_log_level = rocksdb::InfoLogLevel::WARN_LEVEL;
  // Start writeback every 1 MiB of table or blob file written (sync_file_range), so the
  // closing fsyncs find little left to write.
  dbo.bytes_per_sync = 1ull << 20;
  std::vector<rocksdb::ColumnFamilyDescriptor> cfs;
  for (int i = 0; i < kNumCf; ++i) {
    rocksdb::ColumnFamilyOptions co;
    if (i == kImages) {
      // JPEG bytes as stored at the source: kept out of the LSM in blob files, uncompressed
      // (JPEG does not compress further).
      co.enable_blob_files = true;
      co.min_blob_size = 0;
      co.blob_file_size = 256ull << 20;
      co.blob_compression_type = rocksdb::kNoCompression;
      // 32 MiB memtables: an ingest flushes images to blob files every 32 MiB in the
      // background while it validates, instead of holding 128 MiB and writing most of it in
      // the final flush (4000 images, 205 MB: 1.87 -> 1.77 s mean of four alternating runs,
      // with bytes_per_sync below).
      co.write_buffer_size = 32ull << 20;
    }
    cfs.emplace_back(kCfNames[i], co);
  }
  auto rep = std::make_unique<Rep>();
  rep->sync = options.sync_commits;
  rep->bulk_load = options.bulk_load;
  rocksdb::DB* db = nullptr;
  rocksdb::Status s = options.read_only ? rocksdb::DB::OpenForReadOnly(dbo, dir, cfs, &rep->cf, &db)
                                        : rocksdb::DB::Open(dbo, dir, cfs, &rep->cf, &db);
  if (!s.ok()) {
    if (s.IsIOError() && s.ToString().find("lock") != std::string::npos)
      return UnavailableError(fmt::format(
          "shard store '{}' is open for writing by another process (an ingest still running?): {}", dir,
          s.ToString()));
    return FromRocks(s, fmt::format("opening shard store '{}'", dir));
  }
  rep->db.reset(db);

  std::unique_ptr<ShardStore> store(new ShardStore(std::move(rep)));
  store->dir_ = dir;
  store->read_only_ = options.read_only;
  Rep& r = *store->rep_;
  ASSIGN_OR_RETURN(auto version, r.GetMeta("format_version"));
  ASSIGN_OR_RETURN(auto shard_size, r.GetMeta("shard_size"));
  ASSIGN_OR_RETURN(auto next, r.GetMeta("next_index"));
  if (!version) {
    if (options.read_only) return CorruptionError(fmt::format("'{}' has no shard store metadata", dir));
    rocksdb::WriteBatch wb;
    wb.Put(r.cf[kMeta], "format_version", std::to_string(kShardStoreFormatVersion));
    const uint32_t shard_size = options.shard_size ? options.shard_size : kDefaultShardSize;
    wb.Put(r.cf[kMeta], "shard_size", std::to_string(shard_size));
    wb.Put(r.cf[kMeta], "next_index", IndexKey(0));
    rocksdb::WriteOptions wo;
    wo.sync = true;
    RETURN_IF_ERROR(FromRocks(r.db->Write(wo, &wb), "initialising shard store"));
    store->shard_size_ = shard_size;
    store->next_index_ = 0;
    return store;
  }
  if (*version != std::to_string(kShardStoreFormatVersion))
    return FailedPreconditionError(fmt::format("shard store '{}' has format version {}; this vlorch reads version {}",
                                               dir, *version, kShardStoreFormatVersion));
  if (!shard_size || !next) return CorruptionError(fmt::format("shard store '{}' is missing its metadata", dir));
  store->shard_size_ = static_cast<uint32_t>(std::stoul(*shard_size));
  if (options.shard_size != 0 && options.shard_size != store->shard_size_)
    return InvalidArgumentError(fmt::format(
        "shard store '{}' has shard size {}; it cannot change (drop --shard-size, or ingest into a new store)", dir,
        store->shard_size_));
  store->next_index_ = DecodeIndexKey(*next);
  return store;
}

StatusOr<Sample> ShardStore::Get(uint64_t index, bool with_image) const {
  if (index >= next_index_)
    return NotFoundError(fmt::format("sample {} does not exist: store '{}' has {} samples", index, dir_, next_index_));
  std::string where = fmt::format("store '{}', sample {}", dir_, index);
  std::string value;
  RETURN_IF_ERROR(FromRocks(rep_->db->Get(rocksdb::ReadOptions(), rep_->cf[kSamples], IndexKey(index), &value), where));
  Sample out;
  out.index = index;
  ASSIGN_OR_RETURN(out.record, DecodeRecord(value, where));
  if (with_image && out.record.image_bytes > 0) {
    // The record's CRC32C covers the image bytes end to end, so RocksDB's own blob checksum
    // would check the same bytes a second time; it is skipped here (before RocksDB's CRC32C
    // was replaced, above, it was 40 % of a warm Get: 33k -> 59k reads/s). `vlorch shards
    // verify` still runs RocksDB's full checksum pass (VerifyStorageChecksums).
    rocksdb::ReadOptions image_read;
    image_read.verify_checksums = false;
    rocksdb::Status s = rep_->db->Get(image_read, rep_->cf[kImages], IndexKey(index), &out.image);
    if (s.IsNotFound()) return CorruptionError(where + ": image is missing");
    RETURN_IF_ERROR(FromRocks(s, where));
    if (out.image.size() != out.record.image_bytes || Crc32c(out.image) != out.record.image_crc32c)
      return CorruptionError(where + ": image bytes fail their checksum (store damaged; run `vlorch shards verify`)");
  }
  return out;
}

StatusOr<std::optional<uint64_t>> ShardStore::FindId(const std::string& format, const std::string& id) const {
  std::string v;
  rocksdb::Status s = rep_->db->Get(rocksdb::ReadOptions(), rep_->cf[kIds], IdKey(format, id), &v);
  if (s.IsNotFound()) return std::optional<uint64_t>();
  RETURN_IF_ERROR(FromRocks(s, "looking up id '" + id + "'"));
  return std::optional<uint64_t>(DecodeIndexKey(v));
}

StatusOr<std::vector<SourceState>> ShardStore::Sources() const {
  std::vector<SourceState> out;
  std::unique_ptr<rocksdb::Iterator> it(rep_->db->NewIterator(rocksdb::ReadOptions(), rep_->cf[kMeta]));
  for (it->Seek("source/"); it->Valid() && it->key().starts_with("source/"); it->Next()) {
    ASSIGN_OR_RETURN(SourceState s, SourceFromJson(it->value().ToString(), it->key().ToString()));
    out.push_back(std::move(s));
  }
  RETURN_IF_ERROR(FromRocks(it->status(), "listing sources"));
  return out;
}

StatusOr<SourceState> ShardStore::Source(const std::string& format, const std::string& path) const {
  ASSIGN_OR_RETURN(auto v, rep_->GetMeta(SourceKey(path)));
  if (!v) {
    SourceState s;
    s.format = format;
    s.path = path;
    return s;
  }
  ASSIGN_OR_RETURN(SourceState s, SourceFromJson(*v, SourceKey(path)));
  if (s.format != format)
    return InvalidArgumentError(fmt::format("'{}' was ingested into this store as format '{}', not '{}'", path,
                                            s.format, format));
  return s;
}

Status ShardStore::ForEachQuarantined(const std::function<bool(const QuarantineEntry&)>& fn) const {
  std::unique_ptr<rocksdb::Iterator> it(rep_->db->NewIterator(rocksdb::ReadOptions(), rep_->cf[kQuarantine]));
  for (it->SeekToFirst(); it->Valid(); it->Next()) {
    std::string_view key(it->key().data(), it->key().size());
    size_t nul = key.rfind('\0', key.size() - 9);
    if (key.size() < 9 || nul == std::string_view::npos) return CorruptionError("damaged quarantine key");
    QuarantineEntry q;
    q.source_file = std::string(key.substr(0, nul));
    q.ordinal = DecodeIndexKey(key.substr(nul + 1));
    std::string_view v(it->value().data(), it->value().size());
    uint64_t off = 0;
    if (!GetString(&v, &q.id) || !GetString(&v, &q.reason) || !GetString(&v, &q.detail) || !GetVarint(&v, &off))
      return CorruptionError(fmt::format("damaged quarantine entry for '{}' record {}", q.source_file, q.ordinal));
    q.byte_offset = static_cast<int64_t>(off) - 1;
    if (!fn(q)) break;
  }
  return FromRocks(it->status(), "listing quarantine");
}

Status ShardStore::Commit(Batch& batch) {
  if (read_only_) return FailedPreconditionError(fmt::format("shard store '{}' is open read-only", dir_));
  Rep& r = *rep_;
  // Sized up front: a batch holds a few hundred images, and a WriteBatch that grows by
  // doubling copies them again and faults in fresh pages at every step.
  size_t reserve = 4096;
  for (const Sample& s : batch.samples) reserve += s.image.size() + 512;
  rocksdb::WriteBatch wb(reserve);
  uint64_t next = next_index_;
  for (Sample& s : batch.samples) {
    s.index = next++;
    const std::string key = IndexKey(s.index);
    s.record.image_bytes = s.image.size();
    s.record.image_crc32c = s.image.empty() ? 0 : Crc32c(s.image);
    wb.Put(r.cf[kSamples], key, EncodeRecord(s.record));
    if (!s.image.empty()) wb.Put(r.cf[kImages], key, s.image);
    wb.Put(r.cf[kIds], IdKey(s.record.source_format, s.record.id), key);
  }
  for (const QuarantineEntry& q : batch.quarantine)
    wb.Put(r.cf[kQuarantine], QuarantineKey(q.source_file, q.ordinal), EncodeQuarantine(q));
  wb.Put(r.cf[kMeta], SourceKey(batch.source.path), SourceToJson(batch.source).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace));  // paths may be Latin-1
  wb.Put(r.cf[kMeta], "next_index", IndexKey(next));
  rocksdb::WriteOptions wo;
  wo.sync = r.sync && !r.bulk_load;
  wo.disableWAL = r.bulk_load;
  RETURN_IF_ERROR(FromRocks(r.db->Write(wo, &wb), fmt::format("writing to shard store '{}'", dir_)));
  next_index_ = next;
  return Status::OK();
}

Status ShardStore::VerifyStorageChecksums() const {
  const std::string where = fmt::format("verifying the files of store '{}'", dir_);
  try {
    // Table files, block by block. RocksDB 7.8's VerifyChecksum does not read blob files, so
    // every image is then read through RocksDB with its blob checksum verified.
    RETURN_IF_ERROR(FromRocks(rep_->db->VerifyChecksum(), where));
    rocksdb::ReadOptions ro;
    ro.verify_checksums = true;
    ro.fill_cache = false;
    std::unique_ptr<rocksdb::Iterator> it(rep_->db->NewIterator(ro, rep_->cf[kImages]));
    for (it->SeekToFirst(); it->Valid(); it->Next()) {
      (void)it->value();  // loads the blob: its record's checksum is verified here
      if (!it->status().ok())
        return FromRocks(it->status(), fmt::format("{}: image of sample {}", where, DecodeIndexKey(it->key().ToString())));
    }
    return FromRocks(it->status(), where);
  } catch (const std::exception& e) {
    return InternalError(fmt::format("{}: {}", where, e.what()));
  }
}

StatusOr<std::vector<ShardStore::ShardInfo>> ShardStore::ComputeShardInfo() const {
  std::vector<ShardInfo> out;
  std::unique_ptr<rocksdb::Iterator> it(rep_->db->NewIterator(rocksdb::ReadOptions(), rep_->cf[kSamples]));
  uint64_t expect = 0;
  for (it->SeekToFirst(); it->Valid() && expect < next_index_; it->Next(), ++expect) {
    const uint64_t index = DecodeIndexKey(std::string_view(it->key().data(), it->key().size()));
    if (index != expect)
      return CorruptionError(fmt::format("store '{}': sample {} is missing (found {} next)", dir_, expect, index));
    const uint64_t shard = index / shard_size_;
    if (out.size() <= shard) out.push_back({shard, shard * shard_size_, 0, 0});
    out.back().count++;
    out.back().crc32c = Crc32c(it->value().data(), it->value().size(), out.back().crc32c);
  }
  RETURN_IF_ERROR(FromRocks(it->status(), "scanning samples"));
  if (expect != next_index_)
    return CorruptionError(fmt::format("store '{}' holds {} samples but its metadata says {}", dir_, expect, next_index_));
  return out;
}

Status ShardStore::WriteManifest() {
  if (read_only_) return FailedPreconditionError("store is read-only");
  ASSIGN_OR_RETURN(auto shards, ComputeShardInfo());
  ASSIGN_OR_RETURN(auto sources, Sources());
  nlohmann::json j;
  j["format_version"] = kShardStoreFormatVersion;
  j["shard_size"] = shard_size_;
  j["samples"] = next_index_;
  nlohmann::json sh = nlohmann::json::array();
  for (const auto& s : shards) sh.push_back({{"shard", s.shard}, {"first", s.first}, {"count", s.count}, {"crc32c", s.crc32c}});
  j["shards"] = sh;
  nlohmann::json src = nlohmann::json::array();
  uint64_t quarantined = 0;
  for (const auto& s : sources) {
    src.push_back(SourceToJson(s));
    for (const auto& [k, v] : s.quarantined) quarantined += v;
  }
  j["sources"] = src;
  j["quarantined"] = quarantined;
  rocksdb::WriteOptions wo;
  wo.sync = !rep_->bulk_load;
  wo.disableWAL = rep_->bulk_load;
  return FromRocks(rep_->db->Put(wo, rep_->cf[kMeta], "manifest", j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace)), "writing the manifest");
}

StatusOr<std::optional<ShardStore::Manifest>> ShardStore::ReadManifest() const {
  ASSIGN_OR_RETURN(auto v, rep_->GetMeta("manifest"));
  if (!v) return std::optional<Manifest>();
  try {
    auto j = nlohmann::json::parse(*v);
    Manifest m;
    m.format_version = j.at("format_version").get<int>();
    m.shard_size = j.at("shard_size").get<uint32_t>();
    m.samples = j.at("samples").get<uint64_t>();
    m.quarantined = j.at("quarantined").get<uint64_t>();
    for (const auto& s : j.at("shards"))
      m.shards.push_back({s.at("shard").get<uint64_t>(), s.at("first").get<uint64_t>(), s.at("count").get<uint64_t>(),
                          s.at("crc32c").get<uint32_t>()});
    return std::optional<Manifest>(std::move(m));
  } catch (const nlohmann::json::exception& e) {
    return CorruptionError(fmt::format("shard store '{}': the manifest is damaged ({}); re-run the ingest to rewrite it",
                                       dir_, e.what()));
  }
}

Status ShardStore::Flush() {
  if (read_only_) return Status::OK();
  rocksdb::FlushOptions fo;
  fo.wait = true;
  std::vector<rocksdb::ColumnFamilyHandle*> all(rep_->cf.begin(), rep_->cf.end());
  RETURN_IF_ERROR(FromRocks(rep_->db->Flush(fo, all), fmt::format("flushing shard store '{}'", dir_)));
  if (!rep_->bulk_load) return FromRocks(rep_->db->SyncWAL(), "syncing the WAL");
  return Status::OK();
}

}  // namespace vlorch::sharding
