// Deterministic, resumable sample order (docs/dataflow.md).
//
// One dataset (a shard store of N samples in shards of S):
//   epoch order = shards permuted by a seeded shuffle, their samples concatenated, then a
//   seeded shuffle inside each consecutive window of W positions.
// The order depends on (N, S, W, seed, epoch) only, never on the world size. Position p of
// the order maps to a sample index in O(W) time with no data read, so resuming from a
// cursor skips the consumed samples without reading or decoding them.
//
// Placement: step t of a dp group of size n with per-rank batch b consumes the n*b
// positions after the cursor; rank r takes the contiguous b at [r*b, (r+1)*b). Near the
// end of an epoch the remaining R < n*b positions are split as evenly as possible. The cursor
// is the global position, so a run checkpointed at one dp size resumes at another and still
// sees every remaining sample of the epoch exactly once.
//
// Token balancing (optional, the pipeline's default for dp > 1): the same slots of a step are
// redistributed among the ranks so that each keeps its sample count and the ranks' token sums
// are close (BalanceSlots). The cursor and the step's set of samples do not change.
//
// Mixtures of several datasets with weights: slot k of the mixed stream goes to the source
// with the largest deficit w_i*(k+1) - taken_i + offset_i (offsets seeded, in [0, 1)), so each
// source's share of any window of consecutive slots stays within a couple of samples of its
// weight. Each source walks its own order with its own epochs. The scheduler's whole state
// is the per-source counts, which the cursor carries.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "common/status.h"

namespace vlorch::dataflow {

struct OrderOptions {
  uint64_t num_samples = 0;
  // Samples per shard of the store. Default 4096.
  uint64_t shard_size = 4096;
  // Shuffle window in positions; 1 keeps shard order. Default 8192.
  uint64_t window = 8192;
  uint64_t seed = 0;

  Status Validate() const;
};

// The order of one dataset, one epoch at a time.
class SampleOrder {
 public:
  static StatusOr<SampleOrder> Create(const OrderOptions& options);
  uint64_t size() const { return options_.num_samples; }
  // The sample index at `position` (< size()) of `epoch`.
  uint64_t At(uint64_t epoch, uint64_t position) const;

 private:
  explicit SampleOrder(const OrderOptions& o) : options_(o) {}
  OrderOptions options_;
  // Cache of the last computed (epoch) shard permutation and (epoch, window) permutation.
  mutable uint64_t shard_perm_epoch_ = ~0ull;
  mutable std::vector<uint64_t> shard_perm_;
  mutable uint64_t short_at_ = 0;  // where the (possibly short) last shard sits in shard_perm_
  mutable uint64_t window_epoch_ = ~0ull, window_index_ = ~0ull;
  mutable std::vector<uint32_t> window_perm_;
};

// Where a mixed stream stands: everything needed to continue it exactly.
struct Cursor {
  uint64_t slot = 0;               // slots consumed by the whole dp group
  std::vector<uint64_t> taken;     // per source: samples drawn so far (over all epochs)

  std::string Serialize() const;   // "v1;slot=123;taken=80,35,8"
  static StatusOr<Cursor> Parse(const std::string& text);
  bool operator==(const Cursor& o) const { return slot == o.slot && taken == o.taken; }
};

struct SourceSample {
  int source = 0;
  uint64_t epoch = 0;
  uint64_t index = 0;  // sample index in that source's store
};

// A weighted mixture of sources (one source: weight 1, plain epochs).
class MixedStream {
 public:
  static StatusOr<MixedStream> Create(const std::vector<OrderOptions>& sources, const std::vector<double>& weights,
                                      uint64_t seed);
  int num_sources() const { return static_cast<int>(orders_.size()); }
  // The source chosen for the next slot after `c`.
  int NextSource(const Cursor& c) const;
  // Advances `c` by one slot and returns the sample it draws.
  SourceSample Take(Cursor* c) const;
  // Every slot of the next step of a dp group of `dp` ranks with per-rank batch `batch`, in
  // slot order, and the cursor after it; rank r's contiguous share is RankSlice(size, dp, r).
  // For a single source the step ends with the current epoch (its short tail is split evenly
  // across ranks); mixtures have no epoch boundary.
  std::vector<SourceSample> NextGroupStep(const Cursor& c, int dp, uint64_t batch, Cursor* after) const;
  Cursor Start() const;

 private:
  std::vector<SampleOrder> orders_;
  std::vector<double> weights_;   // normalised
  std::vector<double> offsets_;   // seeded, in [0, 1)
};

// Rank r's contiguous share [first, second) of a group step of `slots` slots.
std::pair<uint64_t, uint64_t> RankSlice(uint64_t slots, int dp, int rank);

// Assigns each slot of a step to a rank: rank r receives exactly capacity[r] slots, and the
// ranks' sums of `cost` are balanced by the longest-first greedy rule (each slot, costliest
// first, goes to the least loaded rank with room; ties: the earlier slot, the lower rank).
// The total of `capacity` must equal cost.size(). Returns the owner of each slot.
std::vector<int> BalanceSlots(const std::vector<int64_t>& cost, const std::vector<uint64_t>& capacity);

}  // namespace vlorch::dataflow
