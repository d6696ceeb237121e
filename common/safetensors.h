// Torch-free reader and writer for Hugging Face's safetensors format.
//
// Layout (https://github.com/huggingface/safetensors, "Format"):
//   8 bytes     N, little-endian u64: length of the header
//   N bytes     UTF-8 JSON object: {"__metadata__": {str: str}, NAME: {"dtype": "F32",
//               "shape": [d0, ...], "data_offsets": [begin, end]}, ...}
//   rest        the byte buffer; offsets are relative to its start
//
// The reader maps the file and validates everything before handing out views: header length
// within the file and at most 100 MB, valid JSON, known dtypes, non-negative integer shapes,
// offsets inside the buffer, sizes that match shape x dtype, and buffers that tile the data
// section exactly (no overlap, no gap, nothing after the last tensor). Every error names the
// file and the tensor.
//
// The writer produces the bytes that Hugging Face's save_file produces for the same tensors:
// "__metadata__" first, tensors ordered by dtype (descending in safetensors' Dtype order) then
// name, compact JSON with fields dtype/shape/data_offsets, header padded with spaces to a
// multiple of 8 so the data section is 8-byte aligned.
//
// Thread safety: a SafetensorsFile is immutable after Open() and may be read from any thread.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"

namespace vlorch::safetensors {

// In safetensors' own enum order (the writer's sort key depends on it).
enum class Dtype {
  kBool, kU8, kI8, kF8_E5M2, kF8_E4M3, kI16, kU16, kF16, kBF16, kI32, kU32, kF32, kF64, kI64, kU64,
};

std::string_view DtypeName(Dtype dtype);  // "F32", "BF16", ...
StatusOr<Dtype> ParseDtype(std::string_view name);
size_t DtypeSize(Dtype dtype);

// The largest header the reader accepts, as in the reference implementation.
inline constexpr uint64_t kMaxHeaderBytes = 100'000'000;

struct TensorView {
  std::string name;
  Dtype dtype = Dtype::kF32;
  std::vector<int64_t> shape;
  const uint8_t* data = nullptr;  // into the mapping; may be unaligned if N % 8 != 0
  size_t nbytes = 0;
  int64_t numel() const;
};

class SafetensorsFile {
 public:
  // Maps and validates `path`. Errors: NotFound / IOError for the file, Corruption for any
  // malformed header or layout.
  static StatusOr<std::unique_ptr<SafetensorsFile>> Open(const std::string& path);
  // Validates an in-memory image of a file; `name` is used in error messages.
  static StatusOr<std::unique_ptr<SafetensorsFile>> FromBytes(std::string name, std::string bytes);

  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::string& name() const { return name_; }
  // In file (data offset) order.
  const std::vector<TensorView>& tensors() const { return tensors_; }
  // nullptr when absent.
  const TensorView* Find(std::string_view name) const;
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  uint64_t header_bytes() const { return header_bytes_; }

 private:
  SafetensorsFile() = default;
  Status Parse(const uint8_t* base, size_t size);

  std::string name_;
  void* mapping_ = nullptr;
  size_t mapping_size_ = 0;
  std::string owned_bytes_;  // FromBytes keeps the image here
  uint64_t header_bytes_ = 0;
  std::vector<TensorView> tensors_;
  std::map<std::string, size_t> index_;
  std::map<std::string, std::string> metadata_;
};

struct TensorToWrite {
  std::string name;
  Dtype dtype = Dtype::kF32;
  std::vector<int64_t> shape;
  const void* data = nullptr;  // nbytes must equal numel(shape) * DtypeSize(dtype)
  size_t nbytes = 0;
};

struct WriteOptions {
  // true (default): order tensors as Hugging Face's writer does (dtype, then name), so the
  // file is byte-identical to theirs. false: keep the caller's order.
  bool huggingface_order = true;
  // fsync the file before returning. Default false; checkpoints turn it on.
  bool fsync = false;
};

// Serialises into memory. InvalidArgument for a size/shape mismatch, a duplicate or empty
// name, the reserved name "__metadata__", or a name that is not valid UTF-8.
StatusOr<std::string> Serialize(std::vector<TensorToWrite> tensors,
                                const std::map<std::string, std::string>& metadata,
                                const WriteOptions& options = {});

// What WriteFile wrote: its size and the CRC32C of its bytes (common/hash.h), computed from
// the buffers as they are written, so a caller that records a checksum need not read the
// file back.
struct WrittenFile {
  uint64_t bytes = 0;
  uint32_t crc32c = 0;
};

// Writes to `path` (created or truncated) without staging the data in memory; fills
// `written` when given.
Status WriteFile(const std::string& path, std::vector<TensorToWrite> tensors,
                 const std::map<std::string, std::string>& metadata,
                 const WriteOptions& options = {}, WrittenFile* written = nullptr);

}  // namespace vlorch::safetensors
