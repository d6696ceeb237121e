#include "sharding/readers.h"

#include <archive.h>
#include <archive_entry.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zip.h>

#include <cctype>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string_view>
#include <unordered_map>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "common/disk_space.h"
#include "common/logging.h"

namespace vlorch::sharding {
namespace {

// A name or path taken from the input, fit to put in a quarantine detail (persisted, and
// printed by `vlorch shards quarantine`): bytes outside printable ASCII become \xNN, and
// it is cut at 200 characters.
std::string Printable(std::string_view s) {
  std::string out;
  for (size_t i = 0; i < s.size() && out.size() < 200; ++i) {
    const auto c = static_cast<unsigned char>(s[i]);
    if (c >= 0x20 && c < 0x7f && c != '\\') out.push_back(static_cast<char>(c));
    else out += fmt::format("\\x{:02x}", c);
  }
  if (out.size() >= 200) out += "...";
  return out;
}

std::string Bytes(uint64_t n) { return FormatBytes(n); }

// Deepest nesting of objects and arrays in JSON text, brackets inside strings not counted.
// Stops counting once past `limit` (the caller only needs to know that).
int JsonDepth(std::string_view s, int limit) {
  int depth = 0, deepest = 0;
  bool in_string = false, escape = false;
  for (char c : s) {
    if (in_string) {
      if (escape) escape = false;
      else if (c == '\\') escape = true;
      else if (c == '"') in_string = false;
    } else if (c == '"') {
      in_string = true;
    } else if (c == '{' || c == '[') {
      deepest = std::max(deepest, ++depth);
      if (deepest > limit) return deepest;
    } else if (c == '}' || c == ']') {
      --depth;
    }
  }
  return deepest;
}

std::string TooDeep(int depth, int limit) {
  return fmt::format("JSON nested more than {} levels deep (at least {}; ReadLimits::max_json_depth)", limit, depth);
}

std::string OverLimit(uint64_t size, uint64_t limit, const char* what, const char* field) {
  return fmt::format("{}, over the {} limit for {} (ReadLimits::{}); it was not read (raise the limit if the "
                     "source is trusted)",
                     Bytes(size), Bytes(limit), what, field);
}

uint64_t FileSizeOf(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 ? static_cast<uint64_t>(st.st_size) : 0;
}

class JsonlReader : public RecordReader {
 public:
  JsonlReader(std::string path, const ReadLimits& limits)
      : path_(std::move(path)), limits_(limits), in_(path_, std::ios::binary), buf_(1 << 20) {}
  bool is_open() const { return in_.is_open(); }

  StatusOr<bool> Next(RawRecord* out) override {
    std::string line;
    while (true) {
      int64_t offset = static_cast<int64_t>(bytes_);
      uint64_t size = 0;
      ASSIGN_OR_RETURN(bool more, ReadLine(&line, &size));
      if (!more) return false;
      bytes_ += size + 1;
      ++line_no_;
      const bool oversize = size > limits_.max_record_bytes;
      if (!oversize && line.find_first_not_of(" \t\r") == std::string::npos) continue;  // blank lines are not records
      *out = RawRecord();
      out->ordinal = ordinal_++;
      out->byte_offset = offset;
      out->kind = SampleKind::kText;
      out->id = fmt::format("line {}", line_no_);
      if (oversize) {
        out->reject_reason = "oversize_record";
        out->reject_detail = fmt::format("line {}, byte offset {}: the line is {}", line_no_, offset,
                                         OverLimit(size, limits_.max_record_bytes, "one record", "max_record_bytes"));
        return true;
      }
      if (int depth = JsonDepth(line, limits_.max_json_depth); depth > limits_.max_json_depth) {
        out->reject_reason = "malformed_json";
        out->reject_detail = fmt::format("line {}, byte offset {}: {}", line_no_, offset, TooDeep(depth, limits_.max_json_depth));
        return true;
      }
      try {
        auto j = nlohmann::json::parse(line);
        if (!j.is_object() || !j.contains("text") || !j["text"].is_string()) {
          out->reject_reason = "malformed_json";
          out->reject_detail = fmt::format("line {}: expected an object with a string field \"text\"", line_no_);
          return true;
        }
        out->text = j["text"].get<std::string>();
        if (j.contains("id") && j["id"].is_string()) out->id = j["id"].get<std::string>();
        j.erase("text");
        if (!j.empty()) out->metadata_json = j.dump();
      } catch (const nlohmann::json::exception& e) {
        // nlohmann reports invalid UTF-8 inside a string as a parse error mentioning UTF-8.
        const bool utf8 = e.id == 316 || std::string(e.what()).find("UTF-8") != std::string::npos;
        out->reject_reason = utf8 ? "non_utf8_text" : "malformed_json";
        out->reject_detail = fmt::format("line {}, byte offset {}: {}", line_no_, offset, e.what());
      }
      return true;
    }
  }
  uint64_t bytes_read() const override { return bytes_; }

