#include "dataflow/pipeline.h"

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <map>
#include <mutex>
#include <thread>

#include <fmt/format.h>

#include "common/logging.h"
#include "sharding/shard_store.h"

namespace vlorch::dataflow {

Status PipelineOptions::Validate() const {
  if (stores.empty()) return InvalidArgumentError("the data pipeline needs at least one store");
  if (!weights.empty() && weights.size() != stores.size())
    return InvalidArgumentError(fmt::format("{} stores but {} weights", stores.size(), weights.size()));
  if (dp < 1 || rank < 0 || rank >= dp) return InvalidArgumentError(fmt::format("rank {} of dp {} is not valid", rank, dp));
  if (batch_size < 1) return InvalidArgumentError("batch size must be >= 1");
  if (tokenizer == nullptr) return InvalidArgumentError("the data pipeline needs a tokenizer");
  if (workers < 1 || prefetch < 1) return InvalidArgumentError("workers and prefetch must be >= 1");
  if (balance_group < 0) return InvalidArgumentError("balance_group must be >= 0 (0: the whole dp group)");
  if (!start.taken.empty() && start.taken.size() != stores.size())
    return InvalidArgumentError(fmt::format("the cursor has {} sources but the mixture has {}", start.taken.size(),
                                            stores.size()));
  return prompt_template.Validate();
}

struct DataPipeline::Rep {
  PipelineOptions options;
  std::vector<std::unique_ptr<sharding::ShardStore>> stores;
  std::unique_ptr<MixedStream> stream;

  mutable std::mutex mu;
  std::condition_variable cv;
  Cursor cursor;             // after the last reserved step
  uint64_t reserved = 0;     // steps handed to workers
  uint64_t consumed = 0;     // steps returned by Next()
  std::map<uint64_t, StatusOr<PipelineBatch>> ready;
  bool stopping = false;
  PipelineMetrics metrics;
  std::chrono::steady_clock::time_point opened = std::chrono::steady_clock::now();
  std::vector<std::thread> threads;

  // A sample's share of the step's work: its token count after template and tokenizer. A
  // sample that will be skipped costs 0. Every rank of a balance group computes the same.
  StatusOr<int64_t> TokenCost(const SourceSample& s) {
    auto got = stores[s.source]->Get(s.index, /*with_image=*/false);
    if (!got.ok()) {
      if (got.status().code() == StatusCode::kCorruption) return int64_t{0};  // its owner logs and skips it
      return got.status();
    }
    auto enc = EncodeSample(options.prompt_template, *options.tokenizer, got->record, options.max_len);
    return enc.ok() ? static_cast<int64_t>(enc->input_ids.size()) : int64_t{0};
  }

  // This rank's samples of a group step: its contiguous slice, or its token-balanced share
  // of its balance group's slices.
  StatusOr<std::vector<SourceSample>> Place(const std::vector<SourceSample>& group) {
    const int dp = options.dp, rank = options.rank;
    if (!options.balance_tokens || dp == 1) {
      const auto [lo, hi] = RankSlice(group.size(), dp, rank);
      return std::vector<SourceSample>(group.begin() + static_cast<std::ptrdiff_t>(lo),
                                       group.begin() + static_cast<std::ptrdiff_t>(hi));
    }
    const int size = options.balance_group > 0 ? std::min(options.balance_group, dp) : dp;
    const int first = rank / size * size, end = std::min(dp, first + size);  // the group: ranks [first, end)
    const uint64_t lo = RankSlice(group.size(), dp, first).first, hi = RankSlice(group.size(), dp, end - 1).second;
    std::vector<uint64_t> capacity;
    for (int r = first; r < end; ++r) {
      const auto [a, b] = RankSlice(group.size(), dp, r);
      capacity.push_back(b - a);
    }
    std::vector<int64_t> cost(hi - lo);
    for (uint64_t k = lo; k < hi; ++k) {
      ASSIGN_OR_RETURN(cost[k - lo], TokenCost(group[k]));
    }
    const std::vector<int> owner = BalanceSlots(cost, capacity);
    std::vector<SourceSample> mine;
    for (uint64_t k = lo; k < hi; ++k)
      if (owner[k - lo] == rank - first) mine.push_back(group[k]);
    return mine;
  }

