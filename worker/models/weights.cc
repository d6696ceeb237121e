#include "worker/models/weights.h"

#include <filesystem>
#include <fstream>
#include <map>
#include <set>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

namespace vlorch::models {
namespace fs = std::filesystem;

StatusOr<std::vector<std::string>> WeightFiles(const std::string& path) {
  std::error_code ec;
  if (!fs::is_directory(path, ec)) {
    if (!fs::exists(path, ec)) return NotFoundError(fmt::format("weights {} do not exist", path));
    return std::vector<std::string>{path};
  }
  const fs::path index = fs::path(path) / "model.safetensors.index.json";
  if (fs::exists(index, ec)) {
    std::ifstream in(index);
    nlohmann::json j = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded() || !j.is_object() || !j.contains("weight_map") || !j["weight_map"].is_object())
      return CorruptionError(fmt::format("{}: not a safetensors index (expected a JSON object with \"weight_map\")",
                                         index.string()));
    std::set<std::string> shards;
    for (auto& [name, file] : j["weight_map"].items()) {
      if (!file.is_string()) return CorruptionError(fmt::format("{}: weight_map[\"{}\"] is not a file name", index.string(), name));
      const std::string f = file.get<std::string>();
      if (f.find('/') != std::string::npos || f == "..")
        return CorruptionError(fmt::format("{}: weight_map[\"{}\"] = \"{}\" must name a file beside the index", index.string(), name, f));
      shards.insert(f);
    }
    std::vector<std::string> files;
    for (const auto& s : shards) files.push_back((fs::path(path) / s).string());
    return files;
  }
  const fs::path single = fs::path(path) / "model.safetensors";
  if (fs::exists(single, ec)) return std::vector<std::string>{single.string()};
  return NotFoundError(fmt::format("{} holds neither model.safetensors nor model.safetensors.index.json", path));
}

StatusOr<safetensors::Dtype> SafetensorsDtype(torch::ScalarType dtype) {
  switch (dtype) {
    case torch::kFloat32: return safetensors::Dtype::kF32;
    case torch::kFloat16: return safetensors::Dtype::kF16;
    case torch::kBFloat16: return safetensors::Dtype::kBF16;
    case torch::kFloat64: return safetensors::Dtype::kF64;
    case torch::kInt64: return safetensors::Dtype::kI64;
    case torch::kInt32: return safetensors::Dtype::kI32;
    case torch::kUInt8: return safetensors::Dtype::kU8;
    default: return InvalidArgumentError(fmt::format("no safetensors dtype for {}", c10::toString(dtype)));
  }
}

StatusOr<torch::ScalarType> TorchDtype(safetensors::Dtype dtype) {
  switch (dtype) {
    case safetensors::Dtype::kF32: return torch::kFloat32;
    case safetensors::Dtype::kF16: return torch::kFloat16;
    case safetensors::Dtype::kBF16: return torch::kBFloat16;
    case safetensors::Dtype::kF64: return torch::kFloat64;
    case safetensors::Dtype::kI64: return torch::kInt64;
    case safetensors::Dtype::kI32: return torch::kInt32;
    case safetensors::Dtype::kU8: return torch::kUInt8;
    default:
      return InvalidArgumentError(fmt::format("dtype {} cannot be loaded by vlorch", safetensors::DtypeName(dtype)));
  }
}

StatusOr<torch::Tensor> ToTensor(const safetensors::TensorView& view, torch::ScalarType dtype) {
  auto src_or = TorchDtype(view.dtype);
  if (!src_or.ok()) return src_or.status().WithContext(fmt::format("tensor {}", view.name));
  const torch::ScalarType src = *src_or;
  torch::Tensor t = torch::empty(view.shape, torch::TensorOptions().dtype(src));
  if (view.nbytes) std::memcpy(t.data_ptr(), view.data, view.nbytes);  // the view may be unaligned
  return src == dtype ? t : t.to(dtype);
}

