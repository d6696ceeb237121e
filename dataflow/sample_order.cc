#include "dataflow/sample_order.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <sstream>

#include <fmt/format.h>

namespace vlorch::dataflow {
namespace {

// SplitMix64: a small, well-mixed, portable generator (std:: distributions are not
// guaranteed identical across standard libraries, and the order must be).
struct SplitMix64 {
  uint64_t s;
  uint64_t Next() {
    uint64_t z = (s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  // Uniform in [0, n) without modulo bias (Lemire's method, with rejection).
  uint64_t Below(uint64_t n) {
    unsigned __int128 m = static_cast<unsigned __int128>(Next()) * n;
    uint64_t low = static_cast<uint64_t>(m);
    if (low < n) {
      uint64_t t = (0 - n) % n;
      while (low < t) {
        m = static_cast<unsigned __int128>(Next()) * n;
        low = static_cast<uint64_t>(m);
      }
    }
    return static_cast<uint64_t>(m >> 64);
  }
};

uint64_t Mix(uint64_t a, uint64_t b, uint64_t c) {
  SplitMix64 g{a * 0x100000001b3ull ^ (b + 0x51ed270b) ^ (c << 17)};
  g.Next();
  return g.Next();
}

template <typename T>
void Shuffle(std::vector<T>& v, uint64_t seed) {
  SplitMix64 g{seed};
  for (size_t i = v.size(); i > 1; --i) std::swap(v[i - 1], v[g.Below(i)]);
}

}  // namespace

Status OrderOptions::Validate() const {
  if (shard_size < 1) return InvalidArgumentError("shard size must be >= 1");
  if (window < 1) return InvalidArgumentError("shuffle window must be >= 1");
  if (window > (1ull << 31)) return InvalidArgumentError("shuffle window must be < 2^31");
  return Status::OK();
}

StatusOr<SampleOrder> SampleOrder::Create(const OrderOptions& options) {
  RETURN_IF_ERROR(options.Validate());
  return SampleOrder(options);
}

uint64_t SampleOrder::At(uint64_t epoch, uint64_t position) const {
  const uint64_t n = options_.num_samples, s = options_.shard_size;
  const uint64_t shards = (n + s - 1) / s;
  if (shard_perm_epoch_ != epoch) {
    shard_perm_.resize(shards);
    std::iota(shard_perm_.begin(), shard_perm_.end(), 0);
    Shuffle(shard_perm_, Mix(options_.seed, epoch, 1));
    shard_perm_epoch_ = epoch;
    short_at_ = std::find(shard_perm_.begin(), shard_perm_.end(), shards - 1) - shard_perm_.begin();
    window_index_ = ~0ull;
  }
  // Position in the shard-permuted stream after the window shuffle.
  const uint64_t w = options_.window;
  const uint64_t win = position / w, win_begin = win * w;
  const uint64_t win_len = std::min(w, n - win_begin);
  if (window_epoch_ != epoch || window_index_ != win) {
    window_perm_.resize(win_len);
    std::iota(window_perm_.begin(), window_perm_.end(), 0u);
    Shuffle(window_perm_, Mix(options_.seed, epoch, 2 + win));
    window_epoch_ = epoch;
    window_index_ = win;
  }
  const uint64_t stream_pos = win_begin + window_perm_[position - win_begin];
  // The stream is the permuted shards' samples concatenated; only the last shard may be
  // short, so walk to the shard holding stream_pos.
  const uint64_t last = shards - 1, last_len = n - last * s;
  uint64_t pos = stream_pos, k = 0;
  // Shards before the short one in permuted order each hold s samples.
  const uint64_t short_at = short_at_;
  if (pos < short_at * s) {
    k = pos / s;
    return shard_perm_[k] * s + pos % s;
  }
  pos -= short_at * s;
  if (pos < last_len) return last * s + pos;
  pos -= last_len;
  k = short_at + 1 + pos / s;
  return shard_perm_[k] * s + pos % s;
}

std::string Cursor::Serialize() const {
  std::string t;
  for (size_t i = 0; i < taken.size(); ++i) t += (i ? "," : "") + std::to_string(taken[i]);
  return fmt::format("v1;slot={};taken={}", slot, t);
}

StatusOr<Cursor> Cursor::Parse(const std::string& text) {
  auto bad = [&] {
    return InvalidArgumentError(fmt::format("data cursor '{}' is malformed (expected v1;slot=N;taken=A,B,...)", text));
  };
  if (text.rfind("v1;slot=", 0) != 0) return bad();
  size_t semi = text.find(";taken=", 8);
  if (semi == std::string::npos) return bad();
  Cursor c;
  try {
    size_t used = 0;
    c.slot = std::stoull(text.substr(8, semi - 8), &used);
    if (used != semi - 8) return bad();
    std::stringstream ss(text.substr(semi + 7));
    std::string part;
    while (std::getline(ss, part, ',')) {
      c.taken.push_back(std::stoull(part, &used));
      if (used != part.size()) return bad();
    }
  } catch (const std::exception&) {
    return bad();
  }
  if (c.taken.empty()) return bad();
  return c;
}

StatusOr<MixedStream> MixedStream::Create(const std::vector<OrderOptions>& sources, const std::vector<double>& weights,
                                          uint64_t seed) {
  if (sources.empty()) return InvalidArgumentError("a data mixture needs at least one source");
  if (weights.size() != sources.size())
    return InvalidArgumentError(fmt::format("{} sources but {} weights", sources.size(), weights.size()));
  MixedStream m;
  double total = 0;
  for (double w : weights) {
    if (!(w > 0) || !std::isfinite(w)) return InvalidArgumentError("mixture weights must be positive numbers");
    total += w;
  }
  SplitMix64 g{Mix(seed, 0xabcdef, 3)};
  for (size_t i = 0; i < sources.size(); ++i) {
    if (sources[i].num_samples == 0)
      return InvalidArgumentError(fmt::format("mixture source {} has no samples", i));
    ASSIGN_OR_RETURN(SampleOrder o, SampleOrder::Create(sources[i]));
    m.orders_.push_back(std::move(o));
    m.weights_.push_back(weights[i] / total);
    m.offsets_.push_back(static_cast<double>(g.Next() >> 11) / 9007199254740992.0);
  }
  return m;
}

Cursor MixedStream::Start() const {
  Cursor c;
  c.taken.assign(orders_.size(), 0);
  return c;
}

int MixedStream::NextSource(const Cursor& c) const {
  int best = 0;
  double best_deficit = -1e300;
  for (size_t i = 0; i < orders_.size(); ++i) {
    double d = weights_[i] * static_cast<double>(c.slot + 1) - static_cast<double>(c.taken[i]) + offsets_[i];
    if (d > best_deficit) {
      best_deficit = d;
      best = static_cast<int>(i);
    }
  }
  return best;
}

SourceSample MixedStream::Take(Cursor* c) const {
  const int i = orders_.size() == 1 ? 0 : NextSource(*c);
  const uint64_t n = orders_[i].size();
  const uint64_t k = c->taken[i]++;
  ++c->slot;
  return {i, k / n, orders_[i].At(k / n, k % n)};
}

std::pair<uint64_t, uint64_t> RankSlice(uint64_t slots, int dp, int rank) {
  // [slots*r/dp, slots*(r+1)/dp): b*r when the step is full, an even split of an epoch's tail.
  return {slots * static_cast<uint64_t>(rank) / static_cast<uint64_t>(dp),
          slots * static_cast<uint64_t>(rank + 1) / static_cast<uint64_t>(dp)};
}

std::vector<SourceSample> MixedStream::NextGroupStep(const Cursor& c, int dp, uint64_t batch, Cursor* after) const {
  uint64_t global = static_cast<uint64_t>(dp) * batch;
  if (orders_.size() == 1) {
    const uint64_t n = orders_[0].size();
    const uint64_t left = n - c.taken[0] % n;  // what remains of the current epoch
    global = std::min(global, left);
  }
  std::vector<SourceSample> out;
  out.reserve(global);
  Cursor cur = c;
  for (uint64_t k = 0; k < global; ++k) out.push_back(Take(&cur));
  if (after != nullptr) *after = cur;
  return out;
}

std::vector<int> BalanceSlots(const std::vector<int64_t>& cost, const std::vector<uint64_t>& capacity) {
  std::vector<size_t> by_cost(cost.size());
  for (size_t k = 0; k < by_cost.size(); ++k) by_cost[k] = k;
  std::stable_sort(by_cost.begin(), by_cost.end(), [&](size_t a, size_t b) { return cost[a] > cost[b]; });
  std::vector<int64_t> load(capacity.size(), 0);
  std::vector<uint64_t> room = capacity;
  std::vector<int> owner(cost.size(), -1);
  for (size_t k : by_cost) {
    int best = -1;
    for (size_t r = 0; r < room.size(); ++r)
      if (room[r] > 0 && (best < 0 || load[r] < load[static_cast<size_t>(best)])) best = static_cast<int>(r);
    if (best < 0) break;  // capacities sum to less than the slots: the caller's bug; leave -1
    owner[k] = best;
    load[static_cast<size_t>(best)] += cost[k];
    --room[static_cast<size_t>(best)];
  }
  return owner;
}

}  // namespace vlorch::dataflow
