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

#include <string>
#include <vector>

#include "common/status.h"
#include "dataflow/image.h"
#include "dataflow/prompt_template.h"

namespace vlorch::dataflow {

struct CollateOptions {
  int32_t pad_id = 0;
  // Sequence length rounded up to a multiple of this. Default 8 (tensor-core friendly).
  int pad_to_multiple_of = 8;
  // uint8 images (normalise on the device) instead of float. Default false.
  bool uint8_images = false;
  ImageOptions image;
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
