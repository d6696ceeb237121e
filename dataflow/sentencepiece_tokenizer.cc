#include "dataflow/sentencepiece_tokenizer.h"

#include <dlfcn.h>
#include <sys/stat.h>

#include <cstdlib>
#include <mutex>

#include <fmt/format.h>

namespace vlorch::dataflow {
namespace {

// The shim (dataflow/spm_shim) and its entry points, loaded once per process.
struct Shim {
  void* lib = nullptr;
  void* (*load)(const char*, char*, int) = nullptr;
  void (*free_h)(void*) = nullptr;
  int (*encode)(void*, const char*, size_t, int**) = nullptr;
  char* (*decode)(void*, const int*, int, size_t*) = nullptr;
  int (*info)(void*, int) = nullptr;
  std::string error;
};

const Shim& GetShim() {
  static Shim shim;
  static std::once_flag once;
  std::call_once(once, [] {
    const char* env = std::getenv("VLORCH_SPM_SHIM");
    std::string path = env ? env : VLORCH_SPM_SHIM_PATH;
    // Local and deep-bound: see dataflow/spm_shim/spm_shim.cc for why.
    shim.lib = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL | RTLD_DEEPBIND);
    if (shim.lib == nullptr) {
      shim.error = fmt::format("cannot load vlorch's SentencePiece shim '{}' ({}); build the target "
                               "vlorch_spm_shim or point VLORCH_SPM_SHIM at it", path, dlerror());
      return;
    }
    shim.load = reinterpret_cast<decltype(shim.load)>(dlsym(shim.lib, "vlorch_spm_load"));
    shim.free_h = reinterpret_cast<decltype(shim.free_h)>(dlsym(shim.lib, "vlorch_spm_free"));
    shim.encode = reinterpret_cast<decltype(shim.encode)>(dlsym(shim.lib, "vlorch_spm_encode"));
    shim.decode = reinterpret_cast<decltype(shim.decode)>(dlsym(shim.lib, "vlorch_spm_decode"));
    shim.info = reinterpret_cast<decltype(shim.info)>(dlsym(shim.lib, "vlorch_spm_info"));
    if (!shim.load || !shim.free_h || !shim.encode || !shim.decode || !shim.info)
      shim.error = fmt::format("'{}' lacks vlorch_spm_* entry points (a stale build?)", path);
  });
  return shim;
}

}  // namespace

struct SentencePieceTokenizer::Rep {
  void* handle = nullptr;
  ~Rep() {
    if (handle) GetShim().free_h(handle);
  }
};

SentencePieceTokenizer::SentencePieceTokenizer() : rep_(std::make_unique<Rep>()) {}
SentencePieceTokenizer::~SentencePieceTokenizer() = default;

StatusOr<std::unique_ptr<SentencePieceTokenizer>> SentencePieceTokenizer::Load(const std::string& model_path) {
  struct stat st;
  if (::stat(model_path.c_str(), &st) != 0)
    return NotFoundError(fmt::format("SentencePiece model '{}' does not exist", model_path));
  const Shim& shim = GetShim();
  if (!shim.error.empty()) return FailedPreconditionError(shim.error);
  std::unique_ptr<SentencePieceTokenizer> t(new SentencePieceTokenizer());
  char err[512] = {0};
  t->rep_->handle = shim.load(model_path.c_str(), err, sizeof(err));
  if (t->rep_->handle == nullptr)
    return InvalidArgumentError(fmt::format("'{}' is not a SentencePiece model (LLaMA's tokenizer.model): {}",
                                            model_path, err));
  return t;
}

std::vector<int32_t> SentencePieceTokenizer::Encode(std::string_view text, bool add_bos) const {
  int* ids = nullptr;
  int n = GetShim().encode(rep_->handle, text.data(), text.size(), &ids);
  std::vector<int32_t> out;
  out.reserve(n + 1);
  if (add_bos && bos_id() >= 0) out.push_back(bos_id());
  out.insert(out.end(), ids, ids + n);
  std::free(ids);
  return out;
}

std::string SentencePieceTokenizer::Decode(const std::vector<int32_t>& ids) const {
  std::vector<int> v(ids.begin(), ids.end());
  size_t len = 0;
  char* s = GetShim().decode(rep_->handle, v.data(), static_cast<int>(v.size()), &len);
  std::string out(s, len);
  std::free(s);
  return out;
}

int32_t SentencePieceTokenizer::vocab_size() const { return GetShim().info(rep_->handle, 0); }
int32_t SentencePieceTokenizer::bos_id() const { return GetShim().info(rep_->handle, 1); }
int32_t SentencePieceTokenizer::eos_id() const { return GetShim().info(rep_->handle, 2); }
int32_t SentencePieceTokenizer::pad_id() const { return GetShim().info(rep_->handle, 3); }

}  // namespace vlorch::dataflow
