// Loading Hugging Face safetensors weights into a module by name.
//
// `path` is a .safetensors file, or a directory holding model.safetensors or a sharded
// checkpoint (model.safetensors.index.json, whose weight_map names the shard of every tensor).
// Every name in the files, with `prefix` prepended, must be a parameter of the module, and
// every parameter under `prefix` must be in the files, with the same shape. Otherwise nothing
// is changed and the error lists the missing, unexpected and mis-shaped names (up to 20 of
// each, with counts) and the file each came from. A tensor stored in another floating dtype
// (F16, BF16, F64) is converted to the parameter's dtype. "lm_head.weight" in a file is
// ignored for a model that ties its LM head (the input embedding is the head).
#pragma once

#include <string>
#include <utility>
#include <vector>

#include <torch/torch.h>

#include "common/status.h"
#include "common/safetensors.h"

namespace vlorch::models {

struct LoadReport {
  std::vector<std::string> files;
  int64_t tensors = 0, bytes = 0, converted = 0;
};

StatusOr<LoadReport> LoadWeights(const std::vector<std::pair<std::string, torch::Tensor>>& params,
                                 const std::string& path, const std::string& prefix);

// The files a weights path stands for (one file, model.safetensors, or the shards of an index).
StatusOr<std::vector<std::string>> WeightFiles(const std::string& path);

// A host tensor viewing / copying a safetensors tensor, converted to `dtype`.
StatusOr<torch::Tensor> ToTensor(const safetensors::TensorView& view, torch::ScalarType dtype);
StatusOr<safetensors::Dtype> SafetensorsDtype(torch::ScalarType dtype);
// The LibTorch dtype of a safetensors dtype; InvalidArgument for those vlorch does not load.
StatusOr<torch::ScalarType> TorchDtype(safetensors::Dtype dtype);

}  // namespace vlorch::models
