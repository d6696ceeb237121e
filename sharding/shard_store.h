// ShardStore: one RocksDB database holding one dataset's samples (docs/shard-store.md).
//
// Column families:
//   default     metadata: format version, shard size, next sample index, per-source state
//   samples     IndexKey(i) -> EncodeRecord(record)            small values in the LSM
//   images      IndexKey(i) -> JPEG bytes as stored at the source, in blob files
//   ids         "<format>\0<id>" -> IndexKey(i)               duplicate detection
//   quarantine  "<source file>\0" IndexKey(ordinal) -> rejected record and reason
//
// Samples are numbered 0, 1, 2, ... in ingest order; shard k holds samples
// [k * shard_size, (k + 1) * shard_size), one contiguous key range.
//
// Writes: Commit() applies a whole batch (samples, images, ids, quarantine entries, the
// source's progress and the next index) in one WriteBatch, so a process killed at any point
// leaves the store at the end of some batch and a re-run continues from there.
//
// Reads: any number of processes may Open() the same store read-only at once (RocksDB's
// read-only mode takes no lock) while nothing writes. A ShardStore is safe to read from many
// threads; Commit() must come from one thread.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "common/status.h"
#include "sharding/record.h"

namespace vlorch::sharding {

// The on-disk format version this code writes and reads.
inline constexpr int kShardStoreFormatVersion = 1;
inline constexpr uint32_t kDefaultShardSize = 4096;

struct ShardStoreOptions {
  // Samples per shard, fixed when the store is created. 0 (default) means the store's own,
  // kDefaultShardSize for a new store; a different non-zero size on an existing store is
  // InvalidArgument.
  uint32_t shard_size = 0;
  // Open for reading only: many processes at once, no writes. Default false.
  bool read_only = false;
  // Create the store when `dir` has none (ignored when read_only). Default true.
  bool create_if_missing = true;
  // fsync the write-ahead log at every Commit. Default true: a machine crash then loses at
  // most the batch in flight, and a re-run redoes it. Ignored with bulk_load.
  bool sync_commits = true;
  // Ingest mode: commits skip the write-ahead log, so each image is written once (to its
  // blob file) instead of twice. Durability comes from flushes instead: all column families
  // are flushed together (RocksDB's atomic_flush), when memtables fill, at Flush() and at
  // close, so a batch's samples and its source's progress always become durable together. A
  // crash loses the unflushed batches as a unit, and a re-run redoes them. Default false.
  bool bulk_load = false;

  Status Validate() const;
};

// Ingest progress and counts of one source file.
struct SourceState {
  std::string format;            // "llava", "img2dataset", "jsonl"
  std::string path;              // as given
  uint64_t next_ordinal = 0;     // records before this one are done (stored or quarantined)
  bool complete = false;         // the whole file has been read
  uint64_t ingested = 0;         // samples stored from this file
  uint64_t already_present = 0;  // records found stored by an earlier ingest of the same file
  uint64_t image_bytes = 0;
  std::map<std::string, uint64_t> quarantined;  // reason -> count
  // Counts the source reports about itself (img2dataset's NNNNN_stats.json), verbatim.
  std::map<std::string, int64_t> reported;
};

struct QuarantineEntry {
  std::string source_file;
  uint64_t ordinal = 0;      // record number in the file
  std::string id;            // the record's id/key when it had one
  std::string reason;        // a reason code, e.g. "undecodable_image" (docs/shard-store.md)
  std::string detail;        // what exactly, for a person
  int64_t byte_offset = -1;  // where in the file, when known
};

struct Sample {
  uint64_t index = 0;
  SampleRecord record;
  std::string image;  // empty unless requested and present
};

class ShardStore {
 public:
  static StatusOr<std::unique_ptr<ShardStore>> Open(const std::string& dir, const ShardStoreOptions& options);
  ~ShardStore();

  const std::string& dir() const { return dir_; }
  uint32_t shard_size() const { return shard_size_; }
  uint64_t num_samples() const { return next_index_; }
  uint64_t num_shards() const { return (next_index_ + shard_size_ - 1) / shard_size_; }
  bool read_only() const { return read_only_; }

  // NotFound for an index past the end; Corruption for a damaged record or a missing or
  // mismatched image.
  StatusOr<Sample> Get(uint64_t index, bool with_image) const;
  // The stored sample index for (format, id), if any.
  StatusOr<std::optional<uint64_t>> FindId(const std::string& format, const std::string& id) const;
  // State of every source ever ingested, in path order.
  StatusOr<std::vector<SourceState>> Sources() const;
  // The state of one source (a fresh one when it was never ingested).
  StatusOr<SourceState> Source(const std::string& format, const std::string& path) const;
  // Calls fn for every quarantined record, in (source file, ordinal) order; stops at false.
  Status ForEachQuarantined(const std::function<bool(const QuarantineEntry&)>& fn) const;

  struct Batch {
    SourceState source;                 // the source's state after this batch
    std::vector<Sample> samples;        // `index` is assigned by Commit, in order
    std::vector<QuarantineEntry> quarantine;
  };
  // Atomically stores the batch. Sample indices continue from num_samples().
  Status Commit(Batch& batch);
  // Makes every committed batch durable (flushes all column families together).
  Status Flush();

  // Per-shard sample counts and checksums: CRC32C over each shard's encoded records in order
  // (records embed their image's CRC32C, so images are covered without reading them).
  struct ShardInfo {
    uint64_t shard = 0, first = 0, count = 0;
    uint32_t crc32c = 0;
    bool operator==(const ShardInfo& o) const {
      return shard == o.shard && first == o.first && count == o.count && crc32c == o.crc32c;
    }
  };
  StatusOr<std::vector<ShardInfo>> ComputeShardInfo() const;
  // RocksDB's own checksum pass over every table and blob file (every block, every blob
  // record). Get() checks an image against its record's CRC32C instead of RocksDB's blob
  // checksum; this is the full check behind `vlorch shards verify`.
  Status VerifyStorageChecksums() const;
  // Stores the manifest (JSON, docs/shard-store.md) computed now; the ingest calls it at its end.
  Status WriteManifest();
  struct Manifest {
    int format_version = 0;
    uint32_t shard_size = 0;
    uint64_t samples = 0;
    uint64_t quarantined = 0;
    std::vector<ShardInfo> shards;
  };
  // The stored manifest; nullopt when no ingest has finished yet; Corruption when damaged.
  StatusOr<std::optional<Manifest>> ReadManifest() const;

 private:
  struct Rep;
  explicit ShardStore(std::unique_ptr<Rep> rep);
  std::unique_ptr<Rep> rep_;
  std::string dir_;
  uint32_t shard_size_ = 0;
  uint64_t next_index_ = 0;
  bool read_only_ = false;
};

}  // namespace vlorch::sharding
