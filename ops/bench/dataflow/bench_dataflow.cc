// Samples/s of vlorch's data pipeline on a shard store, and the raw libjpeg-turbo decode
// rate of the same JPEGs (the limit). The Python peer runs in ops/bench/dataflow.sh.
//
// usage: bench_dataflow STORE WORKERS BATCH SAMPLES
// Tokenisation is byte-level on both sides (image work dominates; the same for the peer).
#include <turbojpeg.h>

#include <chrono>
#include <cstdio>
#include <thread>
#include <vector>

#include "dataflow/image.h"
#include "dataflow/pipeline.h"
#include "sharding/shard_store.h"

namespace {
class ByteTokenizer : public vlorch::dataflow::Tokenizer {
 public:
  std::vector<int32_t> EncodeText(std::string_view text) const override {
    std::vector<int32_t> out;
    for (unsigned char c : text) out.push_back(c);
    return out;
  }
};
double Now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }
}  // namespace

int main(int argc, char** argv) {
  if (argc < 5) return 2;
  const std::string store = argv[1];
  const int workers = std::atoi(argv[2]);
  const int batch = std::atoi(argv[3]);
  const long samples = std::atol(argv[4]);

  // Raw decode limit: full-size decode of every image, `workers` threads.
  vlorch::sharding::ShardStoreOptions ro;
  ro.read_only = true;
  auto s = vlorch::sharding::ShardStore::Open(store, ro);
  if (!s.ok()) return 1;
  std::vector<std::string> jpegs;
  for (uint64_t i = 0; i < (*s)->num_samples() && static_cast<long>(jpegs.size()) < samples; ++i)
    jpegs.push_back((*s)->Get(i, true)->image);
  double t0 = Now();
  std::vector<std::thread> ts;
  for (int w = 0; w < workers; ++w)
    ts.emplace_back([&, w] {
      tjhandle h = tjInitDecompress();
      std::vector<unsigned char> buf;
      for (size_t i = w; i < jpegs.size(); i += workers) {
        int W, H, ss, cs;
        auto* d = reinterpret_cast<const unsigned char*>(jpegs[i].data());
        tjDecompressHeader3(h, d, jpegs[i].size(), &W, &H, &ss, &cs);
        buf.resize(static_cast<size_t>(W) * H * 3);
        tjDecompress2(h, d, jpegs[i].size(), buf.data(), W, 0, H, TJPF_RGB, 0);
      }
      tjDestroy(h);
    });
  for (auto& t : ts) t.join();
  const double raw_sps = jpegs.size() / (Now() - t0);

  // The same threads running only the image work of the pipeline (decode + CLIP
  // preprocessing into a float buffer): what the pipeline adds beyond it is reading the
  // store, tokenising, collating and handing batches over.
  t0 = Now();
  ts.clear();
  for (int w = 0; w < workers; ++w)
    ts.emplace_back([&, w] {
      std::vector<float> out(3 * 224 * 224);
      for (size_t i = w; i < jpegs.size(); i += workers)
        (void)vlorch::dataflow::DecodeClipFloat(jpegs[i], vlorch::dataflow::ImageOptions{}, out.data());
    });
  for (auto& t : ts) t.join();
  const double image_sps = jpegs.size() / (Now() - t0);

  // Per-image cost on one thread, in alternating rounds (this VM drifts between runs): raw
  // full decode, and the CLIP preprocessing that decodes only the crop's region or all of it.
  std::vector<double> best(3, 1e30);
  {
    tjhandle h = tjInitDecompress();
    std::vector<unsigned char> buf;
    std::vector<float> out(3 * 224 * 224);
    vlorch::dataflow::ImageOptions crop, full;
    full.decode_only_crop = false;
    const size_t n = std::min<size_t>(jpegs.size(), 400);
    for (int round = 0; round < 5; ++round) {
      for (int arm = 0; arm < 3; ++arm) {
        const double a = Now();
        for (size_t i = 0; i < n; ++i) {
          if (arm == 0) {
            int W, H, ss, cs;
            auto* d = reinterpret_cast<const unsigned char*>(jpegs[i].data());
            tjDecompressHeader3(h, d, jpegs[i].size(), &W, &H, &ss, &cs);
            buf.resize(static_cast<size_t>(W) * H * 3);
            tjDecompress2(h, d, jpegs[i].size(), buf.data(), W, 0, H, TJPF_RGB, 0);
          } else {
            (void)vlorch::dataflow::DecodeClipFloat(jpegs[i], arm == 1 ? crop : full, out.data());
          }
        }
        best[arm] = std::min(best[arm], (Now() - a) / n * 1e6);
      }
    }
    tjDestroy(h);
  }

  ByteTokenizer tok;
  vlorch::dataflow::PipelineOptions o;
  o.stores = {store};
  o.batch_size = batch;
  o.workers = workers;
  o.prefetch = 4;
  o.tokenizer = &tok;
  o.prompt_template = *vlorch::dataflow::BuiltinTemplate("llava_plain");
  auto p = vlorch::dataflow::DataPipeline::Open(o);
  if (!p.ok()) {
    std::fprintf(stderr, "%s\n", p.status().ToString().c_str());
    return 1;
  }
  long got = 0;
  t0 = Now();
  while (got < samples) {
    auto b = (*p)->Next();
    if (!b.ok()) return 1;
    got += static_cast<long>(b->batch.keys.size());
  }
  const double sps = got / (Now() - t0);
  auto m = (*p)->metrics();
  std::printf("vlorch pipeline: %ld samples, %d workers, batch %d: %.0f samples/s (consumer waited %.2f s)\n", got,
              workers, batch, sps, m.wait_seconds);
  std::printf("raw libjpeg-turbo full decode, same images, %d threads: %.0f images/s\n", workers, raw_sps);
  std::printf("decode + CLIP preprocessing alone, same images, %d threads: %.0f images/s\n", workers, image_sps);
  std::printf("one thread, best of 5 rounds, us per image: raw full decode %.0f; decode + CLIP preprocessing %.0f "
              "(decoding only the crop's region), %.0f (decoding all of it)\n",
              best[0], best[1], best[2]);
  std::printf("summary vlorch_sps=%.1f raw_sps=%.1f\n", sps, raw_sps);
  return 0;
}