 private:
  // The next line without its '\n' into *line, through a fixed buffer: a line longer than
  // max_record_bytes is read to its end but not kept (*line is left empty). *size is its
  // full length. false at the end of the file.
  StatusOr<bool> ReadLine(std::string* line, uint64_t* size) {
    line->clear();
    *size = 0;
    bool any = false;
    while (true) {
      if (buf_pos_ == buf_len_) {
        in_.read(buf_.data(), static_cast<std::streamsize>(buf_.size()));
        buf_len_ = static_cast<size_t>(in_.gcount());
        buf_pos_ = 0;
        if (buf_len_ == 0) {
          if (in_.bad()) return IOError(fmt::format("reading '{}' failed at byte {}", path_, bytes_ + *size));
          return any;  // a last line without '\n' is still a line
        }
      }
      any = true;
      const char* start = buf_.data() + buf_pos_;
      const auto* nl = static_cast<const char*>(std::memchr(start, '\n', buf_len_ - buf_pos_));
      const size_t n = nl != nullptr ? static_cast<size_t>(nl - start) : buf_len_ - buf_pos_;
      *size += n;
      if (*size <= limits_.max_record_bytes) {
        line->append(start, n);
      } else if (!line->empty()) {
        std::string().swap(*line);  // over the limit: give the memory back, keep counting
      }
      buf_pos_ += n + (nl != nullptr ? 1 : 0);
      if (nl != nullptr) return true;
    }
  }

  std::string path_;
  ReadLimits limits_;
  std::ifstream in_;
  std::vector<char> buf_;
  size_t buf_pos_ = 0, buf_len_ = 0;
  uint64_t bytes_ = 0, line_no_ = 0, ordinal_ = 0;
};

// Groups consecutive tar members by key (the name up to the first '.') into records.
class TarReader : public RecordReader {
 public:
  TarReader(std::string path, const ReadLimits& limits) : path_(std::move(path)), limits_(limits) {}
  ~TarReader() override {
    if (a_ != nullptr) archive_read_free(a_);
  }

  Status Open() {
    a_ = archive_read_new();
    archive_read_support_format_tar(a_);
    if (archive_read_open_filename(a_, path_.c_str(), 1 << 20) != ARCHIVE_OK) {
      std::string why = archive_error_string(a_) ? archive_error_string(a_) : "unknown error";
      if (why.find("format") != std::string::npos)
        return InvalidArgumentError(fmt::format("'{}' is not a tar archive ({}); img2dataset writes NNNNN.tar "
                                                "webdataset shards", path_, why));
      return IOError(fmt::format("cannot open '{}': {}", path_, why));
    }
    file_size_ = FileSizeOf(path_);
    // No decompression filter is enabled, so stream positions are file offsets and a member's
    // data cannot extend past the file's end.
    plain_ = archive_filter_count(a_) <= 1;
    LoadStats();
    return Status::OK();
  }

  StatusOr<bool> Next(RawRecord* out) override {
    ASSIGN_OR_RETURN(bool more, ReadRecord(out));
    if (more) Finish(out);
    return more;
  }

  uint64_t bytes_read() const override { return a_ ? static_cast<uint64_t>(archive_filter_bytes(a_, -1)) : 0; }
  std::map<std::string, int64_t> Reported() const override { return reported_; }

