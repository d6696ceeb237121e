#include "sharding/ingest.h"

#include <sys/stat.h>

#include <chrono>
#include <climits>
#include <cstdlib>
#include <future>
#include <set>
#include <atomic>
#include <thread>

#include <fmt/format.h>

#include "common/disk_space.h"
#include "common/fault.h"
#include "common/logging.h"
#include "sharding/jpeg_check.h"
#include "sharding/readers.h"

namespace vlorch::sharding {
namespace {

bool Blank(const std::string& s) { return s.find_first_not_of(" \t\r\n\v\f") == std::string::npos; }

// Fills the sample from a raw record (moving its image bytes: the raw record keeps only what
// the quarantine and the source bookkeeping need) or returns (reason, detail).
std::pair<std::string, std::string> Validate(RawRecord& raw, const JpegLimits& jpeg_limits, Sample* s) {
  if (!raw.reject_reason.empty()) return {raw.reject_reason, raw.reject_detail};
  if (raw.wants_image && !raw.image_found) return {"missing_image", "the record has no image file"};
  if (!IsValidUtf8(raw.text) || !IsValidUtf8(raw.id)) return {"non_utf8_text", "text is not valid UTF-8"};
  for (const Turn& t : raw.conversation) {
    if (!IsValidUtf8(t.value)) return {"non_utf8_text", "a conversation turn is not valid UTF-8"};
  }
  if (raw.kind == SampleKind::kConversation) {
    const Turn* human = nullptr;
    const Turn* gpt = nullptr;
    for (const Turn& t : raw.conversation) {
      if (t.from == "human" && human == nullptr) human = &t;
      if (t.from == "gpt" && gpt == nullptr) gpt = &t;
    }
    if (gpt == nullptr) return {"missing_gpt_turn", "the conversation has no \"gpt\" turn"};
    if (human == nullptr || human->value.find("<image>") == std::string::npos)
      return {"missing_image_tag", "the human turn has no <image> tag"};
    if (Blank(gpt->value)) return {"empty_caption", "the gpt turn is empty or whitespace"};
  }
  if (raw.kind != SampleKind::kConversation && Blank(raw.text))
    return {raw.kind == SampleKind::kText ? "empty_text" : "empty_caption", "the text is empty or whitespace"};
  if (raw.wants_image) {
    JpegCheck j = CheckJpeg(raw.image, jpeg_limits);
    if (!j.ok) return {j.reason, j.detail};
    s->record.width = j.width;
    s->record.height = j.height;
    s->image = std::move(raw.image);
  }
  s->record.kind = raw.kind;
  s->record.id = raw.id;
  s->record.text = raw.text;
  s->record.conversation = raw.conversation;
  s->record.metadata_json = raw.metadata_json;
  return {};
}

// What a record holds in memory, for the batch byte budget.
uint64_t RecordBytes(const RawRecord& r) {
  uint64_t n = r.image.size() + r.text.size() + r.metadata_json.size() + r.id.size();
  for (const Turn& t : r.conversation) n += t.from.size() + t.value.size();
  return n;
}

uint64_t FileSize(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 ? static_cast<uint64_t>(st.st_size) : 0;
}

}  // namespace

const char* SourceFormatName(SourceFormat f) {
  switch (f) {
    case SourceFormat::kLlava: return "llava";
    case SourceFormat::kImg2Dataset: return "img2dataset";
    case SourceFormat::kJsonl: return "jsonl";
  }
  return "?";
}

StatusOr<SourceFormat> ParseSourceFormat(const std::string& name) {
  if (name == "llava") return SourceFormat::kLlava;
  if (name == "img2dataset") return SourceFormat::kImg2Dataset;
  if (name == "jsonl") return SourceFormat::kJsonl;
  return InvalidArgumentError(fmt::format("unknown format '{}' (use llava, img2dataset or jsonl)", name));
}

Status IngestOptions::Validate() const {
  if (sources.empty()) return InvalidArgumentError("no sources given");
  if (batch_size < 1) return InvalidArgumentError("batch size must be >= 1");
  if (threads < 0) return InvalidArgumentError("threads must be >= 0");
  if (flush_every_batches < 0) return InvalidArgumentError("flush_every_batches must be >= 0");
  if (max_batch_bytes < 1) return InvalidArgumentError("max_batch_bytes must be >= 1");
  RETURN_IF_ERROR(read_limits.Validate());
  RETURN_IF_ERROR(jpeg_limits.Validate());
  return Status::OK();
}

StatusOr<IngestReport> Ingest(ShardStore& store, const IngestOptions& options) {
  RETURN_IF_ERROR(options.Validate());
  const auto t0 = std::chrono::steady_clock::now();
  const int threads = options.threads > 0 ? options.threads : std::max(1u, std::thread::hardware_concurrency());
  const std::string format = SourceFormatName(options.format);

  // Resolve every source first: a missing file fails fast, before anything is written.
  std::vector<std::string> paths;
  IngestProgress progress;
  for (const std::string& s : options.sources) {
    char* real = ::realpath(s.c_str(), nullptr);
    if (real == nullptr) return NotFoundError(fmt::format("source '{}' does not exist", s));
    paths.emplace_back(real);
    std::free(real);
    // CC595K may be given as its directory; record chat.json, the file the offsets refer to.
    struct stat st;
    if (options.format == SourceFormat::kLlava && ::stat(paths.back().c_str(), &st) == 0 && S_ISDIR(st.st_mode))
      paths.back() += "/chat.json";
    progress.bytes_total += FileSize(paths.back());
  }

  // Space: what the incomplete sources hold is about what the store grows by.
  uint64_t need = 0;
  for (const std::string& path : paths) {
    ASSIGN_OR_RETURN(SourceState state, store.Source(format, path));
    if (!state.complete) need += FileSize(path);
  }
  const std::string what = fmt::format("ingest into the shard store {}", store.dir());
  const std::string advice =
      "free space there (or ingest into a store on a larger disk) and run the same command again; the batches "
      "committed so far are kept and the ingest resumes after them";
  if (options.check_free_space) RETURN_IF_ERROR(CheckFreeSpace(store.dir(), need, what, advice));
  auto space = [&](Status s) {
    if (!s.ok() && IsOutOfSpace(s)) return OutOfSpaceError(store.dir(), need, what, advice, s);
    return s;
  };

  IngestReport report;
  int64_t batches_committed = 0;
  for (const std::string& path : paths) {
    ASSIGN_OR_RETURN(SourceState state, store.Source(format, path));
    progress.current_source = path;
    if (state.complete) {
      ++report.skipped_sources;
      progress.bytes_done += FileSize(path);
      VLOG_INFO("{}: already ingested ({} samples), skipping", path, state.ingested);
      continue;
    }
    std::unique_ptr<RecordReader> reader;
    if (options.format == SourceFormat::kJsonl) {
      ASSIGN_OR_RETURN(reader, OpenJsonl(path, options.read_limits));
    } else if (options.format == SourceFormat::kLlava) {
      ASSIGN_OR_RETURN(reader, OpenLlava(path, options.read_limits));
    } else {
      ASSIGN_OR_RETURN(reader, OpenImg2DatasetTar(path, options.read_limits));
    }
    // Skip what earlier runs committed.
    RawRecord raw;
    for (uint64_t i = 0; i < state.next_ordinal; ++i) {
      ASSIGN_OR_RETURN(bool more, reader->Next(&raw));
      if (!more) return CorruptionError(fmt::format("'{}' has fewer records ({}) than an earlier ingest stored ({}): "
                                                    "did the file change?", path, i, state.next_ordinal));
    }
    const uint64_t start_bytes = progress.bytes_done;
    // The next batch is read on its own thread while this one is validated and committed.
    struct Read {
      Status status;
      std::vector<RawRecord> raws;
      bool end = false;
      uint64_t bytes = 0;  // reader position after this batch (read on the reader's thread)
    };
    auto read_batch = [&reader, &options]() {
      Read r;
      uint64_t held = 0;
      while (static_cast<int>(r.raws.size()) < options.batch_size && held < options.max_batch_bytes) {
        RawRecord rec;
        auto more = reader->Next(&rec);
        if (!more.ok()) {
          r.status = more.status();
          return r;
        }
        if (!*more) {
          r.end = true;
          break;
        }
        held += RecordBytes(rec);
        r.raws.push_back(std::move(rec));
      }
      r.bytes = reader->bytes_read();
      return r;
    };
    // Three stages overlap: reading batch N+1, validating batch N, committing batch N-1.
    // Batch N's duplicate check waits for batch N-1's commit, so it sees every earlier id.
    std::future<Read> pending = std::async(std::launch::async, read_batch);
    std::future<Status> committing;
    uint64_t committed_bytes = 0;
    auto finish_commit = [&]() -> Status {
      if (!committing.valid()) return Status::OK();
      RETURN_IF_ERROR(space(committing.get()));
      ++batches_committed;
      MaybeKill({{"ingest-batch", batches_committed}});
      if (options.flush_every_batches > 0 && batches_committed % options.flush_every_batches == 0)
        RETURN_IF_ERROR(space(store.Flush()));
      progress.bytes_done = start_bytes + committed_bytes;
      progress.records = report.records;
      progress.ingested = report.ingested;
      progress.quarantined = report.quarantined;
      progress.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      if (options.on_progress) options.on_progress(progress);
      return Status::OK();
    };
    bool end = false;
    while (!end) {
      Read got = pending.get();
      RETURN_IF_ERROR(got.status);
      end = got.end;
      const uint64_t bytes_after = end ? FileSize(path) : got.bytes;
      std::vector<RawRecord> raws = std::move(got.raws);
      if (!end) pending = std::async(std::launch::async, read_batch);

      // Validate in parallel, each thread taking the next record when it is done with one:
      // the previous batch's commit runs meanwhile and slows whichever thread shares its
      // core, so a fixed split (records t, t + threads, ...) left the other one idle at the end.
      std::vector<Sample> samples(raws.size());
      std::vector<std::pair<std::string, std::string>> verdicts(raws.size());
      std::vector<std::future<void>> workers;
      std::atomic<size_t> next_record{0};
      for (int t = 0; t < threads; ++t) {
        workers.push_back(std::async(std::launch::async, [&] {
          for (size_t i; (i = next_record.fetch_add(1)) < raws.size();) verdicts[i] = Validate(raws[i], options.jpeg_limits, &samples[i]);
        }));
      }
      for (auto& w : workers) w.get();
      RETURN_IF_ERROR(finish_commit());

      auto batch = std::make_shared<ShardStore::Batch>();
      std::set<std::string> batch_ids;
      for (size_t i = 0; i < raws.size(); ++i) {
        auto& [reason, detail] = verdicts[i];
        if (reason.empty()) {
          ASSIGN_OR_RETURN(auto existing, store.FindId(format, raws[i].id));
          if (existing || batch_ids.count(raws[i].id)) {
            reason = "duplicate_id";
            detail = existing ? fmt::format("id '{}' is already stored as sample {}", raws[i].id, *existing)
                              : fmt::format("id '{}' appears twice in this batch", raws[i].id);
          }
        }
        if (!reason.empty()) {
          batch->quarantine.push_back({path, raws[i].ordinal, raws[i].id, reason, detail, raws[i].byte_offset});
          ++state.quarantined[reason];
          ++report.reasons[reason];
          ++report.quarantined;
          continue;
        }
        Sample& s = samples[i];
        s.record.source_format = format;
        s.record.source_file = path;
        s.record.source_ordinal = raws[i].ordinal;
        batch_ids.insert(raws[i].id);
        state.image_bytes += s.image.size();
        report.image_bytes += s.image.size();
        ++state.ingested;
        ++report.ingested;
        batch->samples.push_back(std::move(s));
      }
      report.records += raws.size();
      state.next_ordinal += raws.size();
      state.complete = end;
      if (end) state.reported = reader->Reported();
      batch->source = state;
      committed_bytes = bytes_after;
      committing = std::async(std::launch::async, [&store, batch] { return store.Commit(*batch); });
    }
    RETURN_IF_ERROR(finish_commit());
    progress.bytes_done = start_bytes + FileSize(path);
  }
  // The manifest describes the final state; one flush at the end makes it all durable
  // (before it, RocksDB's atomic flushes keep progress and data together).
  RETURN_IF_ERROR(space(store.WriteManifest()));
  RETURN_IF_ERROR(space(store.Flush()));
  report.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return report;
}

}  // namespace vlorch::sharding
