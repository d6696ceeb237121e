// Readers of source formats. Each yields RawRecords in file order, numbered from 0. A record
// the reader can already tell is bad (malformed JSON, a truncated tar member, an image the
// record names but the source lacks) comes with a reject reason; the ingest quarantines it.
// A source that cannot be read at all is an error from Open*/Next naming the path.
#pragma once

#include <cstdint>
#include <fstream>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "common/status.h"
#include "sharding/record.h"

namespace vlorch::sharding {

struct RawRecord {
  uint64_t ordinal = 0;
  int64_t byte_offset = -1;  // where the record starts in the file, when known
  std::string id;
  SampleKind kind = SampleKind::kCaption;
  std::string text;
  std::vector<Turn> conversation;
  bool wants_image = false;  // the format pairs this record with an image
  bool image_found = false;  // the source had the image file (it may still be empty)
  std::string image;
  std::string metadata_json;
  std::string reject_reason;  // set by the reader for records it knows are bad
  std::string reject_detail;
};

class RecordReader {
 public:
  virtual ~RecordReader() = default;
  // false at the end of the source.
  virtual StatusOr<bool> Next(RawRecord* out) = 0;
  // Bytes consumed so far (for progress).
  virtual uint64_t bytes_read() const = 0;
  // Counts the source reports about itself (img2dataset's stats file).
  virtual std::map<std::string, int64_t> Reported() const { return {}; }
};

// {"text": ...} per line (an optional "id" names the record; otherwise "line N").
StatusOr<std::unique_ptr<RecordReader>> OpenJsonl(const std::string& path);
// img2dataset webdataset shard NNNNN.tar with {key}.jpg/.txt/.json, and NNNNN_stats.json.
StatusOr<std::unique_ptr<RecordReader>> OpenImg2DatasetTar(const std::string& path);
// LLaVA CC595K: `path` is the dataset directory or its chat.json. chat.json is read as a
// stream, one array element at a time; metadata.json beside it (optional) is joined by id;
// images come from an images/ folder or, without unpacking, from images.zip.
StatusOr<std::unique_ptr<RecordReader>> OpenLlava(const std::string& path);

// Pull-style splitter of a JSON array into its elements' raw text, without parsing them:
// memory is bounded by the largest element, and each element's byte offset is known.
class JsonArraySplitter {
 public:
  // InvalidArgument when the file does not start with '['.
  Status Open(const std::string& path);
  // false after the closing ']'. A file that ends inside an element yields that element's
  // partial text with *truncated = true, then false.
  StatusOr<bool> Next(std::string* element, int64_t* offset, bool* truncated);
  uint64_t bytes_read() const { return pos_; }

 private:
  int Get();  // next byte or -1
  std::string path_;
  std::ifstream in_;
  std::vector<char> buf_;
  size_t buf_pos_ = 0, buf_len_ = 0;
  uint64_t pos_ = 0;
  bool done_ = false;
};

}  // namespace vlorch::sharding
