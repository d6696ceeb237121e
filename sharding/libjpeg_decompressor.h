// One libjpeg decompressor per thread, with errors and warnings turned into a longjmp back
// to the caller's setjmp (TurboJPEG's TJFLAG_STOPONWARNING: corrupt or truncated data is an
// error, never a grey patch). Used by the shard store's validation and by dataflow's decoder.
//
// Callers: `if (setjmp(d.err().jump)) return false;` before their libjpeg calls, and
// TakeError() when one failed; nothing with a destructor may be created between the setjmp and the last
// libjpeg call (a longjmp skips destructors). Reset() after any failure, as with the
// TurboJPEG handle this replaces: with libjpeg-turbo 2.1.5, a TurboJPEG handle reused after a
// failed header parse misread the next, valid image's header (found by
// tests/sharding/ingest_test.cc).
#pragma once

#include <csetjmp>
#include <cstdio>  // jpeglib.h needs FILE
#include <string>

#include <jpeglib.h>

namespace vlorch::sharding {

struct JpegErrorMgr {
  jpeg_error_mgr pub;
  jmp_buf jump;
  char message[JMSG_LENGTH_MAX];
};

class LibjpegDecompressor {
 public:
  // This thread's decompressor, reused across images (jpeg_finish_decompress or
  // jpeg_abort_decompress returns it to the start state).
  static LibjpegDecompressor& ForThisThread() {
    thread_local LibjpegDecompressor d;
    return d;
  }
  jpeg_decompress_struct* get() { return &cinfo_; }
  JpegErrorMgr& err() { return err_; }
  // Points the decompressor at `data` (which must outlive the decode) and reads the header.
  // false on failure (TakeError says why).
  bool ReadHeader(const void* data, size_t size) {
    if (setjmp(err_.jump)) return false;
    jpeg_mem_src(&cinfo_, static_cast<const unsigned char*>(data), static_cast<unsigned long>(size));
    jpeg_read_header(&cinfo_, TRUE);
    return true;
  }
  // After a failed call: libjpeg's message, with the decompressor rebuilt for the next image.
  std::string TakeError() {
    std::string message = err_.message;
    Reset();
    return message;
  }
  void Reset() {
    jpeg_destroy_decompress(&cinfo_);
    Create();
  }
  ~LibjpegDecompressor() { jpeg_destroy_decompress(&cinfo_); }
  LibjpegDecompressor(const LibjpegDecompressor&) = delete;
  LibjpegDecompressor& operator=(const LibjpegDecompressor&) = delete;

 private:
  LibjpegDecompressor() { Create(); }
  [[noreturn]] static void Fail(j_common_ptr c) {
    auto* e = reinterpret_cast<JpegErrorMgr*>(c->err);
    (*c->err->format_message)(c, e->message);
    longjmp(e->jump, 1);
  }
  static void Message(j_common_ptr c, int level) {
    if (level < 0) Fail(c);  // a warning: the data is corrupt
  }
  static void Quiet(j_common_ptr) {}
  void Create() {
    cinfo_.err = jpeg_std_error(&err_.pub);
    err_.pub.error_exit = Fail;
    err_.pub.emit_message = Message;
    err_.pub.output_message = Quiet;
    jpeg_create_decompress(&cinfo_);
  }
  jpeg_decompress_struct cinfo_{};
  JpegErrorMgr err_{};
};

}  // namespace vlorch::sharding
