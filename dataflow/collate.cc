#include "dataflow/collate.h"

#include <ATen/ATen.h>
#include <fmt/format.h>

namespace vlorch::dataflow {

at::Tensor StagingPool::Acquire(at::IntArrayRef sizes, at::ScalarType dtype) {
  int64_t numel = 1;
  for (int64_t d : sizes) numel *= d;
  std::lock_guard<std::mutex> lock(mu_);
  at::Tensor* unfit = nullptr;  // a free buffer too small or of another dtype
  for (at::Tensor& b : buffers_) {
    // use_count 1 on both: no batch holds this tensor, and no view of its memory is alive.
    if (b.use_count() != 1 || b.storage().use_count() != 1) continue;
    if (b.scalar_type() == dtype && b.numel() >= numel) return b.narrow(0, 0, numel).view(sizes);
    unfit = &b;
  }
  at::Tensor fresh = at::empty({numel}, dtype);
  if (unfit != nullptr) *unfit = fresh;
  else if (buffers_.size() < capacity_) buffers_.push_back(fresh);
  return fresh.view(sizes);
}

size_t StagingPool::size() const {
  std::lock_guard<std::mutex> lock(mu_);
  return buffers_.size();
}

StatusOr<Batch> Collate(const std::vector<CollateInput>& samples, const CollateOptions& o) {
  if (o.pad_to_multiple_of < 1) return InvalidArgumentError("pad_to_multiple_of must be >= 1");
  const int s = o.image.size;
  const int64_t per_image = 3LL * s * s;
  // Decode images first into a staging tensor sized for all of them; drop failures.
  int64_t with_image = 0;
  for (const auto& in : samples) with_image += in.encoded.image_position >= 0;
  const at::ScalarType dtype = o.uint8_images ? at::kByte : at::kFloat;
  at::Tensor staging = o.staging_pool ? o.staging_pool->Acquire({with_image, 3, s, s}, dtype)
                                      : at::empty({with_image, 3, s, s}, dtype);
  std::vector<const CollateInput*> kept;
  std::vector<int64_t> kept_image_slot;  // index into staging, -1 without image
  Batch b;
  int64_t next = 0;
  for (const auto& in : samples) {
    if (in.encoded.input_ids.size() != in.encoded.labels.size())
      return InvalidArgumentError(fmt::format("sample '{}': {} ids but {} labels", in.key, in.encoded.input_ids.size(),
                                              in.encoded.labels.size()));
    if (in.encoded.image_position < 0) {
      kept.push_back(&in);
      kept_image_slot.push_back(-1);
      continue;
    }
    StatusOr<DecodedImage> d =
        o.uint8_images ? DecodeClipUint8(in.jpeg, o.image, staging.data_ptr<uint8_t>() + next * per_image)
                       : DecodeClipFloat(in.jpeg, o.image, staging.data_ptr<float>() + next * per_image);
    if (!d.ok()) {
      ++b.skipped_images;
      continue;
    }
    kept.push_back(&in);
    kept_image_slot.push_back(next++);
  }
  if (kept.empty()) return InvalidArgumentError("no sample of the batch survived (every image failed to decode)");

  size_t longest = 0;
  for (const auto* in : kept) longest = std::max(longest, in->encoded.input_ids.size());
  const int64_t len = (static_cast<int64_t>(longest) + o.pad_to_multiple_of - 1) / o.pad_to_multiple_of * o.pad_to_multiple_of;
  const int64_t rows = static_cast<int64_t>(kept.size());
  b.input_ids = at::full({rows, len}, o.pad_id, at::kLong);
  b.attention_mask = at::zeros({rows, len}, at::kLong);
  b.labels = at::full({rows, len}, kIgnoreIndex, at::kLong);
  b.image_positions = at::empty({next, 2}, at::kLong);
  int64_t* ids = b.input_ids.data_ptr<int64_t>();
  int64_t* mask = b.attention_mask.data_ptr<int64_t>();
  int64_t* labels = b.labels.data_ptr<int64_t>();
  int64_t* pos = b.image_positions.data_ptr<int64_t>();
  for (int64_t r = 0; r < rows; ++r) {
    const EncodedSample& e = kept[r]->encoded;
    for (size_t k = 0; k < e.input_ids.size(); ++k) {
      ids[r * len + k] = e.input_ids[k];
      mask[r * len + k] = 1;
      labels[r * len + k] = e.labels[k];
    }
    if (kept_image_slot[r] >= 0) {
      pos[kept_image_slot[r] * 2] = r;
      pos[kept_image_slot[r] * 2 + 1] = e.image_position;
    }
    b.keys.push_back(kept[r]->key);
  }
  b.images = next == with_image ? staging : staging.narrow(0, 0, next).contiguous();
  return b;
}

}  // namespace vlorch::dataflow
