// JPEG -> CLIP-style image tensor data, written into caller-provided memory (so a collator
// decodes straight into its batch tensor; no LibTorch in this header).
//
// Steps, matching torchvision's CLIP transform on a PIL image (Resize(size, BICUBIC),
// CenterCrop(size), ToTensor, Normalize(CLIP mean, std)) bit for bit when dct_scaling is off:
//  1. decode with libjpeg-turbo (islow DCT, fancy upsampling: Pillow's defaults);
//     with dct_scaling, the decoder's own 1/2, 1/4 or 1/8 scaling first shrinks images
//     whose shortest side is at least 4x the target, keeping at least 2x for the final
//     antialiased resize (much faster on large images; close to, not bit-exact with, the
//     reference; images under 4x the target are unaffected and stay bit-exact); only the
//     rows and columns that steps 2-3 read are decoded (decode_only_crop);
//  2. resize the shortest side to `size` with Pillow's bicubic resampler (a = -0.5,
//     antialiased support when shrinking, 22-bit fixed point, horizontal then vertical pass
//     with 8-bit rounding between), the long side to int(size * long / short);
//  3. center crop size x size, offsets rounded half to even as Python's round();
//  4. float output: (v / 255 - mean) / std per channel, CHW; uint8 output: the cropped
//     pixels, CHW, to be normalised on the device.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "common/status.h"

namespace vlorch::dataflow {

struct ImageOptions {
  // Output side. Default 224 (CLIP ViT-L/14, EVA ViT-g).
  int size = 224;
  // Let the JPEG decoder shrink images >= 4x the target by 1/2..1/8 first. Default true.
  bool dct_scaling = true;
  // Decode only the rows and columns the crop depends on (plus a 16-pixel margin): rows
  // below them are not decoded at all, rows above them only entropy-decoded, columns beside
  // them not inverse-transformed or colour-converted. The output is the same bit for bit as
  // decoding the whole image (tested); damage confined to the unused rows at the bottom is
  // then not noticed (the shard store's ingest already decoded every image in full).
  // Default true.
  bool decode_only_crop = true;
  // CLIP's normalisation constants (OpenAI CLIP).
  float mean[3] = {0.48145466f, 0.4578275f, 0.40821073f};
  float std[3] = {0.26862954f, 0.26130258f, 0.27577711f};
};

struct DecodedImage {
  int width = 0, height = 0;      // as stored
  int decoded_width = 0, decoded_height = 0;  // after DCT scaling
};

// Which implementation of the image kernels (transposes, resampler) runs. kAuto: the SIMD
// ones this CPU supports (SSSE3 transposes, AVX2 resampler), else the portable loops;
// kPortable: the portable loops only, as on other architectures. Both give the same bytes;
// the switch exists so tests and benchmarks can check that. Process-wide; default kAuto.
enum class ImageKernels { kAuto, kPortable };
void SetImageKernels(ImageKernels kernels);

// Writes 3 * size * size floats. InvalidArgument naming the problem for an undecodable
// image (callers count and skip such samples).
StatusOr<DecodedImage> DecodeClipFloat(std::string_view jpeg, const ImageOptions& options, float* out);
// Writes 3 * size * size bytes (CHW).
StatusOr<DecodedImage> DecodeClipUint8(std::string_view jpeg, const ImageOptions& options, uint8_t* out);

}  // namespace vlorch::dataflow
