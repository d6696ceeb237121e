// Ingest: source files -> ShardStore, resumable and idempotent.
//
// For each source, in the order given:
//  1. Its state in the store says how far an earlier run got (next record number); a
//     complete source is skipped, so ingesting the same source twice adds nothing.
//  2. Records before that point are skipped without validation.
//  3. Records are read in batches; each batch is validated on `threads` threads (JPEG
//     decode of every image, UTF-8, empty captions, conversation shape), then checked for
//     duplicate ids, then committed in one atomic write with the source's new state.
// Killing the process at any point and running the same command again therefore finishes
// with the same store as an uninterrupted run: same samples, same order, same quarantine.
//
// A full disk is not a bad record: the ingest stops with a ResourceExhausted error naming
// the store, the space it needs and the space free; what was committed stays, and the same
// command resumes once space is freed.
//
// Bad records are quarantined with a reason (docs/shard-store.md) and counted; none stops
// the ingest. A source that cannot be read at all fails the ingest with its path.
//
// Sources are untrusted input: what one record may make the ingest allocate or decode is
// bounded by the limits below, checked against what the source declares (and the bytes it
// actually holds) before anything is allocated; a record over a limit is quarantined.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "common/status.h"
#include "sharding/jpeg_check.h"
#include "sharding/readers.h"
#include "sharding/shard_store.h"

namespace vlorch::sharding {

enum class SourceFormat { kLlava, kImg2Dataset, kJsonl };
const char* SourceFormatName(SourceFormat f);
StatusOr<SourceFormat> ParseSourceFormat(const std::string& name);

struct IngestProgress {
  uint64_t bytes_done = 0, bytes_total = 0;
  uint64_t records = 0, ingested = 0, quarantined = 0;
  double seconds = 0;
  std::string current_source;
};

struct IngestOptions {
  SourceFormat format = SourceFormat::kImg2Dataset;
  // Source files (tars, .jsonl files).
  std::vector<std::string> sources;
  // Records per committed batch. Default 256.
  int batch_size = 256;
  // Validation threads. 0 (default) means one per core.
  int threads = 0;
  // With a bulk-load store: flush every this many committed batches, bounding what a crash
  // makes a re-run redo. 0 (default): RocksDB flushes when its memtables fill (about every
  // 128 MB of images) and the ingest flushes at its end.
  int flush_every_batches = 0;
  // A batch ends early once its records hold this many bytes (images and text), so the up
  // to three batches in flight stay small when images are large or many records name the
  // same zip entry. Default 256 MiB (at ~50 KB per image a batch of 256 holds ~13 MB).
  uint64_t max_batch_bytes = uint64_t{256} << 20;
  // Per-record limits on reading a source (sharding/readers.h). Defaults: 64 MiB per image
  // (max_image_bytes), 16 MiB per JSONL line, chat.json / metadata.json element or tar
  // .txt/.json member (max_record_bytes), JSON nesting 100 levels (max_json_depth).
  // Over a size limit: quarantined as oversize_record; too deep: malformed_json.
  ReadLimits read_limits;
  // Limits on every image, checked from its header before decoding and while decoding
  // (sharding/jpeg_check.h). Defaults: 16384 pixels per side (max_side), 2^26 = 64 Mpixel
  // (max_pixels), 100 scans (max_scans). Over: image_too_large / too_many_scans.
  JpegLimits jpeg_limits;
  // Before writing, refuse (ResourceExhausted, nothing written) when the store's filesystem
  // has less free space than the sources not yet complete hold: images are stored as they
  // are, so that is what the store grows by, give or take RocksDB's overhead. Default true.
  // Whether or not it is checked, a write that runs out of space fails the ingest with the
  // same kind of error, keeping every batch committed before it (a re-run resumes there).
  bool check_free_space = true;
  // Called after every batch (e.g. to draw a progress bar). Default: none.
  std::function<void(const IngestProgress&)> on_progress;

  Status Validate() const;
};

struct IngestReport {
  uint64_t records = 0;          // records read this run
  uint64_t ingested = 0;         // stored this run
  uint64_t quarantined = 0;      // quarantined this run
  uint64_t skipped_sources = 0;  // sources already complete
  std::map<std::string, uint64_t> reasons;  // quarantine reason -> count, this run
  uint64_t image_bytes = 0;
  double seconds = 0;
};

StatusOr<IngestReport> Ingest(ShardStore& store, const IngestOptions& options);

}  // namespace vlorch::sharding
