// Collation: encoded samples (+ their JPEG bytes) -> one training batch of tensors.
//
//   input_ids       int64 [B, L]  right-padded with pad_id; L = longest sample, rounded up to
//                                 pad_to_multiple_of
//   attention_mask  int64 [B, L]  1 on real tokens, 0 on padding
//   labels          int64 [B, L]  the samples' labels, kIgnoreIndex on padding
//   images          [N, 3, S, S]  float (CLIP-normalised) or uint8, N = samples with images,
//                                 decoded straight into the tensor's memory
//   image_positions int64 [N, 2]  (row in the batch, index of the first image slot)
// A sample whose image does not decode (a store made by another tool) is dropped from the
// batch and counted in `skipped_images`, never fatal.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstddef>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "common/status.h"
#include "dataflow/image.h"
#include "dataflow/prompt_template.h"

namespace vlorch::dataflow {

// Image staging buffers reused across batches. A batch's float images are ~19 MB (32 x 3 x
// 224 x 224); allocating that afresh per batch is a fresh mmap whose every page faults on
// first write (measured: ~12 % of the pipeline's time). A buffer is handed out again only
// when nothing but the pool refers to it (the consumer dropped the batch and every view of
// it); when none is free a new one is made, kept if the pool holds fewer than `capacity`.
class StagingPool {
 public:
  explicit StagingPool(size_t capacity) : capacity_(capacity) {}
  // A contiguous tensor of `sizes` and `dtype` whose contents are undefined.
  at::Tensor Acquire(at::IntArrayRef sizes, at::ScalarType dtype);
  size_t size() const;  // buffers held

 private:
  mutable std::mutex mu_;
  std::vector<at::Tensor> buffers_;  // flat
  size_t capacity_;
};

struct CollateOptions {
  int32_t pad_id = 0;
  // Sequence length rounded up to a multiple of this. Default 8 (tensor-core friendly).
  int pad_to_multiple_of = 8;
  // uint8 images (normalise on the device) instead of float. Default false.
  bool uint8_images = false;
  ImageOptions image;
  // Where image staging tensors come from. Default none: a fresh tensor per batch.
  std::shared_ptr<StagingPool> staging_pool;
};

struct CollateInput {
  std::string key;         // for logs and `vlorch data inspect`
  EncodedSample encoded;
  std::string jpeg;        // empty for text-only samples
};

struct Batch {
  at::Tensor input_ids, attention_mask, labels, images, image_positions;
  std::vector<std::string> keys;  // per row
  int skipped_images = 0;
};

// InvalidArgument when every sample was dropped or the inputs are inconsistent.
StatusOr<Batch> Collate(const std::vector<CollateInput>& samples, const CollateOptions& options);

}  // namespace vlorch::dataflow
