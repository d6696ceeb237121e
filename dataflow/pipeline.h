// DataPipeline: shard stores -> batches for one rank, prefetched by worker threads.
//
//   order (MixedStream) -> placement (contiguous, or token-balanced over the dp group)
//   -> read samples (ShardStore) -> template + tokenizer
//   -> collate (images decoded into the batch) -> bounded in-order queue -> Next()
//
// Workers reserve steps in order under a lock (advancing the cursor is cheap integer work),
// build their batches in parallel, and Next() hands them out in step order. At most
// `prefetch` batches are built ahead of the consumer, so memory stays within
// prefetch x (one batch) whatever the dataset size, plus the image buffers of up to
// prefetch + 2 batches that a StagingPool keeps for reuse while the pipeline is open. Each
// batch comes with the cursor after it (for the checkpoint); a pipeline opened from that
// cursor continues with exactly the batches the first would have produced.
//
// Samples whose image does not decode, whose template does not apply, or whose prompt alone
// exceeds max_len are skipped and counted (the batch is that much smaller), never fatal. So
// is a damaged record (a checksum mismatch, a missing image blob): it is logged with its store
// and index and counted in `corrupt_samples`. Other store errors (I/O) come from Next().
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "common/status.h"
#include "dataflow/collate.h"
#include "dataflow/prompt_template.h"
#include "dataflow/sample_order.h"
#include "dataflow/tokenizer.h"

namespace vlorch::dataflow {

struct PipelineOptions {
  std::vector<std::string> stores;  // one per mixture source
  std::vector<double> weights;      // empty: 1 each
  uint64_t seed = 0;
  uint64_t shuffle_window = 8192;
  int dp = 1, rank = 0;
  uint64_t batch_size = 8;          // per rank
  PromptTemplate prompt_template;
  const Tokenizer* tokenizer = nullptr;  // not owned; must outlive the pipeline
  int max_len = 0;                       // 0: no limit
  CollateOptions collate;
  int workers = 2;    // batch-building threads. Default 2.
  int prefetch = 4;   // batches built ahead of the consumer. Default 4.
  // Token balancing over the dp group: each step's samples are redistributed among the ranks
  // so that their token counts (the work of a padding-free model) match; every rank keeps its
  // sample count and the cursor and the step's samples do not change. It costs each rank one
  // record read and one tokenisation per sample of its balance group, in the workers.
  // Default true (nothing to do at dp = 1).
  bool balance_tokens = true;
  // Ranks balanced together: consecutive groups of this many (0: the whole dp group), which
  // bounds that cost at large dp. Default 8.
  int balance_group = 8;
  Cursor start;       // empty: the beginning

  Status Validate() const;
};

struct PipelineMetrics {
  uint64_t batches = 0, samples = 0;
  uint64_t skipped_images = 0, skipped_samples = 0;  // undecodable images; template/length rejects
  uint64_t corrupt_samples = 0;                      // damaged records skipped
  int queue_depth = 0;        // batches ready now
  double wait_seconds = 0;    // time Next() spent waiting: the trainer starved
  double samples_per_second = 0;
};

struct PipelineBatch {
  Batch batch;
  Cursor cursor_after;
};

class DataPipeline {
 public:
  static StatusOr<std::unique_ptr<DataPipeline>> Open(const PipelineOptions& options);
  ~DataPipeline();
  StatusOr<PipelineBatch> Next();
  PipelineMetrics metrics() const;

 private:
  struct Rep;
  explicit DataPipeline(std::unique_ptr<Rep> rep);
  std::unique_ptr<Rep> rep_;
};

}  // namespace vlorch::dataflow
