#include "sharding/readers.h"

#include <archive.h>
#include <archive_entry.h>
#include <sys/stat.h>
#include <zip.h>

#include <unordered_map>

#include <fstream>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

namespace vlorch::sharding {
namespace {

class JsonlReader : public RecordReader {
 public:
  explicit JsonlReader(std::string path) : path_(std::move(path)), in_(path_, std::ios::binary) {}
  bool is_open() const { return in_.is_open(); }

  StatusOr<bool> Next(RawRecord* out) override {
    std::string line;
    while (true) {
      int64_t offset = static_cast<int64_t>(bytes_);
      if (!std::getline(in_, line)) {
        if (in_.bad()) return IOError(fmt::format("reading '{}' failed at byte {}", path_, bytes_));
        return false;
      }
      bytes_ += line.size() + 1;
      ++line_no_;
      if (line.find_first_not_of(" \t\r") == std::string::npos) continue;  // blank lines are not records
      *out = RawRecord();
      out->ordinal = ordinal_++;
      out->byte_offset = offset;
      out->kind = SampleKind::kText;
      out->id = fmt::format("line {}", line_no_);
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
  std::string path_;
  std::ifstream in_;
  uint64_t bytes_ = 0, line_no_ = 0, ordinal_ = 0;
};

// Groups consecutive tar members by key (the name up to the first '.') into records.
class TarReader : public RecordReader {
 public:
  explicit TarReader(std::string path) : path_(std::move(path)) {}
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
        if (have_pending_) {
          pending_.reject_reason = pending_.reject_reason.empty() ? "truncated_tar_member" : pending_.reject_reason;
          pending_.reject_detail = fmt::format("archive ends inside the record: {}", archive_error_string(a_));
        }
        break;
      }
      ++members_;
      if (archive_entry_filetype(e) != AE_IFREG) continue;
      std::string name = archive_entry_pathname(e);
      std::string base = name.substr(name.find_last_of('/') + 1);
      size_t dot = base.find('.');
      std::string key = base.substr(0, dot);
      std::string ext = dot == std::string::npos ? "" : base.substr(dot + 1);
      int64_t offset = archive_read_header_position(a_);
      std::string data;
      bool truncated = false;
      int64_t want = archive_entry_size(e);
      data.resize(static_cast<size_t>(std::max<int64_t>(want, 0)));
      int64_t got = 0;
      while (got < want) {
        la_ssize_t n = archive_read_data(a_, data.data() + got, static_cast<size_t>(want - got));
        if (n <= 0) {
          truncated = true;
          break;
        }
        got += n;
      }
      if (have_pending_ && key != pending_.id) {
        *out = std::move(pending_);
        have_pending_ = false;
        StartPending(key, offset);
        Add(ext, std::move(data), truncated, got, want);
        if (truncated) done_ = true;
        return true;
      }
      if (!have_pending_) StartPending(key, offset);
      Add(ext, std::move(data), truncated, got, want);
      if (truncated) {
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

  void Add(const std::string& ext, std::string data, bool truncated, int64_t got, int64_t want) {
    if (truncated) {
      pending_.reject_reason = "truncated_tar_member";
      pending_.reject_detail = fmt::format("member '{}.{}' has {} of its {} bytes ({})", pending_.id, ext, got,
                                           want, archive_error_string(a_) ? archive_error_string(a_) : "short read");
      return;
    }
    if (ext == "jpg" || ext == "jpeg") {
      pending_.image = std::move(data);
      pending_.image_found = true;
    } else if (ext == "txt") {
      pending_.text = std::move(data);
    } else if (ext == "json") {
      pending_.metadata_json = std::move(data);
    }
  }

  // Checks a complete record (its next key started or the archive ended).
  void Finish(RawRecord* r) {
    if (!r->reject_reason.empty()) return;
    if (!r->metadata_json.empty()) {
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
    std::ifstream in(stats);
    if (!in) return;
    try {
      auto j = nlohmann::json::parse(in);
      for (const char* k : {"count", "successes", "failed_to_download", "failed_to_resize"}) {
        if (j.contains(k) && j[k].is_number_integer()) reported_[k] = j[k].get<int64_t>();
      }
    } catch (const nlohmann::json::exception&) {
      reported_["stats_file_unreadable"] = 1;
    }
  }

  std::string path_;
  archive* a_ = nullptr;
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

class LlavaReader : public RecordReader {
 public:
  ~LlavaReader() override {
    if (zip_ != nullptr) zip_discard(zip_);
  }

  Status Open(const std::string& path) {
    std::string chat = path;
    if (IsDir(path)) chat = path + "/chat.json";
    if (!IsFile(chat)) return NotFoundError(fmt::format("no chat.json at '{}' (give the CC595K directory or its chat.json)", chat));
    dir_ = chat.substr(0, chat.find_last_of('/') == std::string::npos ? 0 : chat.find_last_of('/'));
    if (dir_.empty()) dir_ = ".";
    RETURN_IF_ERROR(chat_.Open(chat));
    if (IsDir(dir_ + "/images")) {
      images_dir_ = dir_ + "/images";
    } else if (IsFile(dir_ + "/images.zip")) {
      int err = 0;
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
    std::string text;
    int64_t offset = 0;
    bool truncated = false;
    ASSIGN_OR_RETURN(bool more, chat_.Next(&text, &offset, &truncated));
    if (!more) return false;
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
    if (truncated) return reject("malformed_json", "the file ends inside this element");
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(text);
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
    if (!images_dir_.empty()) {
      std::ifstream f(images_dir_ + "/" + image, std::ios::binary);
      if (f) {
        out->image.assign(std::istreambuf_iterator<char>(f), {});
        out->image_found = true;
      }
    } else {
      zip_int64_t idx = zip_name_locate(zip_, image.c_str(), 0);
      if (idx < 0) idx = zip_name_locate(zip_, ("images/" + image).c_str(), 0);
      if (idx >= 0) {
        zip_stat_t st;
        zip_stat_index(zip_, idx, 0, &st);
        zip_file_t* zf = zip_fopen_index(zip_, idx, 0);
        if (zf == nullptr) return reject("undecodable_image", fmt::format("cannot open '{}' in images.zip", image));
        out->image.resize(st.size);
        zip_int64_t n = st.size ? zip_fread(zf, out->image.data(), st.size) : 0;
        zip_fclose(zf);
        if (n != static_cast<zip_int64_t>(st.size))
          return reject("undecodable_image", fmt::format("'{}' in images.zip is damaged", image));
        out->image_found = true;
      }
    }
    return true;
  }

  uint64_t bytes_read() const override { return chat_.bytes_read(); }

 private:
  Status LoadMetadata(const std::string& path) {
    JsonArraySplitter s;
    RETURN_IF_ERROR(s.Open(path));
    std::string text;
    int64_t offset;
    bool truncated;
    while (true) {
      ASSIGN_OR_RETURN(bool more, s.Next(&text, &offset, &truncated));
      if (!more || truncated) break;
      try {
        auto j = nlohmann::json::parse(text);
        if (j.is_object() && j.contains("id") && j["id"].is_string()) metadata_[j["id"].get<std::string>()] = j.dump();
      } catch (const nlohmann::json::exception&) {
        // A damaged metadata entry only loses that sample's extra fields.
      }
    }
    return Status::OK();
  }

  JsonArraySplitter chat_;
  std::string dir_, images_dir_;
  zip_t* zip_ = nullptr;
  std::unordered_map<std::string, std::string> metadata_;
  uint64_t ordinal_ = 0;
};

}  // namespace

Status JsonArraySplitter::Open(const std::string& path) {
  path_ = path;
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

StatusOr<bool> JsonArraySplitter::Next(std::string* element, int64_t* offset, bool* truncated) {
  element->clear();
  *truncated = false;
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
  *offset = static_cast<int64_t>(pos_) - 1;
  int depth = 0;
  bool in_string = false, escape = false;
  while (c != -1) {
    if (!in_string && depth == 0 && (c == ',' || c == ']')) {
      if (c == ']') done_ = true;
      return true;  // a scalar element
    }
    element->push_back(static_cast<char>(c));
    if (in_string) {
      if (escape) escape = false;
      else if (c == '\\') escape = true;
      else if (c == '"') in_string = false;
    } else if (c == '"') {
      in_string = true;
    } else if (c == '{' || c == '[') {
      ++depth;
    } else if (c == '}' || c == ']') {
      if (--depth == 0) return true;
    }
    c = Get();
  }
  *truncated = true;
  done_ = true;
  return true;
}

StatusOr<std::unique_ptr<RecordReader>> OpenLlava(const std::string& path) {
  auto r = std::make_unique<LlavaReader>();
  RETURN_IF_ERROR(r->Open(path));
  return std::unique_ptr<RecordReader>(std::move(r));
}

StatusOr<std::unique_ptr<RecordReader>> OpenJsonl(const std::string& path) {
  auto r = std::make_unique<JsonlReader>(path);
  if (!r->is_open()) return NotFoundError(fmt::format("cannot open JSONL source '{}'", path));
  return std::unique_ptr<RecordReader>(std::move(r));
}

StatusOr<std::unique_ptr<RecordReader>> OpenImg2DatasetTar(const std::string& path) {
  auto tar = std::make_unique<TarReader>(path);
  RETURN_IF_ERROR(tar->Open());
  return std::unique_ptr<RecordReader>(std::move(tar));
}

}  // namespace vlorch::sharding
