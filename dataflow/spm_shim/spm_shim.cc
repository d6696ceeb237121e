// A C ABI over libsentencepiece, loaded by dataflow/sentencepiece_tokenizer.cc with
// dlopen(RTLD_LOCAL | RTLD_DEEPBIND) and never linked into a binary.
//
// Why: Debian's libsentencepiece carries its own copy of protobuf-lite. In a process that
// also has LibTorch's libprotobuf.so.32, libprotobuf's static initialisers bind to
// sentencepiece's copy of protobuf internals and crash before main(). Loaded locally and
// deep-bound, each protobuf copy only ever sees itself.
#include <sentencepiece_processor.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>

extern "C" {

void* vlorch_spm_load(const char* path, char* err, int err_len) {
  auto* p = new sentencepiece::SentencePieceProcessor();
  auto s = p->Load(path);
  if (!s.ok()) {
    std::snprintf(err, err_len, "%s", s.ToString().c_str());
    delete p;
    return nullptr;
  }
  return p;
}

void vlorch_spm_free(void* h) { delete static_cast<sentencepiece::SentencePieceProcessor*>(h); }

// Returns the number of ids, written to a malloc'd array (*ids; free with std::free).
int vlorch_spm_encode(void* h, const char* text, size_t len, int** ids) {
  std::vector<int> v;
  static_cast<sentencepiece::SentencePieceProcessor*>(h)->Encode(std::string(text, len), &v).IgnoreError();
  *ids = static_cast<int*>(std::malloc(sizeof(int) * (v.empty() ? 1 : v.size())));
  if (!v.empty()) std::memcpy(*ids, v.data(), sizeof(int) * v.size());
  return static_cast<int>(v.size());
}

// Returns a malloc'd, NUL-terminated string (free with std::free); *len gets its length.
char* vlorch_spm_decode(void* h, const int* ids, int n, size_t* len) {
  std::string out;
  static_cast<sentencepiece::SentencePieceProcessor*>(h)->Decode(std::vector<int>(ids, ids + n), &out).IgnoreError();
  char* s = static_cast<char*>(std::malloc(out.size() + 1));
  std::memcpy(s, out.data(), out.size());
  s[out.size()] = '\0';
  *len = out.size();
  return s;
}

// 0: vocab size, 1: bos, 2: eos, 3: pad.
int vlorch_spm_info(void* h, int what) {
  auto* p = static_cast<sentencepiece::SentencePieceProcessor*>(h);
  switch (what) {
    case 0: return p->GetPieceSize();
    case 1: return p->bos_id();
    case 2: return p->eos_id();
    default: return p->pad_id();
  }
}

}  // extern "C"
