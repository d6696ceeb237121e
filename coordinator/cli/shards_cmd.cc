#include "coordinator/cli/shards_cmd.h"

#include "coordinator/cli/cli_util.h"

#include <malloc.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <map>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "sharding/dataset_gen.h"
#include "sharding/ingest.h"
#include "sharding/jpeg_check.h"
#include "sharding/shard_store.h"

namespace vlorch::cli {
namespace {

using sharding::ShardStore;
using sharding::ShardStoreOptions;


std::string Duration(double s) {
  int t = static_cast<int>(s);
  return fmt::format("{}:{:02d}:{:02d}", t / 3600, t / 60 % 60, t % 60);
}

// A progress bar on a terminal, a plain line every 5 s otherwise.
void ShowProgress(const sharding::IngestProgress& p, bool tty, double* last_line) {
  double frac = p.bytes_total ? static_cast<double>(p.bytes_done) / p.bytes_total : 0;
  double rate = p.seconds > 0 ? p.records / p.seconds : 0;
  double eta = frac > 0 ? p.seconds * (1 - frac) / frac : 0;
  if (tty) {
    int width = 30, filled = static_cast<int>(frac * width);
    std::fprintf(stderr, "\r[%s%s] %5.1f%% %llu samples, %llu quarantined, %.0f samples/s, ETA %s ",
                 std::string(filled, '=').c_str(), std::string(width - filled, ' ').c_str(), frac * 100,
                 (unsigned long long)p.ingested, (unsigned long long)p.quarantined, rate, Duration(eta).c_str());
  } else if (p.seconds - *last_line >= 5) {
    *last_line = p.seconds;
    std::fprintf(stderr, "ingest: %.1f%% %llu samples, %llu quarantined, %.0f samples/s, ETA %s\n", frac * 100,
                 (unsigned long long)p.ingested, (unsigned long long)p.quarantined, rate, Duration(eta).c_str());
  }
}

nlohmann::json StatJson(const ShardStore& store, const std::vector<sharding::SourceState>& sources) {
  nlohmann::json j;
  j["store"] = store.dir();
  j["format_version"] = sharding::kShardStoreFormatVersion;
  j["samples"] = store.num_samples();
  j["shard_size"] = store.shard_size();
  j["shards"] = store.num_shards();
  std::map<std::string, uint64_t> reasons;
  std::map<std::string, int64_t> reported;
  uint64_t image_bytes = 0, quarantined = 0;
  nlohmann::json src = nlohmann::json::array();
  for (const auto& s : sources) {
    for (const auto& [k, v] : s.quarantined) {
      reasons[k] += v;
      quarantined += v;
    }
    for (const auto& [k, v] : s.reported) reported[k] += v;
    image_bytes += s.image_bytes;
    src.push_back({{"format", s.format}, {"path", s.path}, {"complete", s.complete}, {"records", s.next_ordinal},
                   {"ingested", s.ingested}, {"quarantined", s.quarantined}, {"reported", s.reported},
                   {"image_bytes", s.image_bytes}});
  }
  j["image_bytes"] = image_bytes;
  j["quarantined"] = quarantined;
  j["quarantine_reasons"] = reasons;
  j["reported_by_sources"] = reported;
  j["sources"] = src;
  return j;
}

nlohmann::json SampleJson(const sharding::Sample& s) {
  const auto& r = s.record;
  nlohmann::json j = {{"index", s.index}, {"id", r.id}, {"kind", sharding::SampleKindName(r.kind)},
                      {"source", {{"format", r.source_format}, {"file", r.source_file}, {"record", r.source_ordinal}}},
                      {"image_bytes", r.image_bytes}, {"width", r.width}, {"height", r.height}};
  if (r.kind == sharding::SampleKind::kConversation) {
    nlohmann::json turns = nlohmann::json::array();
    for (const auto& t : r.conversation) turns.push_back({{"from", t.from}, {"value", t.value}});
    j["conversations"] = turns;
  } else {
    j["text"] = r.text;
  }
  if (!r.metadata_json.empty()) {
    try {
      j["metadata"] = nlohmann::json::parse(r.metadata_json);
    } catch (const nlohmann::json::exception&) {
      j["metadata"] = r.metadata_json;
    }
  }
  return j;
}

}  // namespace

void AddShardsCommands(CLI::App& app, int* rc) {
  auto* shards = app.add_subcommand("shards", "build and inspect shard stores");
  shards->require_subcommand(1);

  // ---- ingest
  struct IngestArgs {
    std::string format, store;
    std::vector<std::string> sources;
    uint32_t shard_size = 0;
    int batch = 256, threads = 0, flush_every = 0;
    bool no_space_check = false;
  };
  auto ia = std::make_shared<IngestArgs>();
  auto* ingest = shards->add_subcommand("ingest", "ingest source files into a store (resumable, idempotent)");
  ingest->add_option("--format", ia->format, "llava, img2dataset or jsonl")->required();
  ingest->add_option("--store", ia->store, "store directory (created if missing)")->required();
  ingest->add_option("--shard-size", ia->shard_size, "samples per shard of a new store (default 4096)");
  ingest->add_option("--batch", ia->batch, "records per committed batch")->capture_default_str();
  ingest->add_option("--threads", ia->threads, "validation threads (0: one per core)")->capture_default_str();
  ingest->add_option("--flush-every", ia->flush_every,
                     "make progress durable every N batches (0: when memtables fill, and at the end)")
      ->capture_default_str();
  ingest->add_flag("--no-space-check", ia->no_space_check,
                   "skip the free-space check before writing (a disk that fills up still stops the ingest with "
                   "the space it needs, keeping what it committed)");
  ingest->add_option("sources", ia->sources, "source files")->required();
  ingest->callback([ia, rc] {
    auto format = sharding::ParseSourceFormat(ia->format);
    if (!format.ok()) return void(*rc = Fail(format.status()));
    // Each batch allocates and frees ~batch x image size (12 MB at 256 x 50 KB): glibc would
    // hand the freed top of the heap back at once and page-fault it in again for the next
    // batch (4-5 % of the ingest's CPU in the kernel). Keep it; the process is short-lived.
    mallopt(M_MMAP_THRESHOLD, 32 << 20);
    mallopt(M_TRIM_THRESHOLD, 1 << 30);
    ShardStoreOptions so;
    so.shard_size = ia->shard_size;
    so.bulk_load = true;  // images written once; durability by atomic flushes (docs/shard-store.md)
    auto store = ShardStore::Open(ia->store, so);
    if (!store.ok()) return void(*rc = Fail(store.status()));
    sharding::IngestOptions io;
    io.format = *format;
    io.sources = ia->sources;
    io.batch_size = ia->batch;
    io.threads = ia->threads;
    io.flush_every_batches = ia->flush_every;
    io.check_free_space = !ia->no_space_check;
    const bool tty = isatty(STDERR_FILENO);
    double last_line = 0;
    io.on_progress = [&](const sharding::IngestProgress& p) { ShowProgress(p, tty, &last_line); };
    auto report = sharding::Ingest(**store, io);
    if (tty) std::fprintf(stderr, "\n");
    if (!report.ok()) return void(*rc = Fail(report.status()));
    std::printf("ingested %llu samples from %llu records in %.1f s (%.0f samples/s, %.1f MB/s of images); "
                "quarantined %llu; %llu sources already complete\n",
                (unsigned long long)report->ingested, (unsigned long long)report->records, report->seconds,
                report->records / std::max(report->seconds, 1e-9), report->image_bytes / std::max(report->seconds, 1e-9) / 1e6,
                (unsigned long long)report->quarantined, (unsigned long long)report->skipped_sources);
    for (const auto& [reason, n] : report->reasons) std::printf("  quarantined %-22s %llu\n", reason.c_str(), (unsigned long long)n);
    std::printf("store %s: %llu samples in %llu shards of %u\n", ia->store.c_str(),
                (unsigned long long)(*store)->num_samples(), (unsigned long long)(*store)->num_shards(),
                (*store)->shard_size());
    *rc = 0;
  });

  // ---- stat
  auto store_dir = std::make_shared<std::string>();
  auto as_json = std::make_shared<bool>(false);
  auto* stat = shards->add_subcommand("stat", "totals, sources, quarantine counts");
  stat->add_option("--store", *store_dir, "store directory")->required();
  stat->add_flag("--json", *as_json, "machine-readable output");
  stat->callback([store_dir, as_json, rc] {
    auto store = OpenReadOnly(*store_dir);
    if (!store.ok()) return void(*rc = Fail(store.status()));
    auto sources = (*store)->Sources();
    if (!sources.ok()) return void(*rc = Fail(sources.status()));
    nlohmann::json j = StatJson(**store, *sources);
    auto manifest = (*store)->ReadManifest();
    if (!manifest.ok()) return void(*rc = Fail(manifest.status()));
    if (*manifest) {
      nlohmann::json shard_list = nlohmann::json::array();
      for (const auto& s : (*manifest)->shards)
        shard_list.push_back({{"shard", s.shard}, {"first", s.first}, {"count", s.count}, {"crc32c", s.crc32c}});
      j["shard_list"] = shard_list;
      j["manifest_samples"] = (*manifest)->samples;
    }
    if (*as_json) {
      std::printf("%s\n", j.dump(2).c_str());
    } else {
      std::printf("store        %s (format %d)\n", store_dir->c_str(), sharding::kShardStoreFormatVersion);
      std::printf("samples      %llu in %llu shards of %u\n", (unsigned long long)(*store)->num_samples(),
                  (unsigned long long)(*store)->num_shards(), (*store)->shard_size());
      std::printf("image bytes  %llu\n", j["image_bytes"].get<unsigned long long>());
      std::printf("quarantined  %llu\n", j["quarantined"].get<unsigned long long>());
      for (auto& [k, v] : j["quarantine_reasons"].items()) std::printf("  %-24s %llu\n", k.c_str(), v.get<unsigned long long>());
      for (const auto& s : *sources)
        std::printf("source %s [%s]%s: %llu records, %llu ingested\n", s.path.c_str(), s.format.c_str(),
                    s.complete ? "" : " (incomplete: re-run the ingest)", (unsigned long long)s.next_ordinal,
                    (unsigned long long)s.ingested);
      for (auto& [k, v] : j["reported_by_sources"].items())
        std::printf("reported by sources: %-20s %lld\n", k.c_str(), v.get<long long>());
    }
    *rc = 0;
  });

  // ---- quarantine
  auto qdir = std::make_shared<std::string>();
  auto qjson = std::make_shared<bool>(false);
  auto* quarantine = shards->add_subcommand("quarantine", "list rejected records and why");
  quarantine->add_option("--store", *qdir, "store directory")->required();
  quarantine->add_flag("--json", *qjson, "JSON lines output");
  quarantine->callback([qdir, qjson, rc] {
    auto store = OpenReadOnly(*qdir);
    if (!store.ok()) return void(*rc = Fail(store.status()));
    Status s = (*store)->ForEachQuarantined([&](const sharding::QuarantineEntry& q) {
      if (*qjson) {
        std::printf("%s\n", nlohmann::json({{"file", q.source_file}, {"record", q.ordinal}, {"id", q.id},
                                            {"reason", q.reason}, {"detail", q.detail}, {"byte_offset", q.byte_offset}})
                                .dump()
                                .c_str());
      } else {
        std::printf("%s record %llu (id %s, byte %lld): %s: %s\n", q.source_file.c_str(), (unsigned long long)q.ordinal,
                    q.id.c_str(), (long long)q.byte_offset, q.reason.c_str(), q.detail.c_str());
      }
      return true;
    });
    *rc = s.ok() ? 0 : Fail(s);
  });

  // ---- cat
  struct CatArgs {
    std::string store, key, image_out;
    int64_t index = -1;
  };
  auto ca = std::make_shared<CatArgs>();
  auto* cat = shards->add_subcommand("cat", "print one sample as JSON");
  cat->add_option("--store", ca->store, "store directory")->required();
  cat->add_option("key", ca->key, "the sample's source id/key");
  cat->add_option("--index", ca->index, "the sample's index in the store");
  cat->add_option("--image-out", ca->image_out, "also write its image bytes to this file");
  cat->callback([ca, rc] {
    auto store = OpenReadOnly(ca->store);
    if (!store.ok()) return void(*rc = Fail(store.status()));
    uint64_t index = 0;
    if (ca->index >= 0) {
      index = static_cast<uint64_t>(ca->index);
    } else if (!ca->key.empty()) {
      bool found = false;
      for (const char* f : {"img2dataset", "llava", "jsonl"}) {
        auto hit = (*store)->FindId(f, ca->key);
        if (hit.ok() && *hit) {
          index = **hit;
          found = true;
          break;
        }
      }
      if (!found) return void(*rc = Fail(NotFoundError(fmt::format("no sample with id '{}' in {}", ca->key, ca->store))));
    } else {
      return void(*rc = Fail(InvalidArgumentError("give a KEY or --index N")));
    }
    auto s = (*store)->Get(index, !ca->image_out.empty());
    if (!s.ok()) return void(*rc = Fail(s.status()));
    std::printf("%s\n", SampleJson(*s).dump(2).c_str());
    if (!ca->image_out.empty()) {
      std::ofstream(ca->image_out, std::ios::binary) << s->image;
    }
    *rc = 0;
  });

  // ---- verify
  auto vdir = std::make_shared<std::string>();
  auto* verify = shards->add_subcommand("verify", "re-check every record's and image's checksum and decodability");
  verify->add_option("--store", *vdir, "store directory")->required();
  verify->callback([vdir, rc] {
    auto store = OpenReadOnly(*vdir);
    if (!store.ok()) return void(*rc = Fail(store.status()));
    uint64_t bad = 0;
    for (uint64_t i = 0; i < (*store)->num_samples(); ++i) {
      auto s = (*store)->Get(i, true);
      if (!s.ok()) {
        ++bad;
        std::printf("sample %llu: %s\n", (unsigned long long)i, s.status().message().c_str());
        continue;
      }
      if (s->record.image_bytes > 0) {
        auto j = sharding::CheckJpeg(s->image);
        if (!j.ok) {
          ++bad;
          std::printf("sample %llu (%s): image does not decode: %s\n", (unsigned long long)i, s->record.id.c_str(),
                      j.detail.c_str());
        }
      }
    }
    // Every block and blob record against RocksDB's own checksums.
    if (Status c = (*store)->VerifyStorageChecksums(); !c.ok()) {
      ++bad;
      std::printf("%s\n", c.message().c_str());
    }
    // The manifest's per-shard counts and checksums against the records as they are now.
    auto manifest = (*store)->ReadManifest();
    auto shards = (*store)->ComputeShardInfo();
    if (!manifest.ok() || !shards.ok()) {
      ++bad;
      std::printf("%s\n", (!manifest.ok() ? manifest.status() : shards.status()).message().c_str());
    } else if (!*manifest) {
      ++bad;
      std::printf("no manifest (the last ingest did not finish): re-run it\n");
    } else {
      const auto& listed = (*manifest)->shards;
      if (listed.size() != shards->size()) {
        ++bad;
        std::printf("manifest lists %zu shards, the store has %zu\n", listed.size(), shards->size());
      }
      for (size_t k = 0; k < std::min(listed.size(), shards->size()); ++k) {
        if (listed[k] == (*shards)[k]) continue;
        ++bad;
        std::printf("shard %llu: manifest says %llu samples crc32c %u, store has %llu samples crc32c %u\n",
                    (unsigned long long)(*shards)[k].shard, (unsigned long long)listed[k].count, listed[k].crc32c,
                    (unsigned long long)(*shards)[k].count, (*shards)[k].crc32c);
      }
    }
    std::printf("verify %s: %llu samples, %llu problems: %s\n", vdir->c_str(), (unsigned long long)(*store)->num_samples(),
                (unsigned long long)bad, bad ? "NOT SOUND" : "sound");
    *rc = bad ? kExitFailed : 0;
  });

  // ---- dev make-dataset
  auto* dev = app.add_subcommand("dev", "developer tools");
  struct MakeArgs {
    std::string format = "img2dataset", out;
    int shards = 2, per_shard = 100, lines = 100, min_px = 64, max_px = 320;
    uint64_t seed = 1;
    bool no_bad = false;
    bool grounded = false;
  };
  auto ma = std::make_shared<MakeArgs>();
  auto* make = dev->add_subcommand("make-dataset", "write a synthetic dataset with real JPEGs and every bad case");
  make->add_option("--format", ma->format, "img2dataset, llava (images/ folder), llava-zip (images.zip) or jsonl")->capture_default_str();
  make->add_option("--out", ma->out, "output directory (img2dataset) or file (jsonl)")->required();
  make->add_option("--shards", ma->shards, "tars (img2dataset)")->capture_default_str();
  make->add_option("--per-shard", ma->per_shard, "records per tar")->capture_default_str();
  make->add_option("--lines", ma->lines, "records (jsonl, llava)")->capture_default_str();
  make->add_option("--seed", ma->seed, "random seed")->capture_default_str();
  make->add_option("--min-px", ma->min_px, "smallest image side")->capture_default_str();
  make->add_option("--max-px", ma->max_px, "largest image side")->capture_default_str();
  make->add_flag("--no-bad", ma->no_bad, "only good records");
  make->add_flag("--grounded", ma->grounded,
                 "captions that describe the image (a coloured shape on a background), for captioning experiments");
  make->callback([ma, rc] {
    StatusOr<sharding::GeneratedDataset> g = InvalidArgumentError("unknown --format " + ma->format);
    if (ma->format == "img2dataset") {
      sharding::Img2DatasetGenOptions o;
      o.dir = ma->out;
      o.shards = ma->shards;
      o.per_shard = ma->per_shard;
      o.min_px = ma->min_px;
      o.max_px = ma->max_px;
      o.seed = ma->seed;
      o.bad_cases = !ma->no_bad;
      o.grounded = ma->grounded;
      g = sharding::MakeImg2Dataset(o);
    } else if (ma->format == "llava" || ma->format == "llava-zip") {
      sharding::LlavaGenOptions o;
      o.dir = ma->out;
      o.records = ma->lines;
      o.zip = ma->format == "llava-zip";
      o.min_px = ma->min_px;
      o.max_px = ma->max_px;
      o.seed = ma->seed;
      o.bad_cases = !ma->no_bad;
      g = sharding::MakeLlava(o);
    } else if (ma->format == "jsonl") {
      sharding::JsonlGenOptions o;
      o.path = ma->out;
      o.lines = ma->lines;
      o.seed = ma->seed;
      o.bad_cases = !ma->no_bad;
      o.grounded = ma->grounded;
      g = sharding::MakeJsonl(o);
    }
    if (!g.ok()) return void(*rc = Fail(g.status()));
    nlohmann::json j = {{"files", g->files}, {"records", g->records}, {"good", g->good}, {"bad", g->bad},
                        {"reported", g->reported}};
    std::printf("%s\n", j.dump(2).c_str());
    *rc = 0;
  });
}

}  // namespace vlorch::cli
