// One TurboJPEG decompressor per thread, replaced after any failed call.
//
// Why replaced: with libjpeg-turbo 2.1.5, a handle reused after a failed header parse
// misread the next, valid image's header (a zero dimension), so results depended on which
// images a thread had seen before (found by tests/sharding/ingest_test.cc).
#pragma once

#include <turbojpeg.h>

namespace vlorch::sharding {

class TurboJpegDecompressor {
 public:
  // This thread's decompressor.
  static TurboJpegDecompressor& ForThisThread() {
    thread_local TurboJpegDecompressor d;
    return d;
  }
  tjhandle get() const { return h_; }
  // Call after any failed TurboJPEG call on this handle.
  void Reset() {
    if (h_ != nullptr) tjDestroy(h_);
    h_ = tjInitDecompress();
  }
  ~TurboJpegDecompressor() {
    if (h_ != nullptr) tjDestroy(h_);
  }

 private:
  TurboJpegDecompressor() : h_(tjInitDecompress()) {}
  tjhandle h_;
};

}  // namespace vlorch::sharding
