#include "common/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <set>

#include <fmt/format.h>

#include "common/hash.h"
#include <nlohmann/json.hpp>

namespace vlorch::safetensors {
namespace {

struct DtypeInfo {
  Dtype dtype;
  const char* name;
  size_t size;
};

constexpr DtypeInfo kDtypes[] = {
    {Dtype::kBool, "BOOL", 1},   {Dtype::kU8, "U8", 1},     {Dtype::kI8, "I8", 1},
    {Dtype::kF8_E5M2, "F8_E5M2", 1}, {Dtype::kF8_E4M3, "F8_E4M3", 1}, {Dtype::kI16, "I16", 2},
    {Dtype::kU16, "U16", 2},     {Dtype::kF16, "F16", 2},   {Dtype::kBF16, "BF16", 2},
    {Dtype::kI32, "I32", 4},     {Dtype::kU32, "U32", 4},   {Dtype::kF32, "F32", 4},
    {Dtype::kF64, "F64", 8},     {Dtype::kI64, "I64", 8},   {Dtype::kU64, "U64", 8},
};

bool CheckedNumel(const std::vector<int64_t>& shape, size_t item, size_t* bytes) {
  size_t n = item;
  for (int64_t d : shape) {
    if (d < 0 || __builtin_mul_overflow(n, static_cast<size_t>(d), &n)) return false;
  }
  *bytes = n;
  return true;
}

std::string ShapeString(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? "," : "") + std::to_string(shape[i]);
  return s + "]";
}

Status WriteAll(int fd, const void* data, size_t n, const std::string& path) {
  const char* p = static_cast<const char*>(data);
  while (n > 0) {
    ssize_t w = ::write(fd, p, std::min<size_t>(n, size_t{1} << 30));
    if (w < 0) {
      if (errno == EINTR) continue;
      return ErrnoError("cannot write", path, errno);
    }
    p += w;
    n -= static_cast<size_t>(w);
  }
  return Status::OK();
}

// Validates the tensors and builds the padded header. Reorders `tensors` into file order.
StatusOr<std::string> BuildHeader(std::vector<TensorToWrite>& tensors,
                                  const std::map<std::string, std::string>& metadata,
                                  const WriteOptions& options) {
  std::set<std::string> seen;
  for (const auto& t : tensors) {
    if (t.name.empty()) return InvalidArgumentError("safetensors: a tensor has an empty name");
    if (t.name == "__metadata__")
      return InvalidArgumentError("safetensors: '__metadata__' is reserved and cannot name a tensor");
    if (!seen.insert(t.name).second)
      return InvalidArgumentError(fmt::format("safetensors: tensor '{}' given twice", t.name));
    size_t expect = 0;
    if (!CheckedNumel(t.shape, DtypeSize(t.dtype), &expect))
      return InvalidArgumentError(fmt::format("safetensors: tensor '{}' has an invalid shape {}",
                                              t.name, ShapeString(t.shape)));
    if (expect != t.nbytes)
      return InvalidArgumentError(fmt::format(
          "safetensors: tensor '{}' has {} bytes but shape {} of {} needs {}", t.name, t.nbytes,
          ShapeString(t.shape), DtypeName(t.dtype), expect));
    if (t.nbytes > 0 && t.data == nullptr)
      return InvalidArgumentError(fmt::format("safetensors: tensor '{}' has no data", t.name));
  }
  if (options.huggingface_order) {
    std::stable_sort(tensors.begin(), tensors.end(), [](const auto& a, const auto& b) {
      if (a.dtype != b.dtype) return static_cast<int>(a.dtype) > static_cast<int>(b.dtype);
      return a.name < b.name;
    });
  }
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) {
    nlohmann::ordered_json meta = nlohmann::ordered_json::object();
    for (const auto& [k, v] : metadata) meta[k] = v;
    header["__metadata__"] = std::move(meta);
  }
  uint64_t offset = 0;
  for (const auto& t : tensors) {
    nlohmann::ordered_json info = nlohmann::ordered_json::object();
    info["dtype"] = std::string(DtypeName(t.dtype));
    info["shape"] = t.shape;
    info["data_offsets"] = {offset, offset + t.nbytes};
    header[t.name] = std::move(info);
    offset += t.nbytes;
  }
  std::string text;
  try {
    text = header.dump();
  } catch (const nlohmann::json::exception& e) {
    return InvalidArgumentError(
        fmt::format("safetensors: a tensor name or metadata value is not valid UTF-8 ({})", e.what()));
  }
  text.append((8 - text.size() % 8) % 8, ' ');
  std::string out(8, '\0');
  uint64_t n = text.size();
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  out += text;
  return out;
}

}  // namespace