  StatusOr<PipelineBatch> Build(const std::vector<SourceSample>& plan, const Cursor& after) {
    std::vector<CollateInput> inputs;
    uint64_t rejected = 0, corrupt = 0;
    for (const SourceSample& s : plan) {
      auto got = stores[s.source]->Get(s.index, /*with_image=*/true);
      if (!got.ok() && got.status().code() == StatusCode::kCorruption) {
        // A damaged record (checksum mismatch, missing image) costs this sample only; the
        // store stays usable and `vlorch shards verify` lists what is damaged.
        VLOG_WARNING("skipping sample {} of {}: {}", s.index, options.stores[s.source], got.status().message());
        ++corrupt;
        continue;
      }
      if (!got.ok()) return got.status();
      sharding::Sample sample = std::move(got).value();
      auto enc = EncodeSample(options.prompt_template, *options.tokenizer, sample.record, options.max_len);
      if (!enc.ok()) {
        ++rejected;
        continue;
      }
      CollateInput in;
      in.key = fmt::format("{}:{}", s.source, sample.record.id);
      in.encoded = std::move(enc).value();
      in.jpeg = std::move(sample.image);
      inputs.push_back(std::move(in));
    }
    PipelineBatch out;
    out.cursor_after = after;
    if (!inputs.empty()) {
      auto b = Collate(inputs, options.collate);
      if (b.ok()) out.batch = std::move(b).value();
      else out.batch.skipped_images = static_cast<int>(inputs.size());  // every image failed
    }
    std::lock_guard<std::mutex> lock(mu);
    metrics.skipped_samples += rejected;
    metrics.corrupt_samples += corrupt;
    metrics.skipped_images += out.batch.skipped_images;
    metrics.samples += out.batch.keys.size();
    return out;
  }

  void Work() {
    for (;;) {
      std::vector<SourceSample> group;
      Cursor after;
      uint64_t step;
      {
        std::unique_lock<std::mutex> lock(mu);
        cv.wait(lock, [&] { return stopping || reserved - consumed < static_cast<uint64_t>(options.prefetch); });
        if (stopping) return;
        step = reserved++;
        group = stream->NextGroupStep(cursor, options.dp, options.batch_size, &after);
        cursor = after;
      }
      StatusOr<std::vector<SourceSample>> plan = Place(group);
      StatusOr<PipelineBatch> result = plan.ok() ? Build(*plan, after) : StatusOr<PipelineBatch>(plan.status());
      {
        std::lock_guard<std::mutex> lock(mu);
        ready.emplace(step, std::move(result));
      }
      cv.notify_all();
    }
  }
};

DataPipeline::DataPipeline(std::unique_ptr<Rep> rep) : rep_(std::move(rep)) {}

DataPipeline::~DataPipeline() {
  {
    std::lock_guard<std::mutex> lock(rep_->mu);
    rep_->stopping = true;
  }
  rep_->cv.notify_all();
  for (auto& t : rep_->threads) t.join();
}

StatusOr<std::unique_ptr<DataPipeline>> DataPipeline::Open(const PipelineOptions& options) {
  RETURN_IF_ERROR(options.Validate());
  auto rep = std::make_unique<Rep>();
  rep->options = options;
  // Batches in flight (at most `prefetch`) plus the one the consumer trains on and the one
  // before it, which autograd may still hold.
  if (!rep->options.collate.staging_pool)
    rep->options.collate.staging_pool = std::make_shared<StagingPool>(static_cast<size_t>(options.prefetch) + 2);
  std::vector<OrderOptions> orders;
  for (const std::string& dir : options.stores) {
    sharding::ShardStoreOptions so;
    so.read_only = true;
    ASSIGN_OR_RETURN(auto store, sharding::ShardStore::Open(dir, so));
    OrderOptions oo;
    oo.num_samples = store->num_samples();
    oo.shard_size = store->shard_size();
    oo.window = options.shuffle_window;
    oo.seed = options.seed;
    orders.push_back(oo);
    rep->stores.push_back(std::move(store));
  }
  std::vector<double> weights = options.weights.empty() ? std::vector<double>(orders.size(), 1.0) : options.weights;
  ASSIGN_OR_RETURN(MixedStream stream, MixedStream::Create(orders, weights, options.seed));
  rep->stream = std::make_unique<MixedStream>(std::move(stream));
  rep->cursor = options.start.taken.empty() ? rep->stream->Start() : options.start;
  std::unique_ptr<DataPipeline> p(new DataPipeline(std::move(rep)));
  for (int i = 0; i < options.workers; ++i) p->rep_->threads.emplace_back([r = p->rep_.get()] { r->Work(); });
  return p;
}

StatusOr<PipelineBatch> DataPipeline::Next() {
  Rep& r = *rep_;
  const auto t0 = std::chrono::steady_clock::now();
  std::unique_lock<std::mutex> lock(r.mu);
  r.cv.wait(lock, [&] { return r.ready.count(r.consumed) > 0; });
  r.metrics.wait_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  auto node = r.ready.extract(r.consumed);
  ++r.consumed;
  ++r.metrics.batches;
  lock.unlock();
  r.cv.notify_all();
  return std::move(node.mapped());
}

PipelineMetrics DataPipeline::metrics() const {
  std::lock_guard<std::mutex> lock(rep_->mu);
  PipelineMetrics m = rep_->metrics;
  m.queue_depth = static_cast<int>(rep_->ready.size());
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - rep_->opened).count();
  m.samples_per_second = secs > 0 ? m.samples / secs : 0;
  return m;
}

}  // namespace vlorch::dataflow
