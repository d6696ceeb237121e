// Samples/s of vlorch's data pipeline on a shard store, and the raw libjpeg-turbo decode
// rate of the same JPEGs (the limit). The Python peer runs in ops/bench/dataflow.sh.
//
// usage: bench_dataflow STORE WORKERS BATCH SAMPLES
// Tokenisation is byte-level on both sides (image work dominates; the same for the peer).
#include <turbojpeg.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <string>
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
// The baseline: a full-size RGB decode, as any reader of these JPEGs would start.
void RawDecode(tjhandle h, const std::string& jpeg, std::vector<unsigned char>& buf) {
  int w, ht, ss, cs;
  auto* d = reinterpret_cast<const unsigned char*>(jpeg.data());
  tjDecompressHeader3(h, d, jpeg.size(), &w, &ht, &ss, &cs);
  buf.resize(static_cast<size_t>(w) * ht * 3);
  tjDecompress2(h, d, jpeg.size(), buf.data(), w, 0, ht, TJPF_RGB, 0);
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.size() % 2 ? v[v.size() / 2] : 0.5 * (v[v.size() / 2 - 1] + v[v.size() / 2]);
}

// Runs fn(w) on `workers` threads and returns items / seconds.
template <typename Fn>
double Threads(int workers, size_t items, Fn fn) {
  const double t0 = Now();
  std::vector<std::thread> ts;
  for (int w = 0; w < workers; ++w) ts.emplace_back([&fn, w] { fn(w); });
  for (auto& t : ts) t.join();
  return items / (Now() - t0);
}
}  // namespace

int main(int argc, char** argv) {
  if (argc < 5) return 2;
  const std::string store = argv[1];
  const int workers = std::atoi(argv[2]);
  const int batch = std::atoi(argv[3]);
  const long samples = std::atol(argv[4]);
  const int rounds = argc > 5 ? std::atoi(argv[5]) : 5;

  vlorch::sharding::ShardStoreOptions ro;
  ro.read_only = true;
  auto s = vlorch::sharding::ShardStore::Open(store, ro);
  if (!s.ok()) return 1;
  std::vector<std::string> jpegs;
  for (uint64_t i = 0; i < (*s)->num_samples() && static_cast<long>(jpegs.size()) < samples; ++i)
    jpegs.push_back((*s)->Get(i, true)->image);

  // Arm 0, the limit: full-size decode of every image on `workers` threads.
  auto raw = [&] {
    return Threads(workers, jpegs.size(), [&](int w) {
      tjhandle h = tjInitDecompress();
      std::vector<unsigned char> buf;
      for (size_t i = w; i < jpegs.size(); i += workers) {
        RawDecode(h, jpegs[i], buf);
      }
      tjDestroy(h);
    });
  };
  // Arm 1: the same threads running only the pipeline's image work (decode + CLIP
  // preprocessing into a float buffer); what the pipeline adds beyond it is reading the
  // store, tokenising, collating and handing batches over.
  auto image_only = [&] {
    return Threads(workers, jpegs.size(), [&](int w) {
      std::vector<float> out(3 * 224 * 224);
      for (size_t i = w; i < jpegs.size(); i += workers)
        (void)vlorch::dataflow::DecodeClipFloat(jpegs[i], vlorch::dataflow::ImageOptions{}, out.data());
    });
  };
  // Arm 2: the pipeline, opened afresh each round (its start is not timed).
  ByteTokenizer tok;
  vlorch::dataflow::PipelineOptions o;
  o.stores = {store};
  o.batch_size = batch;
  o.workers = workers;
  o.prefetch = 4;
  o.tokenizer = &tok;
  o.prompt_template = *vlorch::dataflow::BuiltinTemplate("llava_plain");
  long got = 0;
  double waited = 0;
  auto pipeline = [&]() -> double {
    auto p = vlorch::dataflow::DataPipeline::Open(o);
    if (!p.ok()) {
      std::fprintf(stderr, "%s\n", p.status().ToString().c_str());
      std::exit(1);
    }
    got = 0;
    const double t0 = Now();
    while (got < samples) {
      auto b = (*p)->Next();
      if (!b.ok()) {
        std::fprintf(stderr, "%s\n", b.status().ToString().c_str());
        std::exit(1);
      }
      got += static_cast<long>(b->batch.keys.size());
    }
    const double sps = got / (Now() - t0);
    waited = (*p)->metrics().wait_seconds;
    return sps;
  };

  // Rounds in rotating arm order; this VM drifts between runs by more than the differences
  // measured here, so ratios are taken within a round and the median over rounds reported.
  std::vector<double> t_raw, t_img, t_pipe, r_pipe, r_img;
  for (int r = 0; r < rounds; ++r) {
    double v[3];
    for (int k = 0; k < 3; ++k) {
      const int arm = (r + k) % 3;
      v[arm] = arm == 0 ? raw() : arm == 1 ? image_only() : pipeline();
    }
    t_raw.push_back(v[0]);
    t_img.push_back(v[1]);
    t_pipe.push_back(v[2]);
    r_pipe.push_back(v[2] / v[0]);
    r_img.push_back(v[1] / v[0]);
  }

  // Per-image cost on one thread, best of 3 alternating rounds: raw full decode, and the
  // CLIP preprocessing that decodes only the crop's region or all of it.
  std::vector<double> best(3, 1e30);
  {
    tjhandle h = tjInitDecompress();
    std::vector<unsigned char> buf;
    std::vector<float> out(3 * 224 * 224);
    vlorch::dataflow::ImageOptions crop, full;
    full.decode_only_crop = false;
    const size_t n = std::min<size_t>(jpegs.size(), 400);
    for (int round = 0; round < 3; ++round) {
      for (int arm = 0; arm < 3; ++arm) {
        const double a = Now();
        for (size_t i = 0; i < n; ++i) {
          if (arm == 0) {
            RawDecode(h, jpegs[i], buf);
          } else {
            (void)vlorch::dataflow::DecodeClipFloat(jpegs[i], arm == 1 ? crop : full, out.data());
          }
        }
        best[arm] = std::min(best[arm], (Now() - a) / n * 1e6);
      }
    }
    tjDestroy(h);
  }

  auto range = [](const std::vector<double>& v) {
    return std::to_string(static_cast<long>(*std::min_element(v.begin(), v.end()))) + "-" +
           std::to_string(static_cast<long>(*std::max_element(v.begin(), v.end())));
  };
  std::printf("%d rounds, arms in rotating order; rates are medians (range over rounds), ratios medians of per-round ratios\n",
              rounds);
  std::printf("vlorch pipeline: %ld samples, %d workers, batch %d: %.0f samples/s (%s; consumer waited %.2f s in the last)\n",
              got, workers, batch, Median(t_pipe), range(t_pipe).c_str(), waited);
  std::printf("raw libjpeg-turbo full decode, same images, %d threads: %.0f images/s (%s)\n", workers, Median(t_raw),
              range(t_raw).c_str());
  std::printf("decode + CLIP preprocessing alone, same images, %d threads: %.0f images/s (%s), %.2f of raw decode\n",
              workers, Median(t_img), range(t_img).c_str(), Median(r_img));
  std::printf("one thread, best of 3 rounds, us per image: raw full decode %.0f; decode + CLIP preprocessing %.0f "
              "(decoding only the crop's region), %.0f (decoding all of it)\n",
              best[0], best[1], best[2]);
  std::printf("summary vlorch_sps=%.1f raw_sps=%.1f ratio_raw=%.3f\n", Median(t_pipe), Median(t_raw), Median(r_pipe));
  return 0;
}
