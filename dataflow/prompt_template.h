// Prompt templates as data: how a sample becomes input ids, labels and image positions.
//
// A template is a few strings (docs/dataflow.md):
//   prompt   text before the answer, with "{instruction}" for the human turn and, optionally,
//            "{image}" for the visual tokens. Without "{image}", the image goes where the
//            human turn has its "<image>" tag (LLaVA: before or after the instruction).
//            With "{image}", the tag (and one newline next to it) is removed from the turn.
//   answer   text after the answer (e.g. "\n"), part of the target.
// Built-ins: "blip2_caption" (visual tokens prepended, caption as the target), "llava_plain"
// (LLaVA pre-training: image, then the gpt turn), "llava_v1" (USER/ASSISTANT with <image>
// where the human turn has it), "tinygpt_v" ("###Human: <Img><ImageHere></Img> {instruction}
// ###Assistant: ").
//
// Encoding: [BOS] prompt-before-image, image_tokens placeholder slots, prompt-after-image,
// answer [EOS]. Labels are kIgnoreIndex on BOS, the prompt and the image slots, and equal the
// ids on the answer and EOS (the model shifts them). Text-only samples: [BOS] text [EOS], all
// labelled. Truncation to max_len: answer tokens are cut from the end (EOS included) and
// `truncated` is set; if BOS + prompt + image slots alone exceed max_len the sample is
// rejected with FailedPrecondition (the pipeline counts it), because cutting the prompt or
// the image would train on a sample that means something else.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "common/status.h"
#include "dataflow/tokenizer.h"
#include "sharding/record.h"

namespace vlorch::dataflow {

inline constexpr int32_t kIgnoreIndex = -100;

struct PromptTemplate {
  std::string name;
  std::string prompt;  // see above
  std::string answer;  // appended after the answer text
  // Visual tokens per image (Q-Former queries). Default 32.
  int image_tokens = 32;
  // Id written into the image slots (the model replaces their embeddings). Default 0.
  int32_t image_token_id = 0;
  int32_t bos_id = -1;  // -1: no BOS
  int32_t eos_id = -1;  // -1: no EOS
  // The human turn's image tag in the data (LLaVA: "<image>").
  std::string image_tag = "<image>";

  Status Validate() const;
};

// The built-in templates by name; NotFound listing them otherwise.
StatusOr<PromptTemplate> BuiltinTemplate(const std::string& name);

struct EncodedSample {
  std::vector<int32_t> input_ids;
  std::vector<int32_t> labels;
  int32_t image_position = -1;  // index of the first image slot, -1 without image
  bool truncated = false;
};

// `sample`: a caption (text = caption), a conversation (human/gpt turns; the first human
// turn carries the image) or text only. max_len 0 means no limit.
StatusOr<EncodedSample> EncodeSample(const PromptTemplate& t, const Tokenizer& tok,
                                     const sharding::SampleRecord& sample, int max_len);

}  // namespace vlorch::dataflow