std::string_view DtypeName(Dtype dtype) { return kDtypes[static_cast<int>(dtype)].name; }
size_t DtypeSize(Dtype dtype) { return kDtypes[static_cast<int>(dtype)].size; }

StatusOr<Dtype> ParseDtype(std::string_view name) {
  for (const auto& d : kDtypes) {
    if (name == d.name) return d.dtype;
  }
  return InvalidArgumentError(fmt::format(
      "unknown dtype '{}' (known: BOOL U8 I8 F8_E5M2 F8_E4M3 I16 U16 F16 BF16 I32 U32 F32 F64 I64 U64)",
      name));
}

int64_t TensorView::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

SafetensorsFile::~SafetensorsFile() {
  if (mapping_ != nullptr) ::munmap(mapping_, mapping_size_);
}

StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::Open(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ENOENT) return NotFoundError(fmt::format("safetensors file '{}' does not exist", path));
    return ErrnoError("cannot open safetensors file", path, errno);
  }
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    int e = errno;
    ::close(fd);
    return ErrnoError("cannot stat safetensors file", path, e);
  }
  std::unique_ptr<SafetensorsFile> file(new SafetensorsFile());
  file->name_ = path;
  size_t size = static_cast<size_t>(st.st_size);
  if (size > 0) {
    void* m = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (m == MAP_FAILED) {
      int e = errno;
      ::close(fd);
      return ErrnoError("cannot mmap safetensors file", path, e);
    }
    file->mapping_ = m;
    file->mapping_size_ = size;
  }
  ::close(fd);
  RETURN_IF_ERROR(file->Parse(static_cast<const uint8_t*>(file->mapping_), size));
  return file;
}

StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::FromBytes(std::string name,
                                                                      std::string bytes) {
  std::unique_ptr<SafetensorsFile> file(new SafetensorsFile());
  file->name_ = std::move(name);
  file->owned_bytes_ = std::move(bytes);
  RETURN_IF_ERROR(file->Parse(reinterpret_cast<const uint8_t*>(file->owned_bytes_.data()),
                              file->owned_bytes_.size()));
  return file;
}

