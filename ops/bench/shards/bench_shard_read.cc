// Random-sample reads from a shard store vs sequential reads of the source tars.
//
// usage: bench_shard_read tar|store STORE SAMPLES TAR...   (one phase per run, so the
// caller can drop the page cache before each); VLORCH_BENCH_READERS=N (default 1): the store
// phase reads with N threads, as a loader's reader pool does
// Baseline: every member of every tar read in order with libarchive (what a tar-streaming
// loader does), counted as samples/s (one sample = one .jpg member). Store: SAMPLES reads of
// uniformly random indices with their images (what a shuffling loader does), split over
// the reader threads. Same process,
// page cache state as the caller leaves it; prints "summary <phase>_sps=X".
#include <archive.h>
#include <archive_entry.h>

#include <atomic>
#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <thread>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "sharding/shard_store.h"

namespace {
double Now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }
}  // namespace

int main(int argc, char** argv) {
  if (argc < 5) {
    std::fprintf(stderr, "usage: %s tar|store STORE SAMPLES TAR...\n", argv[0]);
    return 2;
  }
  const std::string phase = argv[1];
  const std::string dir = argv[2];
  const long samples = std::atol(argv[3]);
  if (phase == "tar") {

  double t0 = Now();
  long tar_samples = 0;
  size_t tar_bytes = 0;
  std::vector<char> buf(1 << 20);
  for (int i = 4; i < argc; ++i) {
    archive* a = archive_read_new();
    archive_read_support_format_tar(a);
    if (archive_read_open_filename(a, argv[i], 1 << 20) != ARCHIVE_OK) return 1;
    archive_entry* e;
    while (archive_read_next_header(a, &e) == ARCHIVE_OK) {
      std::string name = archive_entry_pathname(e);
      la_ssize_t n;
      while ((n = archive_read_data(a, buf.data(), buf.size())) > 0) tar_bytes += n;
      if (name.size() > 4 && name.substr(name.size() - 4) == ".jpg") ++tar_samples;
    }
    archive_read_free(a);
  }
  double tar_s = Now() - t0;
  std::printf("tar sequential: %ld samples, %.1f MB in %.3f s = %.0f samples/s\n", tar_samples, tar_bytes / 1e6,
              tar_s, tar_samples / tar_s);
  std::printf("summary tar_sps=%.1f\n", tar_samples / tar_s);
  return 0;
  }

  vlorch::sharding::ShardStoreOptions o;
  o.read_only = true;
  auto store = vlorch::sharding::ShardStore::Open(dir, o);
  if (!store.ok()) {
    std::fprintf(stderr, "%s\n", store.status().ToString().c_str());
    return 1;
  }
  const uint64_t n = (*store)->num_samples();
  const char* readers = std::getenv("VLORCH_BENCH_READERS");
  const int threads = std::max(1, readers ? std::atoi(readers) : 1);
  std::atomic<size_t> bytes{0};
  std::atomic<bool> failed{false};
  double t0 = Now();
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t) pool.emplace_back([&, t] {
    std::mt19937_64 rng(42 + t);
    for (long i = t; i < samples; i += threads) {
      auto s = (*store)->Get(rng() % n, true);
      if (!s.ok()) {
        std::fprintf(stderr, "%s\n", s.status().ToString().c_str());
        failed = true;
        return;
      }
      bytes += s->image.size();
    }
  });
  for (auto& th : pool) th.join();
  if (failed) return 1;
  double store_s = Now() - t0;
  std::printf("store random, %d reader(s): %ld samples, %.1f MB in %.3f s = %.0f samples/s\n", threads, samples, bytes.load() / 1e6, store_s,
              samples / store_s);
  std::printf("summary store_sps=%.1f\n", samples / store_s);
  return 0;
}
