#include "sharding/readers.h"

#include <archive.h>
#include <archive_entry.h>

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

  uint64_t bytes_read() const override { return a_ ? static_cast<uint64_t>(archive_filter_bytes(a_, -1)) : 0; }
  std::map<std::string, int64_t> Reported() const override { return reported_; }

 private:
  void StartPending(const std::string& key, int64_t offset) {
    pending_ = RawRecord();
    pending_.ordinal = ordinal_++;
    pending_.id = key;
    pending_.byte_offset = offset;
    pending_.kind = SampleKind::kCaption;
    pending_.wants_image = true;
    have_pending_ = true;
    has_jpg_ = has_txt_ = false;
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
      has_jpg_ = true;
    } else if (ext == "txt") {
      pending_.text = std::move(data);
      has_txt_ = true;
    } else if (ext == "json") {
      pending_.metadata_json = std::move(data);
    }
  }

  // Called when the record is complete (next key started or end of archive).
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

 public:
  // Completes the record handed out by Next() when a new key starts (see Next).
  StatusOr<bool> NextFinished(RawRecord* out) {
    ASSIGN_OR_RETURN(bool more, Next(out));
    if (more) Finish(out);
    return more;
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
  bool done_ = false, have_pending_ = false, has_jpg_ = false, has_txt_ = false;
  uint64_t members_ = 0, ordinal_ = 0;
  RawRecord pending_;
  std::map<std::string, int64_t> reported_;
};

// Wraps TarReader so every record handed out has been through Finish().
class Img2DatasetReader : public RecordReader {
 public:
  explicit Img2DatasetReader(std::unique_ptr<TarReader> tar) : tar_(std::move(tar)) {}
  StatusOr<bool> Next(RawRecord* out) override { return tar_->NextFinished(out); }
  uint64_t bytes_read() const override { return tar_->bytes_read(); }
  std::map<std::string, int64_t> Reported() const override { return tar_->Reported(); }

 private:
  std::unique_ptr<TarReader> tar_;
};

}  // namespace

StatusOr<std::unique_ptr<RecordReader>> OpenJsonl(const std::string& path) {
  auto r = std::make_unique<JsonlReader>(path);
  if (!r->is_open()) return NotFoundError(fmt::format("cannot open JSONL source '{}'", path));
  return std::unique_ptr<RecordReader>(std::move(r));
}

StatusOr<std::unique_ptr<RecordReader>> OpenImg2DatasetTar(const std::string& path) {
  auto tar = std::make_unique<TarReader>(path);
  RETURN_IF_ERROR(tar->Open());
  return std::unique_ptr<RecordReader>(std::make_unique<Img2DatasetReader>(std::move(tar)));
}

}  // namespace vlorch::sharding
