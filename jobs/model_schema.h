// The parameters a ModelConfig builds, by Hugging Face name and shape, computed without
// LibTorch. The CLI and the spec validator use it to count parameters, to check that every
// trainable / learning-rate pattern names something, and to check that a transform finds the
// modules it moves. worker_train_test checks it against the LibTorch model, name for name.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "jobs/model_config.h"

namespace vlorch {

struct ParameterShape {
  std::string name;
  std::vector<int64_t> shape;
  int64_t numel() const {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    return n;
  }
};

// Every parameter of the model, sorted by name.
std::vector<ParameterShape> ModelParameters(const ModelConfig& config);

// The modules a model is made of, as name prefixes: "vision_model", "qformer" (with
// "query_tokens"), "language_projection", "language_model".
bool HasModule(const ModelConfig& config, const std::string& module);

}  // namespace vlorch
