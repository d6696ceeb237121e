// Readers of source formats. Each yields RawRecords in file order, numbered from 0. A record
// the reader can already tell is bad (malformed JSON, a truncated tar member, an image the
// record names but the source lacks) comes with a reject reason; the ingest quarantines it.
// A source that cannot be read at all is an error from Open*/Next naming the path.
//
// Nothing a source declares is trusted (docs/shard-store.md, "Limits"): a size in a tar
// header or a zip directory is checked against the bytes the file actually holds and against
// ReadLimits before anything is allocated, and every read goes into a buffer no larger than
// the limit. A record over a limit comes back with reject reason "oversize_record" and the
// reader goes on with the next one (a tar member whose size is a lie ends its archive: the
// next header's place depends on that size). Image paths a record names are kept inside
// the images/ folder; one that would leave it is rejected as "unsafe_image_path".
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

// What one record may make a reader allocate, whatever the source declares. Per record: an
// ingest holds up to three batches at once (reading, validating, committing), so its memory
// is bounded by about 3 x batch_size x (max_image_bytes + max_record_bytes).
struct ReadLimits {
  // Largest image: a tar .jpg member, a file in images/, an images.zip entry (by its declared
  // uncompressed size; an entry that inflates past what it declares is rejected too).
  // Default 64 MiB: img2dataset's default 256 px resize gives ~20 KB, an unresized 60-Mpixel
  // camera JPEG is ~30 MB.
  uint64_t max_image_bytes = uint64_t{64} << 20;
  // Largest text record: a JSONL line, a chat.json or metadata.json element, a tar .txt or
  // .json member (and a tar's _stats.json file). Default 16 MiB: CC595K elements are under
  // 2 KB, a whole novel as one JSONL document is 1-5 MB.
  uint64_t max_record_bytes = uint64_t{16} << 20;
  // Deepest nesting of JSON objects and arrays in a record; deeper is "malformed_json".
  // nlohmann::json's dump() recurses once per level, so a 16 MiB line of '[' would overflow
  // the stack. Default 100 (real metadata nests 2-4 levels).
  int max_json_depth = 100;

  Status Validate() const;
};

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
StatusOr<std::unique_ptr<RecordReader>> OpenJsonl(const std::string& path, const ReadLimits& limits = {});
// img2dataset webdataset shard NNNNN.tar with {key}.jpg/.txt/.json, and NNNNN_stats.json.
StatusOr<std::unique_ptr<RecordReader>> OpenImg2DatasetTar(const std::string& path,
                                                          const ReadLimits& limits = {});
// LLaVA CC595K: `path` is the dataset directory or its chat.json. chat.json is read as a
// stream, one array element at a time; metadata.json beside it (optional) is joined by id;
// images come from an images/ folder or, without unpacking, from images.zip. An element's
// "image" must be a relative path that stays inside images/ (no "..", no leading '/', no
// backslash, no NUL), and in the folder its real path (symlinks resolved) must too.
StatusOr<std::unique_ptr<RecordReader>> OpenLlava(const std::string& path, const ReadLimits& limits = {});

// Pull-style splitter of a JSON array into its elements' raw text, without parsing them:
// memory is bounded by max_element_bytes, and each element's byte offset is known.
class JsonArraySplitter {
 public:
  struct Element {
    std::string text;     // the element's raw text; empty when oversize
    int64_t offset = 0;   // byte offset of its first character in the file
    uint64_t size = 0;    // its length in bytes (counted to its end even when oversize)
    int depth = 0;        // deepest nesting of objects and arrays inside it
    bool truncated = false;  // the file ends inside it (text is what there was)
    bool oversize = false;   // longer than max_element_bytes: scanned to its end, not kept
  };
  // InvalidArgument when the file does not start with '['. Elements longer than
  // max_element_bytes are skipped over (their text is not kept) and marked oversize.
  Status Open(const std::string& path, uint64_t max_element_bytes = ReadLimits().max_record_bytes);
  // false after the closing ']'. A file that ends inside an element yields that element's
  // partial text with truncated = true, then false.
  StatusOr<bool> Next(Element* element);
  uint64_t bytes_read() const { return pos_; }

 private:
  int Get();  // next byte or -1
  std::string path_;
  std::ifstream in_;
  std::vector<char> buf_;
  size_t buf_pos_ = 0, buf_len_ = 0;
  uint64_t pos_ = 0;
  uint64_t max_element_bytes_ = 0;
  bool done_ = false;
};

}  // namespace vlorch::sharding
