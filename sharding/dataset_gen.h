// Writes realistic source datasets with real JPEGs (libjpeg-turbo) and every bad case the
// ingest must quarantine, and returns exactly what an ingest must find. For tests, the demo
// and benchmarks (`vlorch dev make-dataset`), so nothing needs a download.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "common/status.h"

namespace vlorch::sharding {

struct GeneratedDataset {
  std::vector<std::string> files;           // the sources to ingest, in order
  uint64_t records = 0;                     // records an ingest will read
  uint64_t good = 0;                        // of which it must store
  std::map<std::string, uint64_t> bad;      // reason -> count it must quarantine
  std::map<std::string, int64_t> reported;  // summed stats-file counts (img2dataset)
};

struct Img2DatasetGenOptions {
  std::string dir;          // created if missing
  int shards = 2;           // 00000.tar, 00001.tar, ...
  int per_shard = 100;      // records per tar, including bad ones
  uint64_t seed = 1;
  bool bad_cases = true;    // one of each bad case per shard; the last tar is truncated
  int min_px = 64;          // image sides drawn from [min_px, max_px]
  int max_px = 320;
  int failed_downloads = 3;  // per shard, absent from the tar but counted in its stats file
  // Captions that describe the image ("a red circle on a blue background at the top left"),
  // so a model can learn to caption; default false (captions independent of the images).
  bool grounded = false;
};
StatusOr<GeneratedDataset> MakeImg2Dataset(const Img2DatasetGenOptions& options);

struct JsonlGenOptions {
  std::string path;
  int lines = 100;  // records, including bad ones
  uint64_t seed = 1;
  bool bad_cases = true;
  bool grounded = false;  // texts in the grounded captions' language (see Img2DatasetGenOptions)
};
StatusOr<GeneratedDataset> MakeJsonl(const JsonlGenOptions& options);

struct LlavaGenOptions {
  std::string dir;            // created if missing; gets chat.json, metadata.json, images
  int records = 100;          // elements of chat.json, including bad ones
  bool zip = false;           // images.zip instead of an images/ folder
  uint64_t seed = 1;
  bool bad_cases = true;
  int min_px = 64, max_px = 320;
};
// As LLaVA-CC3M-Pretrain-595K ships: chat.json (one array), metadata.json, images/ or images.zip.
StatusOr<GeneratedDataset> MakeLlava(const LlavaGenOptions& options);

// How a test JPEG is coded: chroma subsampling (or greyscale) and baseline or progressive.
enum class JpegSampling { k444, k422, k420, k440, kGray };
struct TestJpegFormat {
  JpegSampling sampling = JpegSampling::k420;  // default 4:2:0, as most photos on the web
  bool progressive = false;                    // default baseline
};

// A JPEG of w x h with a seeded pattern, quality 85.
std::string EncodeTestJpeg(int width, int height, uint64_t seed, const TestJpegFormat& format = {});

}  // namespace vlorch::sharding
