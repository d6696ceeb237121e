// SampleRecord: the small value stored per sample (everything except the image bytes), and
// its binary encoding. Layout in docs/shard-store.md; the encoding ends with a CRC32C of
// everything before it, so a flipped byte is detected on read.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"

namespace vlorch::sharding {

enum class SampleKind : uint8_t {
  kCaption = 1,       // image + caption (LAION, BLIP-2 style)
  kConversation = 2,  // image + conversation turns (LLaVA)
  kText = 3,          // text only (JSONL corpora)
};
const char* SampleKindName(SampleKind kind);

struct Turn {
  std::string from;   // "human" / "gpt"
  std::string value;
};

struct SampleRecord {
  SampleKind kind = SampleKind::kCaption;
  std::string id;                  // the source's id or key ("GCC_train_002582585", "000010042")
  std::string text;                // caption (kCaption) or text (kText); empty for conversations
  std::vector<Turn> conversation;  // kConversation only
  // Where the sample came from, so any training sample can be traced back.
  std::string source_format;       // "llava", "img2dataset", "jsonl"
  std::string source_file;         // as given on the command line
  uint64_t source_ordinal = 0;     // record number inside source_file, from 0
  std::string metadata_json;       // the source's extra fields, verbatim JSON ("" if none)
  // The image, stored separately; these describe it. image_bytes == 0: no image.
  uint64_t image_bytes = 0;
  uint32_t image_crc32c = 0;
  uint32_t width = 0, height = 0;
};

std::string EncodeRecord(const SampleRecord& r);
// Corruption naming `where` (e.g. "sample 123") on a bad checksum, version or layout.
StatusOr<SampleRecord> DecodeRecord(std::string_view bytes, std::string_view where);

// Big-endian fixed-width keys: lexicographic order == numeric order, so a shard of
// consecutive sample indices is one contiguous key range.
std::string IndexKey(uint64_t index);
uint64_t DecodeIndexKey(std::string_view key);

// Shared varint helpers (LEB128), used by the record and quarantine codecs.
void PutVarint(std::string* out, uint64_t v);
void PutString(std::string* out, std::string_view s);
bool GetVarint(std::string_view* in, uint64_t* v);
bool GetString(std::string_view* in, std::string* s);

// True when `s` is valid UTF-8 (no overlongs, no surrogates, <= U+10FFFF).
bool IsValidUtf8(std::string_view s);

}  // namespace vlorch::sharding
