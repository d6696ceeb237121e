// Random-sample reads from a shard store vs sequential reads of the source tars, and the two
// ceilings this machine puts on the benchmark's ratios.
//
// usage: bench_shard_read tar|store|ideal|validate STORE SAMPLES TAR...   (one phase per
// run, so the caller can drop the page cache before each); VLORCH_BENCH_READERS=N
// (default 1): the store and ideal phases read with N threads, as a loader's reader pool does
// Baseline: every member of every tar read in order with libarchive (what a tar-streaming
// loader does), counted as samples/s (one sample = one .jpg member). Store: every sample read
// once with its image, in a random order (one epoch of a shuffling loader), split over the
// reader threads. Ideal: the tars' own bytes read as a store at the device's limit would
// read them: one pread per sample-sized block, every block once, in a random order, without
// readahead (no lookup, no checksum): the most random reads can give on this disk.
// Validate: every .jpg member, already in memory, put through the ingest's JPEG check on
// `hardware_concurrency` threads: what an ingest on this CPU can reach at best. Same process,
// page cache state as the caller leaves it; prints "summary <phase>_sps=X" (validate also
// "validate_mbps=X").
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

#include <fcntl.h>
#include <unistd.h>

#include "sharding/jpeg_check.h"
#include "sharding/readers.h"
#include "sharding/shard_store.h"

namespace {
double Now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

int Readers() {
  const char* readers = std::getenv("VLORCH_BENCH_READERS");
  return std::max(1, readers ? std::atoi(readers) : 1);
}

// Runs fn(t) on `threads` threads and returns the seconds it took.
template <typename Fn>
double Timed(int threads, Fn fn) {
  double t0 = Now();
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t) pool.emplace_back(fn, t);
  for (auto& th : pool) th.join();
  return Now() - t0;
}

int Ideal(int argc, char** argv, long samples) {
  struct Block {
    int fd;
    off_t offset;
  };
  std::vector<int> fds;
  std::vector<off_t> sizes;
  off_t total = 0;
  for (int i = 4; i < argc; ++i) {
    fds.push_back(::open(argv[i], O_RDONLY));
    if (fds.back() < 0) return 1;
    // No readahead, as a store must read a dataset larger than memory (RocksDB advises the
    // same on its files): with it, each miss would also fetch the next blocks, which a
    // random order reads later from the page cache only while the whole dataset fits there.
    ::posix_fadvise(fds.back(), 0, 0, POSIX_FADV_RANDOM);
    sizes.push_back(::lseek(fds.back(), 0, SEEK_END));
    total += sizes.back();
  }
  // Block size: the tars' bytes per sample, so the ideal store reads as many bytes per sample
  // as the tar stream does.
  const size_t block = static_cast<size_t>(total / samples);
  std::vector<Block> all;
  for (size_t f = 0; f < fds.size(); ++f)
    for (off_t o = 0; o + static_cast<off_t>(block) <= sizes[f]; o += block) all.push_back({fds[f], o});
  std::shuffle(all.begin(), all.end(), std::mt19937_64(7));
  const int threads = Readers();
  std::atomic<size_t> bytes{0};
  double s = Timed(threads, [&](int t) {
    std::vector<char> buf(block);
    for (size_t i = t; i < all.size(); i += threads) bytes += ::pread(all[i].fd, buf.data(), block, all[i].offset);
  });
  std::printf("ideal random reads of the tars' bytes, %d reader(s): %zu blocks of %zu bytes, %.1f MB in %.3f s = %.0f "
              "samples/s\n", threads, all.size(), block, bytes.load() / 1e6, s, all.size() / s);
  std::printf("summary ideal_sps=%.1f\n", all.size() / s);
  for (int fd : fds) ::close(fd);
  return 0;
}

int ValidateAll(int argc, char** argv) {
  // The images as the ingest gets them: through its own img2dataset reader.
  std::vector<std::string> jpegs;
  size_t total = 0;
  for (int i = 4; i < argc; ++i) {
    auto reader = vlorch::sharding::OpenImg2DatasetTar(argv[i]);
    if (!reader.ok()) {
      std::fprintf(stderr, "%s\n", reader.status().ToString().c_str());
      return 1;
    }
    for (vlorch::sharding::RawRecord raw;;) {
      auto more = (*reader)->Next(&raw);
      if (!more.ok()) {
        std::fprintf(stderr, "%s\n", more.status().ToString().c_str());
        return 1;
      }
      if (!*more) break;
      total += raw.image.size();
      jpegs.push_back(std::move(raw.image));
    }
  }
  const int threads = std::max(1u, std::thread::hardware_concurrency());
  std::atomic<size_t> next{0};
  std::atomic<bool> failed{false};
  double s = Timed(threads, [&](int) {
    for (size_t i; (i = next.fetch_add(1)) < jpegs.size();)
      if (!vlorch::sharding::CheckJpeg(jpegs[i]).ok) failed = true;
  });
  if (failed) return 1;
  std::printf("JPEG validation alone, %d threads, images in memory: %zu images, %.1f MB in %.3f s = %.1f MB/s\n",
              threads, jpegs.size(), total / 1e6, s, total / 1e6 / s);
  std::printf("summary validate_mbps=%.1f\n", total / 1e6 / s);
  return 0;
}
}  // namespace

int main(int argc, char** argv) {
  if (argc < 5) {
    std::fprintf(stderr, "usage: %s tar|store STORE SAMPLES TAR...\n", argv[0]);
    return 2;
  }
  const std::string phase = argv[1];
  const std::string dir = argv[2];
  const long samples = std::atol(argv[3]);
  if (phase == "ideal") return Ideal(argc, argv, samples);
  if (phase == "validate") return ValidateAll(argc, argv);
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
  // One epoch: every sample once, in a random order (SAMPLES, when non-zero, caps it).
  std::vector<uint64_t> order((*store)->num_samples());
  for (uint64_t i = 0; i < order.size(); ++i) order[i] = i;
  std::shuffle(order.begin(), order.end(), std::mt19937_64(42));
  if (samples > 0 && static_cast<size_t>(samples) < order.size()) order.resize(samples);
  const int threads = Readers();
  std::atomic<size_t> bytes{0};
  std::atomic<bool> failed{false};
  const double store_s = Timed(threads, [&](int t) {
    for (size_t i = t; i < order.size(); i += threads) {
      auto s = (*store)->Get(order[i], true);
      if (!s.ok()) {
        std::fprintf(stderr, "%s\n", s.status().ToString().c_str());
        failed = true;
        return;
      }
      bytes += s->image.size();
    }
  });
  if (failed) return 1;
  std::printf("store random, %d reader(s): %zu samples, %.1f MB in %.3f s = %.0f samples/s\n", threads,
              order.size(), bytes.load() / 1e6, store_s, order.size() / store_s);
  std::printf("summary store_sps=%.1f\n", order.size() / store_s);
  return 0;
}