 private:
  // One member's data, or why the record it belongs to is rejected.
  struct Member {
    std::string data;
    std::string reason, detail;
    bool end = false;  // the archive cannot be read past this member
  };

  // Reads the current member's data. Its declared size is checked first against the bytes
  // the file holds after its header (a size larger than that is a truncated archive or a
  // lying header; nothing is allocated and reading stops, as the next header's place is
  // unknown) and then against the limit for its kind (the data is skipped and reading goes
  // on). Members of other kinds than .jpg/.jpeg/.txt/.json are skipped unread.
  Member ReadMember(archive_entry* e, const std::string& name, const std::string& ext, int64_t offset) {
    Member m;
    const bool image = ext == "jpg" || ext == "jpeg";
    const bool text = ext == "txt" || ext == "json";
    const uint64_t want = static_cast<uint64_t>(std::max<int64_t>(archive_entry_size(e), 0));
    const uint64_t present = file_size_ > static_cast<uint64_t>(offset) ? file_size_ - offset : 0;
    // A sparse member's data may legitimately be smaller than its size; the limit still holds.
    if (plain_ && archive_entry_sparse_count(e) == 0 && want > present) {
      m.reason = "truncated_tar_member";
      m.detail = fmt::format("member '{}' declares {} but only {} of the archive follow its header: the tar is "
                             "truncated or the header is damaged",
                             Printable(name), Bytes(want), Bytes(present));
      m.end = true;
      return m;
    }
    if (!image && !text) return m;  // skipped by the next archive_read_next_header
    const uint64_t limit = image ? limits_.max_image_bytes : limits_.max_record_bytes;
    if (want > limit) {
      m.reason = "oversize_record";
      m.detail = fmt::format("member '{}' is {}", Printable(name),
                             image ? OverLimit(want, limit, "one image", "max_image_bytes")
                                   : OverLimit(want, limit, "one text record", "max_record_bytes"));
      if (archive_read_data_skip(a_) != ARCHIVE_OK) m.end = true;
      return m;
    }
    m.data.resize(want);
    uint64_t got = 0;
    while (got < want) {
      la_ssize_t n = archive_read_data(a_, m.data.data() + got, want - got);
      if (n <= 0) {
        m.reason = "truncated_tar_member";
        m.detail = fmt::format("member '{}' has {} of its {} bytes ({})", Printable(name), got, want,
                               archive_error_string(a_) ? archive_error_string(a_) : "short read");
        m.data.clear();
        m.end = true;
        return m;
      }
      got += static_cast<uint64_t>(n);
    }
    return m;
  }

  // The next record's members, grouped by key; checks that need the whole record come after.
  StatusOr<bool> ReadRecord(RawRecord* out) {
    while (!done_) {
      archive_entry* e = nullptr;
      int rc = archive_read_next_header(a_, &e);
      if (rc == ARCHIVE_EOF) {
        done_ = true;
        break;
      }
      if (rc < ARCHIVE_WARN) {
        done_ = true;
        if (members_ == 0)
          return InvalidArgumentError(fmt::format("'{}' is not a tar archive: {}", path_, archive_error_string(a_)));
        // Damage after the last complete member: the pending record (if any) is all we had.
        if (have_pending_ && pending_.reject_reason.empty()) {
          pending_.reject_reason = "truncated_tar_member";
          pending_.reject_detail = fmt::format("archive ends inside the record: {}", archive_error_string(a_));
        }
        break;
      }
      ++members_;
      if (archive_entry_filetype(e) != AE_IFREG) continue;
      const char* pathname = archive_entry_pathname(e);
      std::string name = pathname != nullptr ? pathname : "";
      std::string base = name.substr(name.find_last_of('/') + 1);
      size_t dot = base.find('.');
      std::string key = base.substr(0, dot);
      std::string ext = dot == std::string::npos ? "" : base.substr(dot + 1);
      int64_t offset = archive_read_header_position(a_);
      Member m = ReadMember(e, name, ext, offset);
      const bool end = m.end;
      if (have_pending_ && key != pending_.id) {
        *out = std::move(pending_);
        have_pending_ = false;
        StartPending(key, offset);
        Add(ext, std::move(m));
        if (end) done_ = true;
        return true;
      }
      if (!have_pending_) StartPending(key, offset);
      Add(ext, std::move(m));
      if (end) {
        done_ = true;
        break;
      }
    }
    if (have_pending_) {
      *out = std::move(pending_);
      have_pending_ = false;
      return true;
    }
    return false;
  }