namespace {
std::string ListSome(const std::vector<std::string>& names) {
  constexpr size_t kShown = 20;
  std::string out;
  for (size_t i = 0; i < names.size() && i < kShown; ++i) out += (i ? ", " : "") + names[i];
  if (names.size() > kShown) out += fmt::format(" ... ({} more)", names.size() - kShown);
  return out;
}
}  // namespace

StatusOr<LoadReport> LoadWeights(const std::vector<std::pair<std::string, torch::Tensor>>& params,
                                 const std::string& path, const std::string& prefix) {
  ASSIGN_OR_RETURN(std::vector<std::string> files, WeightFiles(path));
  std::map<std::string, torch::Tensor> wanted;
  for (const auto& [name, t] : params)
    if (name.compare(0, prefix.size(), prefix) == 0) wanted.emplace(name, t);
  const bool tied = !wanted.count(prefix + "lm_head.weight");

  std::vector<std::unique_ptr<safetensors::SafetensorsFile>> opened;
  std::map<std::string, std::pair<const safetensors::TensorView*, std::string>> found;  // name -> (view, file)
  std::vector<std::string> unexpected, misshaped, duplicated;
  const safetensors::TensorView* tied_head = nullptr;
  for (const std::string& f : files) {
    ASSIGN_OR_RETURN(auto file, safetensors::SafetensorsFile::Open(f));
    for (const auto& v : file->tensors()) {
      const std::string name = prefix + v.name;
      auto it = wanted.find(name);
      if (it == wanted.end()) {
        if (tied && v.name.size() >= 14 && v.name.compare(v.name.size() - 14, 14, "lm_head.weight") == 0) {
          tied_head = &v;
          continue;
        }
        unexpected.push_back(fmt::format("{} (in {})", name, f));
        continue;
      }
      if (found.count(name)) duplicated.push_back(fmt::format("{} (in {} and {})", name, found[name].second, f));
      if (std::vector<int64_t>(it->second.sizes().begin(), it->second.sizes().end()) != v.shape)
        misshaped.push_back(fmt::format("{}: file {} has [{}], model wants [{}]", name, f, fmt::join(v.shape, ","),
                                        fmt::join(it->second.sizes(), ",")));
      found.emplace(name, std::make_pair(&v, f));
    }
    opened.push_back(std::move(file));
  }
  std::vector<std::string> missing;
  for (const auto& [name, t] : wanted)
    if (!found.count(name)) missing.push_back(name);
  if (!missing.empty() || !unexpected.empty() || !misshaped.empty() || !duplicated.empty()) {
    std::string msg = fmt::format("weights {} (prefix \"{}\") do not match the model:", path, prefix);
    if (!missing.empty()) msg += fmt::format(" {} missing: {};", missing.size(), ListSome(missing));
    if (!unexpected.empty()) msg += fmt::format(" {} unexpected: {};", unexpected.size(), ListSome(unexpected));
    if (!misshaped.empty()) msg += fmt::format(" {} with the wrong shape: {};", misshaped.size(), ListSome(misshaped));
    if (!duplicated.empty()) msg += fmt::format(" {} in two files: {};", duplicated.size(), ListSome(duplicated));
    msg += " check the model config against the checkpoint's config.json and the prefix";
    return InvalidArgumentError(msg);
  }
  LoadReport report;
  report.files = files;
  // Convert everything first, then copy: a failure leaves the model untouched.
  std::vector<std::pair<torch::Tensor, torch::Tensor>> copies;
  try {
    for (const auto& [name, entry] : found) {
      torch::Tensor dst = wanted[name];
      ASSIGN_OR_RETURN(torch::Tensor src, ToTensor(*entry.first, dst.scalar_type()));
      if (entry.first->dtype != *SafetensorsDtype(dst.scalar_type())) ++report.converted;
      report.bytes += entry.first->nbytes;
      copies.emplace_back(dst, src);
    }
    torch::NoGradGuard no_grad;
    for (auto& [dst, src] : copies) dst.copy_(src);
  } catch (const c10::Error& e) {
    return InternalError(fmt::format("loading {}: {}", path, e.what_without_backtrace()));
  }
  (void)tied_head;
  report.tensors = static_cast<int64_t>(copies.size());
  return report;
}

}  // namespace vlorch::models
