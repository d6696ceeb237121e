#include "sharding/dataset_gen.h"

#include <archive.h>
#include <archive_entry.h>
#include <sys/stat.h>
#include <turbojpeg.h>
#include <unistd.h>
#include <zip.h>

#include <fstream>
#include <random>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

namespace vlorch::sharding {
namespace {

const char* const kWords[] = {"a", "photo", "of", "the", "red", "small", "dog", "river", "city", "at", "night",
                              "old", "bridge", "with", "people", "walking", "green", "field", "under", "sky"};

std::string Caption(std::mt19937_64& rng) {
  int n = 4 + static_cast<int>(rng() % 10);
  std::string s;
  for (int i = 0; i < n; ++i) s += (i ? " " : "") + std::string(kWords[rng() % 20]);
  return s;
}

// A scene of the grounded captioning task: one shape of one colour on a plain background.
struct Scene {
  int fg, bg, shape, pos;
};
const char* const kColors[] = {"red", "green", "blue", "yellow", "white", "black"};
const unsigned char kRgb[][3] = {{220, 30, 30}, {30, 180, 40}, {30, 60, 220}, {235, 220, 40}, {245, 245, 245}, {15, 15, 15}};
const char* const kShapes[] = {"square", "circle", "bar", "cross"};
const char* const kPositions[] = {"top left", "top right", "bottom left", "bottom right", "center"};

Scene RandomScene(std::mt19937_64& rng) {
  Scene s;
  s.fg = static_cast<int>(rng() % 6);
  s.bg = static_cast<int>((s.fg + 1 + rng() % 5) % 6);
  s.shape = static_cast<int>(rng() % 4);
  s.pos = static_cast<int>(rng() % 5);
  return s;
}

std::string SceneCaption(const Scene& s) {
  return fmt::format("a {} {} on a {} background at the {}", kColors[s.fg], kShapes[s.shape], kColors[s.bg],
                     kPositions[s.pos]);
}

std::string EncodeRgbJpeg(const std::vector<unsigned char>& rgb, int width, int height,
                          const TestJpegFormat& format = {}) {
  int sampling = TJSAMP_420;
  switch (format.sampling) {
    case JpegSampling::k444: sampling = TJSAMP_444; break;
    case JpegSampling::k422: sampling = TJSAMP_422; break;
    case JpegSampling::k420: sampling = TJSAMP_420; break;
    case JpegSampling::k440: sampling = TJSAMP_440; break;
    case JpegSampling::kGray: sampling = TJSAMP_GRAY; break;
  }
  tjhandle h = tjInitCompress();
  unsigned char* out = nullptr;
  unsigned long size = 0;
  tjCompress2(h, rgb.data(), width, 0, height, TJPF_RGB, &out, &size, sampling, 85,
              format.progressive ? TJFLAG_PROGRESSIVE : 0);
  std::string jpeg(reinterpret_cast<char*>(out), size);
  tjFree(out);
  tjDestroy(h);
  return jpeg;
}

std::string RenderScene(const Scene& s, int width, int height) {
  std::vector<unsigned char> rgb(static_cast<size_t>(width) * height * 3);
  // The shape fills a box of half the shorter side, in one quadrant or the centre.
  const int side = std::min(width, height) / 2;
  const int cx = s.pos == 4 ? width / 2 : (s.pos % 2 == 0 ? width / 4 : 3 * width / 4);
  const int cy = s.pos == 4 ? height / 2 : (s.pos < 2 ? height / 4 : 3 * height / 4);
  for (int y = 0; y < height; ++y)
    for (int x = 0; x < width; ++x) {
      const int dx = x - cx, dy = y - cy, r = side / 2;
      bool in = false;
      switch (s.shape) {
        case 0: in = std::abs(dx) <= r && std::abs(dy) <= r; break;
        case 1: in = dx * dx + dy * dy <= r * r; break;
        case 2: in = std::abs(dx) <= r && std::abs(dy) <= r / 3; break;
        case 3: in = (std::abs(dx) <= r && std::abs(dy) <= r / 4) || (std::abs(dy) <= r && std::abs(dx) <= r / 4); break;
      }
      const unsigned char* c = kRgb[in ? s.fg : s.bg];
      unsigned char* p = &rgb[(static_cast<size_t>(y) * width + x) * 3];
      p[0] = c[0], p[1] = c[1], p[2] = c[2];
    }
  return EncodeRgbJpeg(rgb, width, height);
}

// mkdir -p
Status MakeDir(const std::string& dir) {
  for (size_t pos = 1; pos <= dir.size(); ++pos) {
    if (pos != dir.size() && dir[pos] != '/') continue;
    std::string prefix = dir.substr(0, pos);
    if (::mkdir(prefix.c_str(), 0755) != 0 && errno != EEXIST) return ErrnoError("cannot create directory", prefix, errno);
  }
  return Status::OK();
}

struct TarWriter {
  archive* a = archive_write_new();
  Status Open(const std::string& path) {
    archive_write_set_format_pax_restricted(a);
    if (archive_write_open_filename(a, path.c_str()) != ARCHIVE_OK)
      return IOError(fmt::format("cannot write '{}': {}", path, archive_error_string(a)));
    return Status::OK();
  }
  void Add(const std::string& name, const std::string& data) {
    archive_entry* e = archive_entry_new();
    archive_entry_set_pathname(e, name.c_str());
    archive_entry_set_size(e, static_cast<la_int64_t>(data.size()));
    archive_entry_set_filetype(e, AE_IFREG);
    archive_entry_set_perm(e, 0644);
    archive_write_header(a, e);
    if (!data.empty()) archive_write_data(a, data.data(), data.size());
    archive_entry_free(e);
  }
  ~TarWriter() {
    archive_write_close(a);
    archive_write_free(a);
  }
};

// Cuts `path` in the middle of the data of its last member.
Status TruncateInsideLastMember(const std::string& path) {
  archive* a = archive_read_new();
  archive_read_support_format_tar(a);
  if (archive_read_open_filename(a, path.c_str(), 10240) != ARCHIVE_OK) {
    archive_read_free(a);
    return IOError("cannot reopen " + path);
  }
  archive_entry* e;
  int64_t last_header = -1, last_size = 0;
  while (archive_read_next_header(a, &e) == ARCHIVE_OK) {
    last_header = archive_read_header_position(a);
    last_size = archive_entry_size(e);
    archive_read_data_skip(a);
  }
  archive_read_free(a);
  if (last_header < 0 || last_size < 2) return InternalError("no member to truncate in " + path);
  // pax_restricted writes plain ustar headers (512 bytes) for short ASCII names.
  if (::truncate(path.c_str(), last_header + 512 + last_size / 2) != 0)
    return ErrnoError("cannot truncate", path, errno);
  return Status::OK();
}

}  // namespace

std::string EncodeTestJpeg(int width, int height, uint64_t seed, const TestJpegFormat& format) {
  std::vector<unsigned char> rgb(static_cast<size_t>(width) * height * 3);
  std::mt19937_64 rng(seed);
  const int fx = 1 + static_cast<int>(rng() % 7), fy = 1 + static_cast<int>(rng() % 7);
  const unsigned char base = static_cast<unsigned char>(rng());
  for (int y = 0; y < height; ++y)
    for (int x = 0; x < width; ++x) {
      unsigned char* p = &rgb[(static_cast<size_t>(y) * width + x) * 3];
      p[0] = static_cast<unsigned char>(base + x * fx);
      p[1] = static_cast<unsigned char>(y * fy + (x ^ y));
      p[2] = static_cast<unsigned char>((x * y) >> 4);
    }
  return EncodeRgbJpeg(rgb, width, height, format);
}

StatusOr<GeneratedDataset> MakeImg2Dataset(const Img2DatasetGenOptions& o) {
  if (o.shards < 1 || o.per_shard < (o.bad_cases ? 10 : 1) || o.min_px < 8 || o.max_px < o.min_px)
    return InvalidArgumentError("make-dataset: need shards >= 1, per_shard >= 10 with bad cases, 8 <= min_px <= max_px");
  RETURN_IF_ERROR(MakeDir(o.dir));
  std::mt19937_64 rng(o.seed);
  GeneratedDataset g;
  std::string first_key;
  for (int shard = 0; shard < o.shards; ++shard) {
    const std::string tar = fmt::format("{}/{:05d}.tar", o.dir, shard);
    {
      TarWriter w;
      RETURN_IF_ERROR(w.Open(tar));
      const bool truncate = o.bad_cases && shard == o.shards - 1;
      for (int i = 0; i < o.per_shard; ++i) {
        std::string key = fmt::format("{:05d}{:04d}", shard, i);
        if (shard == 0 && i == 0) first_key = key;
        int wpx = o.min_px + static_cast<int>(rng() % (o.max_px - o.min_px + 1));
        int hpx = o.min_px + static_cast<int>(rng() % (o.max_px - o.min_px + 1));
        std::string jpg, caption;
        if (o.grounded) {
          const Scene scene = RandomScene(rng);
          jpg = RenderScene(scene, wpx, hpx);
          caption = SceneCaption(scene);
        } else {
          jpg = EncodeTestJpeg(wpx, hpx, rng());
          caption = Caption(rng);
        }
        nlohmann::json meta = {{"url", "http://example.com/" + key + ".jpg"}, {"caption", caption}, {"key", key},
                               {"status", "success"}, {"error_message", nullptr}, {"width", wpx},
                               {"height", hpx}, {"original_width", wpx * 2}, {"original_height", hpx * 2},
                               {"exif", "{}"}, {"sha256", fmt::format("{:064x}", rng())},
                               {"similarity", 0.31}, {"NSFW", "UNLIKELY"}};
        std::string json = meta.dump();
        bool has_jpg = true;
        std::string reason;
        if (o.bad_cases) {
          switch (i) {
            case 1: jpg = "this is not a jpeg at all"; reason = "undecodable_image"; break;
            case 2: jpg = jpg.substr(0, jpg.size() / 2); reason = "undecodable_image"; break;  // truncated JPEG
            case 3: jpg.clear(); reason = "zero_byte_image"; break;
            case 4: has_jpg = false; reason = "missing_image"; break;
            case 5: caption = "  \t "; reason = "empty_caption"; break;
            case 6: caption = "caf\xe9 latin-1"; reason = "non_utf8_text"; break;
            case 7: json = "{\"url\": \"http://x\", "; reason = "malformed_json"; break;
            case 8:
              if (shard > 0) {
                key = first_key;  // the same key as an earlier tar's record
                reason = "duplicate_id";
              }
              break;
            default: break;
          }
          if (truncate && i == o.per_shard - 1) {
            reason = "truncated_tar_member";
            caption = Caption(rng);
          }
        }
        // webdataset order: one key's members together; the image last so truncation hits it.
        w.Add(key + ".txt", caption);
        w.Add(key + ".json", json);
        if (has_jpg) w.Add(key + ".jpg", jpg);
        ++g.records;
        if (reason.empty()) ++g.good;
        else ++g.bad[reason];
      }
    }
    if (o.bad_cases && shard == o.shards - 1) RETURN_IF_ERROR(TruncateInsideLastMember(tar));
    nlohmann::json stats = {{"count", o.per_shard + o.failed_downloads}, {"successes", o.per_shard},
                            {"failed_to_download", o.failed_downloads}, {"failed_to_resize", 0},
                            {"duration", 1.5}, {"status_dict", {{"success", o.per_shard}}}};
    std::ofstream(fmt::format("{}/{:05d}_stats.json", o.dir, shard)) << stats.dump(2);
    g.reported["count"] += o.per_shard + o.failed_downloads;
    g.reported["successes"] += o.per_shard;
    g.reported["failed_to_download"] += o.failed_downloads;
    g.reported["failed_to_resize"] += 0;
    g.files.push_back(tar);
  }
  return g;
}

StatusOr<GeneratedDataset> MakeLlava(const LlavaGenOptions& o) {
  if (o.records < (o.bad_cases ? 12 : 1)) return InvalidArgumentError("make-dataset: need records >= 12 with bad cases");
  RETURN_IF_ERROR(MakeDir(o.dir));
  if (!o.zip) RETURN_IF_ERROR(MakeDir(o.dir + "/images"));
  zip_t* z = nullptr;
  if (o.zip) {
    int err = 0;
    z = zip_open((o.dir + "/images.zip").c_str(), ZIP_CREATE | ZIP_TRUNCATE, &err);
    if (z == nullptr) return IOError("cannot create " + o.dir + "/images.zip");
  }
  std::mt19937_64 rng(o.seed);
  GeneratedDataset g;
  std::ofstream chat(o.dir + "/chat.json", std::ios::binary);
  nlohmann::json meta = nlohmann::json::array();
  chat << "[\n";
  std::vector<std::string> zip_buffers;  // libzip reads them at zip_close
  zip_buffers.reserve(o.records);
  const char* prompts[] = {"Provide a brief description of the given image.", "Describe the image concisely.",
                           "Write a terse but informative summary of the picture."};
  for (int i = 0; i < o.records; ++i) {
    std::string id = fmt::format("GCC_train_{:09d}", 1000 + i);
    std::string image = id + ".jpg";
    int w = o.min_px + static_cast<int>(rng() % (o.max_px - o.min_px + 1));
    int h = o.min_px + static_cast<int>(rng() % (o.max_px - o.min_px + 1));
    std::string jpg = EncodeTestJpeg(w, h, rng());
    std::string caption = Caption(rng);
    // The <image> tag comes before or after the instruction, as in CC595K.
    std::string prompt = prompts[rng() % 3];
    std::string human = (i % 2) ? "<image>\n" + prompt : prompt + "\n<image>";
    nlohmann::json conv = nlohmann::json::array({{{"from", "human"}, {"value", human}}, {{"from", "gpt"}, {"value", caption}}});
    bool write_image = true;
    std::string reason, raw;
    if (o.bad_cases) {
      switch (i) {
        case 1: jpg = "GIF89a not a jpeg"; reason = "undecodable_image"; break;
        case 2: jpg = jpg.substr(0, jpg.size() / 2); reason = "undecodable_image"; break;
        case 3: jpg.clear(); reason = "zero_byte_image"; break;
        case 4: write_image = false; reason = "missing_image"; break;
        case 5: conv[1]["value"] = " "; reason = "empty_caption"; break;
        case 6: conv.erase(1); reason = "missing_gpt_turn"; break;
        case 7: conv[0]["value"] = prompt; reason = "missing_image_tag"; break;
        case 8: id = fmt::format("GCC_train_{:09d}", 1000); reason = "duplicate_id"; break;
        case 9: raw = fmt::format("{{\"id\": \"{}\", \"image\": , \"conversations\": []}}", id); reason = "malformed_json"; break;
        case 10:
          raw = nlohmann::json({{"id", id}, {"image", image}, {"conversations", conv}}).dump();
          raw.replace(raw.find(caption), caption.size(), "caf\xe9");
          reason = "non_utf8_text";
          break;
        default: break;
      }
    }
    if (raw.empty()) raw = nlohmann::json({{"id", id}, {"image", image}, {"conversations", conv}}).dump();
    chat << (i ? ",\n" : "") << raw;
    meta.push_back({{"id", id}, {"image", image}, {"caption", caption}, {"blip_caption", Caption(rng)},
                    {"url", "http://example.com/" + image}});
    if (write_image) {
      if (z != nullptr) {
        zip_buffers.push_back(jpg);
        zip_source_t* src = zip_source_buffer(z, zip_buffers.back().data(), zip_buffers.back().size(), 0);
        zip_file_add(z, image.c_str(), src, ZIP_FL_OVERWRITE);
      } else {
        std::ofstream(o.dir + "/images/" + image, std::ios::binary) << jpg;
      }
    }
    ++g.records;
    if (reason.empty()) ++g.good;
    else ++g.bad[reason];
  }
  chat << "\n]\n";
  chat.close();
  std::ofstream(o.dir + "/metadata.json") << meta.dump();
  if (z != nullptr && zip_close(z) != 0) return IOError("cannot write " + o.dir + "/images.zip");
  g.files.push_back(o.dir);
  return g;
}

StatusOr<GeneratedDataset> MakeJsonl(const JsonlGenOptions& o) {
  if (o.lines < (o.bad_cases ? 6 : 1)) return InvalidArgumentError("make-dataset: need lines >= 6 with bad cases");
  std::ofstream out(o.path, std::ios::binary);
  if (!out) return IOError(fmt::format("cannot write '{}'", o.path));
  std::mt19937_64 rng(o.seed);
  GeneratedDataset g;
  for (int i = 0; i < o.lines; ++i) {
    std::string line = nlohmann::json({{"text", o.grounded ? SceneCaption(RandomScene(rng)) + ". " + SceneCaption(RandomScene(rng)) + "."
                                                           : Caption(rng) + ". " + Caption(rng) + "."}}).dump();
    std::string reason;
    if (o.bad_cases) {
      switch (i) {
        case 1: line = "{\"text\": \"unterminated"; reason = "malformed_json"; break;
        case 2: line = "{\"text\": \"   \"}"; reason = "empty_text"; break;
        case 3: line = "{\"text\": \"caf\xe9\"}"; reason = "non_utf8_text"; break;
        case 4: line = "{\"body\": \"no text field\"}"; reason = "malformed_json"; break;
        case 5: out << "\n"; break;  // a blank line before this record: not a record
        default: break;
      }
    }
    out << line << "\n";
    ++g.records;
    if (reason.empty()) ++g.good;
    else ++g.bad[reason];
  }
  g.files.push_back(o.path);
  return g;
}

}  // namespace vlorch::sharding