  void StartPending(const std::string& key, int64_t offset) {
    pending_ = RawRecord();
    pending_.ordinal = ordinal_++;
    pending_.id = key;
    pending_.byte_offset = offset;
    pending_.kind = SampleKind::kCaption;
    pending_.wants_image = true;
    have_pending_ = true;
  }

  void Add(const std::string& ext, Member m) {
    if (!m.reason.empty()) {
      // A truncated member ends the record whatever was wrong before; otherwise the first
      // problem found is the one reported.
      if (pending_.reject_reason.empty() || m.reason == "truncated_tar_member") {
        pending_.reject_reason = std::move(m.reason);
        pending_.reject_detail = std::move(m.detail);
      }
      return;
    }
    if (ext == "jpg" || ext == "jpeg") {
      pending_.image = std::move(m.data);
      pending_.image_found = true;
    } else if (ext == "txt") {
      pending_.text = std::move(m.data);
    } else if (ext == "json") {
      pending_.metadata_json = std::move(m.data);
    }
  }

  // Checks a complete record (its next key started or the archive ended).
  void Finish(RawRecord* r) {
    if (!r->reject_reason.empty()) return;
    if (!r->metadata_json.empty()) {
      if (int depth = JsonDepth(r->metadata_json, limits_.max_json_depth); depth > limits_.max_json_depth) {
        r->reject_reason = "malformed_json";
        r->reject_detail = fmt::format("member '{}.json': {}", r->id, TooDeep(depth, limits_.max_json_depth));
        return;
      }
      try {
        nlohmann::json parsed = nlohmann::json::parse(r->metadata_json);
        (void)parsed;
      } catch (const nlohmann::json::exception& e) {
        r->reject_reason = "malformed_json";
        r->reject_detail = fmt::format("member '{}.json': {}", r->id, e.what());
      }
    }
  }

 private:
  void LoadStats() {
    std::string stats = path_;
    if (stats.size() > 4 && stats.substr(stats.size() - 4) == ".tar") stats = stats.substr(0, stats.size() - 4);
    stats += "_stats.json";
    std::ifstream in(stats, std::ios::binary);
    if (!in) return;
    const uint64_t size = FileSizeOf(stats);
    if (size > limits_.max_record_bytes) {
      VLOG_WARNING("{}: {}; its counts are not recorded", stats,
                   OverLimit(size, limits_.max_record_bytes, "one text record", "max_record_bytes"));
      reported_["stats_file_unreadable"] = 1;
      return;
    }
    std::string text(size, '\0');
    in.read(text.data(), static_cast<std::streamsize>(size));
    text.resize(static_cast<size_t>(in.gcount()));
    if (JsonDepth(text, limits_.max_json_depth) > limits_.max_json_depth) {
      reported_["stats_file_unreadable"] = 1;
      return;
    }
    try {
      auto j = nlohmann::json::parse(text);
      for (const char* k : {"count", "successes", "failed_to_download", "failed_to_resize"}) {
        if (j.contains(k) && j[k].is_number_integer()) reported_[k] = j[k].get<int64_t>();
      }
    } catch (const nlohmann::json::exception&) {
      reported_["stats_file_unreadable"] = 1;
    }
  }

