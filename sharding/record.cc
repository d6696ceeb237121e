#include "sharding/record.h"

#include <cstring>

#include <fmt/format.h>

#include "common/hash.h"

namespace vlorch::sharding {
namespace {
constexpr uint8_t kRecordVersion = 1;

void PutFixed32(std::string* out, uint32_t v) {
  for (int i = 0; i < 4; ++i) out->push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}
bool GetFixed32(std::string_view* in, uint32_t* v) {
  if (in->size() < 4) return false;
  *v = 0;
  for (int i = 0; i < 4; ++i) *v |= static_cast<uint32_t>(static_cast<uint8_t>((*in)[i])) << (8 * i);
  in->remove_prefix(4);
  return true;
}
}  // namespace

const char* SampleKindName(SampleKind kind) {
  switch (kind) {
    case SampleKind::kCaption: return "caption";
    case SampleKind::kConversation: return "conversation";
    case SampleKind::kText: return "text";
  }
  return "?";
}

void PutVarint(std::string* out, uint64_t v) {
  while (v >= 0x80) {
    out->push_back(static_cast<char>((v & 0x7f) | 0x80));
    v >>= 7;
  }
  out->push_back(static_cast<char>(v));
}

void PutString(std::string* out, std::string_view s) {
  PutVarint(out, s.size());
  out->append(s.data(), s.size());
}

bool GetVarint(std::string_view* in, uint64_t* v) {
  *v = 0;
  for (int shift = 0; shift < 64 && !in->empty(); shift += 7) {
    uint8_t b = static_cast<uint8_t>(in->front());
    in->remove_prefix(1);
    *v |= static_cast<uint64_t>(b & 0x7f) << shift;
    if (!(b & 0x80)) return true;
  }
  return false;
}

bool GetString(std::string_view* in, std::string* s) {
  uint64_t n = 0;
  if (!GetVarint(in, &n) || n > in->size()) return false;
  s->assign(in->data(), n);
  in->remove_prefix(n);
  return true;
}

std::string EncodeRecord(const SampleRecord& r) {
  std::string out;
  out.push_back(static_cast<char>(kRecordVersion));
  out.push_back(static_cast<char>(r.kind));
  PutString(&out, r.id);
  PutString(&out, r.text);
  PutVarint(&out, r.conversation.size());
  for (const Turn& t : r.conversation) {
    PutString(&out, t.from);
    PutString(&out, t.value);
  }
  PutString(&out, r.source_format);
  PutString(&out, r.source_file);
  PutVarint(&out, r.source_ordinal);
  PutString(&out, r.metadata_json);
  PutVarint(&out, r.image_bytes);
  PutFixed32(&out, r.image_crc32c);
  PutVarint(&out, r.width);
  PutVarint(&out, r.height);
  PutFixed32(&out, Crc32c(out));
  return out;
}

StatusOr<SampleRecord> DecodeRecord(std::string_view bytes, std::string_view where) {
  auto bad = [&](const char* what) {
    return CorruptionError(fmt::format("{}: record {} (store damaged; run `vlorch shards verify`)", where, what));
  };
  if (bytes.size() < 6) return bad("is too short");
  std::string_view body = bytes.substr(0, bytes.size() - 4), tail = bytes.substr(bytes.size() - 4);
  uint32_t stored = 0;
  GetFixed32(&tail, &stored);
  if (stored != Crc32c(body)) return bad("fails its checksum");
  if (static_cast<uint8_t>(body[0]) != kRecordVersion) return bad("has an unknown version");
  SampleRecord r;
  uint8_t kind = static_cast<uint8_t>(body[1]);
  if (kind < 1 || kind > 3) return bad("has an unknown kind");
  r.kind = static_cast<SampleKind>(kind);
  body.remove_prefix(2);
  uint64_t turns = 0, w = 0, h = 0;
  bool ok = GetString(&body, &r.id) && GetString(&body, &r.text) && GetVarint(&body, &turns);
  for (uint64_t i = 0; ok && i < turns; ++i) {
    Turn t;
    ok = GetString(&body, &t.from) && GetString(&body, &t.value);
    r.conversation.push_back(std::move(t));
  }
  ok = ok && GetString(&body, &r.source_format) && GetString(&body, &r.source_file) &&
       GetVarint(&body, &r.source_ordinal) && GetString(&body, &r.metadata_json) &&
       GetVarint(&body, &r.image_bytes) && GetFixed32(&body, &r.image_crc32c) && GetVarint(&body, &w) &&
       GetVarint(&body, &h) && body.empty();
  if (!ok) return bad("is malformed");
  r.width = static_cast<uint32_t>(w);
  r.height = static_cast<uint32_t>(h);
  return r;
}

std::string IndexKey(uint64_t index) {
  std::string k(8, '\0');
  for (int i = 0; i < 8; ++i) k[i] = static_cast<char>((index >> (8 * (7 - i))) & 0xff);
  return k;
}

uint64_t DecodeIndexKey(std::string_view key) {
  uint64_t v = 0;
  for (size_t i = 0; i < 8 && i < key.size(); ++i) v = (v << 8) | static_cast<uint8_t>(key[i]);
  return v;
}

bool IsValidUtf8(std::string_view s) {
  size_t i = 0;
  const size_t n = s.size();
  while (i < n) {
    uint8_t c = static_cast<uint8_t>(s[i]);
    if (c < 0x80) {
      ++i;
      continue;
    }
    int len;
    uint32_t cp;
    if ((c & 0xe0) == 0xc0) len = 2, cp = c & 0x1f;
    else if ((c & 0xf0) == 0xe0) len = 3, cp = c & 0x0f;
    else if ((c & 0xf8) == 0xf0) len = 4, cp = c & 0x07;
    else return false;
    if (i + len > n) return false;
    for (int k = 1; k < len; ++k) {
      uint8_t cc = static_cast<uint8_t>(s[i + k]);
      if ((cc & 0xc0) != 0x80) return false;
      cp = (cp << 6) | (cc & 0x3f);
    }
    if ((len == 2 && cp < 0x80) || (len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000)) return false;
    if (cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return false;
    i += len;
  }
  return true;
}

}  // namespace vlorch::sharding