const TensorView* SafetensorsFile::Find(std::string_view name) const {
  auto it = index_.find(std::string(name));
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

Status SafetensorsFile::Parse(const uint8_t* base, size_t size) {
  auto bad = [&](const std::string& what) {
    return CorruptionError(fmt::format("safetensors file '{}': {}", name_, what));
  };
  if (size < 8)
    return bad(fmt::format("file is {} bytes; it must start with an 8-byte header length", size));
  uint64_t n = 0;
  for (int i = 0; i < 8; ++i) n |= static_cast<uint64_t>(base[i]) << (8 * i);
  if (n > kMaxHeaderBytes)
    return bad(fmt::format("header length {} exceeds the 100 MB limit (not a safetensors file?)", n));
  if (n > size - 8)
    return bad(fmt::format("header length {} runs past the end of the {}-byte file (truncated?)", n,
                           size));
  header_bytes_ = n;
  const char* text = reinterpret_cast<const char*>(base + 8);
  if (n == 0 || text[0] != '{') return bad("header does not start with '{'");
  nlohmann::json header;
  try {
    header = nlohmann::json::parse(text, text + n);
  } catch (const nlohmann::json::exception& e) {
    return bad(fmt::format("header is not valid JSON: {}", e.what()));
  }
  if (!header.is_object()) return bad("header is not a JSON object");

  const uint64_t data_size = size - 8 - n;
  const uint8_t* data = base + 8 + n;
  struct Entry {
    TensorView view;
    uint64_t begin, end;
  };
  std::vector<Entry> entries;
  for (auto it = header.begin(); it != header.end(); ++it) {
    const std::string& key = it.key();
    const nlohmann::json& v = it.value();
    if (key == "__metadata__") {
      if (!v.is_object()) return bad("'__metadata__' must be an object of strings");
      for (auto m = v.begin(); m != v.end(); ++m) {
        if (!m.value().is_string())
          return bad(fmt::format("'__metadata__' value for '{}' is not a string", m.key()));
        metadata_[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    auto tbad = [&](const std::string& what) { return bad(fmt::format("tensor '{}': {}", key, what)); };
    if (!v.is_object()) return tbad("entry is not an object");
    for (auto f = v.begin(); f != v.end(); ++f) {
      if (f.key() != "dtype" && f.key() != "shape" && f.key() != "data_offsets")
        return tbad(fmt::format("unknown field '{}' (allowed: dtype, shape, data_offsets)", f.key()));
    }
    if (!v.contains("dtype") || !v["dtype"].is_string()) return tbad("missing string field 'dtype'");
    auto dtype = ParseDtype(v["dtype"].get<std::string>());
    if (!dtype.ok()) return tbad(dtype.status().message());
    if (!v.contains("shape") || !v["shape"].is_array()) return tbad("missing array field 'shape'");
    Entry e;
    e.view.name = key;
    e.view.dtype = *dtype;
    for (const auto& d : v["shape"]) {
      if (!d.is_number_unsigned() || d.get<uint64_t>() > static_cast<uint64_t>(INT64_MAX))
        return tbad(fmt::format("shape entry {} is not a non-negative integer", d.dump()));
      e.view.shape.push_back(static_cast<int64_t>(d.get<uint64_t>()));
    }
    const auto& off = v.contains("data_offsets") ? v["data_offsets"] : nlohmann::json();
    if (!off.is_array() || off.size() != 2 || !off[0].is_number_unsigned() ||
        !off[1].is_number_unsigned())
      return tbad("'data_offsets' must be [begin, end] with non-negative integers");
    e.begin = off[0].get<uint64_t>();
    e.end = off[1].get<uint64_t>();
    if (e.begin > e.end) return tbad(fmt::format("data_offsets [{}, {}] end before they begin", e.begin, e.end));
    if (e.end > data_size)
      return tbad(fmt::format("data_offsets [{}, {}] run past the {}-byte data section (truncated?)",
                              e.begin, e.end, data_size));
    size_t expect = 0;
    if (!CheckedNumel(e.view.shape, DtypeSize(e.view.dtype), &expect))
      return tbad(fmt::format("shape {} overflows", ShapeString(e.view.shape)));
    if (expect != e.end - e.begin)
      return tbad(fmt::format("data_offsets [{}, {}] hold {} bytes but shape {} of {} needs {}",
                              e.begin, e.end, e.end - e.begin, ShapeString(e.view.shape),
                              DtypeName(e.view.dtype), expect));
    e.view.data = data + e.begin;
    e.view.nbytes = expect;
    entries.push_back(std::move(e));
  }
  std::sort(entries.begin(), entries.end(), [](const Entry& a, const Entry& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  uint64_t cursor = 0;
  for (const auto& e : entries) {
    if (e.begin < cursor)
      return bad(fmt::format("tensor '{}' at [{}, {}] overlaps the previous tensor (which ends at {})",
                             e.view.name, e.begin, e.end, cursor));
    if (e.begin > cursor)
      return bad(fmt::format("gap of {} bytes before tensor '{}' at offset {}", e.begin - cursor,
                             e.view.name, e.begin));
    cursor = e.end;
  }
  if (cursor != data_size)
    return bad(fmt::format("data section is {} bytes but the tensors cover {} ({} trailing bytes)",
                           data_size, cursor, data_size - cursor));
  for (auto& e : entries) {
    index_[e.view.name] = tensors_.size();
    tensors_.push_back(std::move(e.view));
  }
  return Status::OK();
}

StatusOr<std::string> Serialize(std::vector<TensorToWrite> tensors,
                                const std::map<std::string, std::string>& metadata,
                                const WriteOptions& options) {
  ASSIGN_OR_RETURN(std::string out, BuildHeader(tensors, metadata, options));
  for (const auto& t : tensors) out.append(static_cast<const char*>(t.data), t.nbytes);
  return out;
}

Status WriteFile(const std::string& path, std::vector<TensorToWrite> tensors,
                 const std::map<std::string, std::string>& metadata, const WriteOptions& options,
                 WrittenFile* written) {
  ASSIGN_OR_RETURN(std::string header, BuildHeader(tensors, metadata, options));
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return ErrnoError("cannot create safetensors file", path, errno);
  WrittenFile w;
  // Each 4 MiB piece is checksummed and then written, so write(2) copies it while the CRC
  // has just brought it into cache: one pass over memory instead of a read-back of the file.
  auto put = [&](const void* data, size_t n) -> Status {
    const char* p = static_cast<const char*>(data);
    constexpr size_t kPiece = size_t{4} << 20;
    for (size_t off = 0; off < n; off += kPiece) {
      const size_t len = std::min(kPiece, n - off);
      if (written != nullptr) w.crc32c = Crc32c(p + off, len, w.crc32c);
      RETURN_IF_ERROR(WriteAll(fd, p + off, len, path));
    }
    w.bytes += n;
    return Status::OK();
  };
  Status s = put(header.data(), header.size());
  for (size_t i = 0; s.ok() && i < tensors.size(); ++i) s = put(tensors[i].data, tensors[i].nbytes);
  if (s.ok() && written != nullptr) *written = w;
  if (s.ok() && options.fsync && ::fsync(fd) != 0) s = ErrnoError("cannot fsync", path, errno);
  if (::close(fd) != 0 && s.ok()) s = ErrnoError("cannot close", path, errno);
  return s;
}

}  // namespace vlorch::safetensors