  std::string path_;
  ReadLimits limits_;
  archive* a_ = nullptr;
  uint64_t file_size_ = 0;
  bool plain_ = true;
  bool done_ = false, have_pending_ = false;
  uint64_t members_ = 0, ordinal_ = 0;
  RawRecord pending_;
  std::map<std::string, int64_t> reported_;
};

bool IsDir(const std::string& p) {
  struct stat st;
  return ::stat(p.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}
bool IsFile(const std::string& p) {
  struct stat st;
  return ::stat(p.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

// Why an image path taken from chat.json could leave the images directory (or name an
// images.zip entry outside images/), or empty when it cannot: it must be relative and
// climb nowhere. Backslashes are refused outright: on the systems whose zip tools wrote
// them they are separators, so "..\x.jpg" climbs there.
std::string UnsafeRelativePath(const std::string& path) {
  if (path.empty()) return "it is empty";
  if (path.find('\0') != std::string::npos) return "it contains a NUL byte";
  if (path[0] == '/') return "it is absolute";
  if (path.find('\\') != std::string::npos) return "it contains a backslash";
  if (path.size() >= 2 && std::isalpha(static_cast<unsigned char>(path[0])) && path[1] == ':')
    return "it starts with a drive letter";
  for (size_t start = 0; start <= path.size();) {
    size_t end = path.find('/', start);
    if (end == std::string::npos) end = path.size();
    if (path.compare(start, end - start, "..") == 0) return "it has a '..' component";
    start = end + 1;
  }
  return "";
}

class LlavaReader : public RecordReader {
 public:
  explicit LlavaReader(const ReadLimits& limits) : limits_(limits) {}
  ~LlavaReader() override {
    if (zip_ != nullptr) zip_discard(zip_);
  }

  Status Open(const std::string& path) {
    std::string chat = path;
    if (IsDir(path)) chat = path + "/chat.json";
    if (!IsFile(chat)) return NotFoundError(fmt::format("no chat.json at '{}' (give the CC595K directory or its chat.json)", chat));
    dir_ = chat.substr(0, chat.find_last_of('/') == std::string::npos ? 0 : chat.find_last_of('/'));
    if (dir_.empty()) dir_ = ".";
    RETURN_IF_ERROR(chat_.Open(chat, limits_.max_record_bytes));
    if (IsDir(dir_ + "/images")) {
      images_dir_ = dir_ + "/images";
      // Image paths must resolve inside the folder's real path (the folder itself may be a
      // symlink: it is where the dataset's owner put it).
      char* real = ::realpath(images_dir_.c_str(), nullptr);
      if (real == nullptr) return ErrnoError("cannot resolve the images folder", images_dir_, errno);
      images_real_ = real;
      std::free(real);
    } else if (IsFile(dir_ + "/images.zip")) {
      int err = 0;
      zip_size_ = FileSizeOf(dir_ + "/images.zip");
      zip_ = zip_open((dir_ + "/images.zip").c_str(), ZIP_RDONLY, &err);
      if (zip_ == nullptr) {
        zip_error_t ze;
        zip_error_init_with_code(&ze, err);
        std::string why = zip_error_strerror(&ze);
        zip_error_fini(&ze);
        return InvalidArgumentError(fmt::format("cannot read '{}/images.zip': {}", dir_, why));
      }
    } else {
      return NotFoundError(fmt::format("no images/ folder or images.zip next to '{}'", chat));
    }
    if (IsFile(dir_ + "/metadata.json")) RETURN_IF_ERROR(LoadMetadata(dir_ + "/metadata.json"));
    return Status::OK();
  }

  StatusOr<bool> Next(RawRecord* out) override {
    JsonArraySplitter::Element el;
    ASSIGN_OR_RETURN(bool more, chat_.Next(&el));
    if (!more) return false;
    const int64_t offset = el.offset;
    *out = RawRecord();
    out->ordinal = ordinal_++;
    out->byte_offset = offset;
    out->kind = SampleKind::kConversation;
    out->wants_image = true;
    auto reject = [&](const char* reason, const std::string& detail) {
      out->reject_reason = reason;
      out->reject_detail = fmt::format("chat.json element {} at byte {}: {}", out->ordinal, offset, detail);
      return true;
    };
    if (el.oversize)
      return reject("oversize_record",
                    "the element is " + OverLimit(el.size, limits_.max_record_bytes, "one record", "max_record_bytes"));
    if (el.truncated) return reject("malformed_json", "the file ends inside this element");
    if (el.depth > limits_.max_json_depth) return reject("malformed_json", TooDeep(el.depth, limits_.max_json_depth));
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(el.text);
    } catch (const nlohmann::json::exception& e) {
      bool utf8 = std::string(e.what()).find("UTF-8") != std::string::npos;
      return reject(utf8 ? "non_utf8_text" : "malformed_json", e.what());
    }
    if (!j.is_object() || !j.contains("id") || !j["id"].is_string())
      return reject("malformed_json", "expected an object with a string \"id\"");
    out->id = j["id"].get<std::string>();
    if (!j.contains("image") || !j["image"].is_string())
      return reject("malformed_json", "expected a string \"image\"");
    if (!j.contains("conversations") || !j["conversations"].is_array())
      return reject("malformed_json", "expected an array \"conversations\"");
    for (const auto& t : j["conversations"]) {
      if (!t.is_object() || !t.contains("from") || !t.contains("value") || !t["from"].is_string() ||
          !t["value"].is_string())
        return reject("malformed_json", "a conversation turn lacks string \"from\" / \"value\"");
      out->conversation.push_back({t["from"].get<std::string>(), t["value"].get<std::string>()});
    }
    auto meta = metadata_.find(out->id);
    if (meta != metadata_.end()) out->metadata_json = meta->second;
    const std::string image = j["image"].get<std::string>();
    if (std::string why = UnsafeRelativePath(image); !why.empty())
      return reject("unsafe_image_path", fmt::format("image path '{}' escapes the images directory ({}); it was not "
                                                     "read. Image paths must be relative to images/",
                                                     Printable(image), why));
    auto [reason, detail] = images_dir_.empty() ? ReadFromZip(image, out) : ReadFromFolder(image, out);
    if (reason != nullptr) {
      out->image.clear();
      out->image_found = false;
      return reject(reason, detail);
    }
    return true;
  }

  uint64_t bytes_read() const override { return chat_.bytes_read(); }

 private:
  using Verdict = std::pair<const char*, std::string>;  // reject reason (nullptr: none), detail

  // images/<image>, `image` already relative and without "..": its real path (symlinks
  // resolved) must lie inside the folder's, it must be a regular file no larger than the
  // image limit, and it is opened without following a symlink at the last step (one swapped
  // in after the check). Absent: image_found stays false (missing_image).
  Verdict ReadFromFolder(const std::string& image, RawRecord* out) {
    const std::string path = images_dir_ + "/" + image;
    char* real = ::realpath(path.c_str(), nullptr);
    if (real == nullptr) {
      if (errno == ENOENT || errno == ENOTDIR) return {};
      return {"missing_image", fmt::format("cannot resolve 'images/{}': {}", Printable(image), std::strerror(errno))};
    }
    const std::string resolved = real;
    std::free(real);
    if (resolved.compare(0, images_real_.size() + 1, images_real_ + "/") != 0)
      return {"unsafe_image_path",
              fmt::format("image path '{}' escapes the images directory: it resolves to '{}', outside '{}' (a symlink "
                          "that leads out of the folder); it was not read",
                          Printable(image), Printable(resolved), Printable(images_real_))};
    const int fd = ::open(resolved.c_str(), O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) {
      if (errno == ELOOP)
        return {"unsafe_image_path", fmt::format("image path '{}' became a symlink while it was read; it was not read",
                                                 Printable(image))};
      return {"missing_image", fmt::format("cannot open 'images/{}': {}", Printable(image), std::strerror(errno))};
    }
    Verdict v;
    struct stat st;
    if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
      v = {"missing_image", fmt::format("'images/{}' is not a regular file", Printable(image))};
    } else if (static_cast<uint64_t>(st.st_size) > limits_.max_image_bytes) {
      v = {"oversize_record", fmt::format("'images/{}' is {}", Printable(image),
                                          OverLimit(st.st_size, limits_.max_image_bytes, "one image", "max_image_bytes"))};
    } else {
      // At most the size fstat gave: a file that grows meanwhile cannot make this allocate more.
      out->image.resize(static_cast<size_t>(st.st_size));
      size_t got = 0;
      while (got < out->image.size()) {
        const ssize_t n = ::read(fd, out->image.data() + got, out->image.size() - got);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        got += static_cast<size_t>(n);
      }
      out->image.resize(got);  // a file that shrank is judged by what it holds
      out->image_found = true;
    }
    ::close(fd);
    return v;
  }

  // The images.zip entry `image` (or images/<image>). Its declared uncompressed size must be
  // within the image limit, and at most that many bytes are allocated: an entry whose data
  // inflates past what it declares is rejected (size_mismatch) after one more byte is read.
  // Entries are looked up by name, never extracted, so names inside the zip open no files.
  Verdict ReadFromZip(const std::string& image, RawRecord* out) {
    zip_int64_t idx = zip_name_locate(zip_, image.c_str(), 0);
    std::string name = image;
    if (idx < 0) {
      name = "images/" + image;
      idx = zip_name_locate(zip_, name.c_str(), 0);
    }
    if (idx < 0) return {};
    zip_stat_t st;
    zip_stat_init(&st);
    if (zip_stat_index(zip_, static_cast<zip_uint64_t>(idx), 0, &st) != 0 || !(st.valid & ZIP_STAT_SIZE))
      return {"undecodable_image", fmt::format("'{}' in images.zip has no readable size", Printable(name))};
    if (st.size > limits_.max_image_bytes)
      return {"oversize_record", fmt::format("'{}' in images.zip declares {}", Printable(name),
                                             OverLimit(st.size, limits_.max_image_bytes, "one image", "max_image_bytes"))};
    if ((st.valid & ZIP_STAT_COMP_SIZE) && st.comp_size > zip_size_)
      return {"size_mismatch", fmt::format("'{}' in images.zip declares {} compressed, but images.zip is only {}",
                                           Printable(name), Bytes(st.comp_size), Bytes(zip_size_))};
    zip_file_t* zf = zip_fopen_index(zip_, static_cast<zip_uint64_t>(idx), 0);
    if (zf == nullptr)
      return {"undecodable_image", fmt::format("cannot open '{}' in images.zip: {}", Printable(name), zip_strerror(zip_))};
    out->image.resize(st.size);
    zip_int64_t n = st.size ? zip_fread(zf, out->image.data(), st.size) : 0;
    char extra;
    zip_int64_t more = n == static_cast<zip_int64_t>(st.size) ? zip_fread(zf, &extra, 1) : 0;
    zip_fclose(zf);
    if (more > 0)
      return {"size_mismatch", fmt::format("'{}' in images.zip inflates past the {} its directory declares (damaged, "
                                           "or built to exhaust memory); nothing past them was kept",
                                           Printable(name), Bytes(st.size))};
    if (n != static_cast<zip_int64_t>(st.size) || more < 0)
      return {"undecodable_image", fmt::format("'{}' in images.zip is damaged", Printable(name))};
    out->image_found = true;
    return {};
  }

  Status LoadMetadata(const std::string& path) {
    JsonArraySplitter s;
    RETURN_IF_ERROR(s.Open(path, limits_.max_record_bytes));
    JsonArraySplitter::Element el;
    uint64_t skipped = 0;
    while (true) {
      ASSIGN_OR_RETURN(bool more, s.Next(&el));
      if (!more || el.truncated) break;
      // A damaged, oversize or too deeply nested metadata entry only loses that sample's
      // extra fields.
      if (el.oversize || el.depth > limits_.max_json_depth) {
        ++skipped;
        continue;
      }
      try {
        auto j = nlohmann::json::parse(el.text);
        if (j.is_object() && j.contains("id") && j["id"].is_string()) metadata_[j["id"].get<std::string>()] = j.dump();
      } catch (const nlohmann::json::exception&) {
      }
    }
    if (skipped > 0)
      VLOG_WARNING("{}: {} elements over the record limits (ReadLimits::max_record_bytes {}, max_json_depth {}) were "
                   "skipped; those samples have no metadata", path, skipped, Bytes(limits_.max_record_bytes),
                   limits_.max_json_depth);
    return Status::OK();
  }

  ReadLimits limits_;
  JsonArraySplitter chat_;
  std::string dir_, images_dir_, images_real_;
  zip_t* zip_ = nullptr;
  uint64_t zip_size_ = 0;
  std::unordered_map<std::string, std::string> metadata_;
  uint64_t ordinal_ = 0;
};

}  // namespace

Status ReadLimits::Validate() const {
  if (max_image_bytes < 1) return InvalidArgumentError("read limits: max_image_bytes must be >= 1");
  if (max_record_bytes < 1) return InvalidArgumentError("read limits: max_record_bytes must be >= 1");
  if (max_json_depth < 1) return InvalidArgumentError("read limits: max_json_depth must be >= 1");
  return Status::OK();
}

Status JsonArraySplitter::Open(const std::string& path, uint64_t max_element_bytes) {
  path_ = path;
  max_element_bytes_ = max_element_bytes;
  in_.open(path, std::ios::binary);
  if (!in_) return NotFoundError(fmt::format("cannot open '{}'", path));
  buf_.resize(1 << 20);
  int c;
  while ((c = Get()) != -1 && std::isspace(c)) {
  }
  if (c != '[') return InvalidArgumentError(fmt::format("'{}' is not a JSON array (it does not start with '[')", path));
  return Status::OK();
}

int JsonArraySplitter::Get() {
  if (buf_pos_ == buf_len_) {
    in_.read(buf_.data(), static_cast<std::streamsize>(buf_.size()));
    buf_len_ = static_cast<size_t>(in_.gcount());
    buf_pos_ = 0;
    if (buf_len_ == 0) return -1;
  }
  ++pos_;
  return static_cast<unsigned char>(buf_[buf_pos_++]);
}

StatusOr<bool> JsonArraySplitter::Next(Element* el) {
  el->text.clear();
  el->offset = 0;
  el->size = 0;
  el->depth = 0;
  el->truncated = el->oversize = false;
  if (done_) return false;
  int c;
  while ((c = Get()) != -1 && (std::isspace(c) || c == ',')) {
  }
  if (c == -1) {
    done_ = true;
    return false;  // missing ']': everything before it was complete
  }
  if (c == ']') {
    done_ = true;
    return false;
  }
  el->offset = static_cast<int64_t>(pos_) - 1;
  int depth = 0;
  bool in_string = false, escape = false;
  while (c != -1) {
    if (!in_string && depth == 0 && (c == ',' || c == ']')) {
      if (c == ']') done_ = true;
      return true;  // a scalar element
    }
    if (++el->size <= max_element_bytes_) {
      el->text.push_back(static_cast<char>(c));
    } else if (!el->oversize) {
      el->oversize = true;
      std::string().swap(el->text);  // scanned on to its end, not kept
    }
    if (in_string) {
      if (escape) escape = false;
      else if (c == '\\') escape = true;
      else if (c == '"') in_string = false;
    } else if (c == '"') {
      in_string = true;
    } else if (c == '{' || c == '[') {
      el->depth = std::max(el->depth, ++depth);
    } else if (c == '}' || c == ']') {
      if (--depth == 0) return true;
    }
    c = Get();
  }
  el->truncated = true;
  done_ = true;
  return true;
}

StatusOr<std::unique_ptr<RecordReader>> OpenLlava(const std::string& path, const ReadLimits& limits) {
  RETURN_IF_ERROR(limits.Validate());
  auto r = std::make_unique<LlavaReader>(limits);
  RETURN_IF_ERROR(r->Open(path));
  return std::unique_ptr<RecordReader>(std::move(r));
}

StatusOr<std::unique_ptr<RecordReader>> OpenJsonl(const std::string& path, const ReadLimits& limits) {
  RETURN_IF_ERROR(limits.Validate());
  auto r = std::make_unique<JsonlReader>(path, limits);
  if (!r->is_open()) return NotFoundError(fmt::format("cannot open JSONL source '{}'", path));
  return std::unique_ptr<RecordReader>(std::move(r));
}

StatusOr<std::unique_ptr<RecordReader>> OpenImg2DatasetTar(const std::string& path, const ReadLimits& limits) {
  RETURN_IF_ERROR(limits.Validate());
  auto tar = std::make_unique<TarReader>(path, limits);
  RETURN_IF_ERROR(tar->Open());
  return std::unique_ptr<RecordReader>(std::move(tar));
}

}  // namespace vlorch::sharding
