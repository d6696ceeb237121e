// Hostile inputs for the ingest's limits, built by hand so each lies in exactly one way:
// ustar archives whose headers declare any size, JPEGs whose SOF header declares any size,
// progressive JPEGs with any number of (valid) scans, and the peak-memory probe that shows
// nothing was allocated for what a header declared.
#pragma once

#include <cstdio>  // jpeglib.h needs FILE
#include <cstdint>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <jpeglib.h>

namespace vlorch::sharding::testing {

// A ustar member: 512-byte header, then `data` padded to 512. The header's size field says
// `declared` (octal, or GNU base-256 from 8 GiB up, which libarchive reads), whatever `data`
// holds.
inline std::string TarMember(const std::string& name, const std::string& data, uint64_t declared) {
  std::string h(512, '\0');
  std::memcpy(&h[0], name.data(), std::min<size_t>(name.size(), 99));
  std::memcpy(&h[100], "0000644", 7);
  std::memcpy(&h[108], "0001750", 7);
  std::memcpy(&h[116], "0001750", 7);
  if (declared < (uint64_t{1} << 33)) {
    const std::string octal = fmt::format("{:011o}", declared);
    std::memcpy(&h[124], octal.data(), 11);
  } else {
    h[124] = static_cast<char>(0x80);
    for (int i = 0; i < 8; ++i) h[135 - i] = static_cast<char>((declared >> (8 * i)) & 0xff);
  }
  std::memcpy(&h[136], "14700000000", 11);  // mtime
  h[156] = '0';                              // regular file
  std::memcpy(&h[257], "ustar", 6);
  std::memcpy(&h[263], "00", 2);
  std::memset(&h[148], ' ', 8);
  unsigned sum = 0;
  for (unsigned char c : h) sum += c;
  const std::string chk = fmt::format("{:06o}", sum);
  std::memcpy(&h[148], chk.data(), 6);
  h[154] = '\0';
  h[155] = ' ';
  std::string out = h + data;
  out.resize((out.size() + 511) / 512 * 512, '\0');
  return out;
}
inline std::string TarMember(const std::string& name, const std::string& data) {
  return TarMember(name, data, data.size());
}
inline std::string TarEnd() { return std::string(1024, '\0'); }

inline void WriteFile(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary | std::ios::trunc) << bytes;
}

// `jpeg` with its frame header (SOF0..SOF2) declaring width x height.
inline std::string WithDeclaredSize(std::string jpeg, uint16_t width, uint16_t height) {
  for (size_t i = 2; i + 9 < jpeg.size();) {
    if (static_cast<unsigned char>(jpeg[i]) != 0xff) break;
    const auto marker = static_cast<unsigned char>(jpeg[i + 1]);
    const size_t len = (static_cast<unsigned char>(jpeg[i + 2]) << 8) | static_cast<unsigned char>(jpeg[i + 3]);
    if (marker >= 0xc0 && marker <= 0xc2) {
      jpeg[i + 5] = static_cast<char>(height >> 8);
      jpeg[i + 6] = static_cast<char>(height & 0xff);
      jpeg[i + 7] = static_cast<char>(width >> 8);
      jpeg[i + 8] = static_cast<char>(width & 0xff);
      return jpeg;
    }
    i += 2 + len;
  }
  return "";  // no frame header found: the caller's test fails on the empty image
}

// A valid progressive YCbCr JPEG of w x h with 1 + 3 x 63 = 190 scans: the DC of all
// components, then each AC coefficient of each component in a scan of its own.
inline std::string ProgressiveJpegWithManyScans(int width, int height, int* scans) {
  jpeg_compress_struct c{};
  jpeg_error_mgr err{};
  c.err = jpeg_std_error(&err);
  jpeg_create_compress(&c);
  unsigned char* buf = nullptr;
  unsigned long size = 0;
  jpeg_mem_dest(&c, &buf, &size);
  c.image_width = static_cast<JDIMENSION>(width);
  c.image_height = static_cast<JDIMENSION>(height);
  c.input_components = 3;
  c.in_color_space = JCS_RGB;
  jpeg_set_defaults(&c);
  std::vector<jpeg_scan_info> script;
  jpeg_scan_info dc{};
  dc.comps_in_scan = 3;
  for (int k = 0; k < 3; ++k) dc.component_index[k] = k;
  script.push_back(dc);  // Ss = Se = Ah = Al = 0
  for (int comp = 0; comp < 3; ++comp)
    for (int k = 1; k < 64; ++k) {
      jpeg_scan_info ac{};
      ac.comps_in_scan = 1;
      ac.component_index[0] = comp;
      ac.Ss = ac.Se = k;
      script.push_back(ac);
    }
  c.scan_info = script.data();
  c.num_scans = static_cast<int>(script.size());
  *scans = c.num_scans;
  jpeg_start_compress(&c, TRUE);
  std::vector<unsigned char> row(static_cast<size_t>(width) * 3);
  while (c.next_scanline < c.image_height) {
    for (int x = 0; x < width; ++x) {
      row[x * 3] = static_cast<unsigned char>(x * 7 + c.next_scanline);
      row[x * 3 + 1] = static_cast<unsigned char>(x ^ c.next_scanline);
      row[x * 3 + 2] = static_cast<unsigned char>(c.next_scanline * 3);
    }
    JSAMPROW r = row.data();
    jpeg_write_scanlines(&c, &r, 1);
  }
  jpeg_finish_compress(&c);
  std::string out(reinterpret_cast<char*>(buf), size);
  jpeg_destroy_compress(&c);
  std::free(buf);
  return out;
}

// Peak resident memory (VmHWM) since the last ResetPeakMemory, in bytes.
inline void ResetPeakMemory() { std::ofstream("/proc/self/clear_refs") << "5"; }
inline uint64_t PeakMemory() {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind("VmHWM:", 0) == 0) return std::stoull(line.substr(6)) * 1024;
  return 0;
}
inline uint64_t CurrentMemory() {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind("VmRSS:", 0) == 0) return std::stoull(line.substr(6)) * 1024;
  return 0;
}

}  // namespace vlorch::sharding::testing
