#include "dataflow/prompt_template.h"

#include <fmt/format.h>

namespace vlorch::dataflow {
namespace {

constexpr const char* kImage = "{image}";
constexpr const char* kInstruction = "{instruction}";

void ReplaceAll(std::string* s, const std::string& from, const std::string& to) {
  for (size_t p = s->find(from); p != std::string::npos; p = s->find(from, p + to.size())) s->replace(p, from.size(), to);
}

// Removes the image tag and one newline next to it ("<image>\n" or "\n<image>").
std::string StripTag(std::string text, const std::string& tag) {
  size_t p = text.find(tag);
  if (p == std::string::npos) return text;
  size_t b = p, e = p + tag.size();
  if (e < text.size() && text[e] == '\n') ++e;
  else if (b > 0 && text[b - 1] == '\n') --b;
  text.erase(b, e - b);
  return text;
}

}  // namespace

Status PromptTemplate::Validate() const {
  if (image_tokens < 1) return InvalidArgumentError(fmt::format("template '{}': image_tokens must be >= 1", name));
  if (prompt.find(kInstruction) == std::string::npos && prompt.find(kImage) == std::string::npos)
    return InvalidArgumentError(fmt::format("template '{}': the prompt needs {{image}} and/or {{instruction}}", name));
  size_t first = prompt.find(kImage);
  if (first != std::string::npos && prompt.find(kImage, first + 1) != std::string::npos)
    return InvalidArgumentError(fmt::format("template '{}': {{image}} may appear once", name));
  return Status::OK();
}

StatusOr<PromptTemplate> BuiltinTemplate(const std::string& name) {
  PromptTemplate t;
  t.name = name;
  if (name == "blip2_caption") {
    t.prompt = "{image}";
  } else if (name == "llava_plain") {
    t.prompt = "{image}";
    t.answer = "\n";
  } else if (name == "llava_v1") {
    t.prompt = "A chat between a curious human and an artificial intelligence assistant. The assistant gives "
               "helpful, detailed, and polite answers to the human's questions. USER: {instruction} ASSISTANT:";
  } else if (name == "tinygpt_v") {
    t.prompt = "###Human: <Img>{image}</Img> {instruction}###Assistant: ";
  } else {
    return NotFoundError(fmt::format("no template '{}' (built-in: blip2_caption, llava_plain, llava_v1, tinygpt_v)", name));
  }
  return t;
}

StatusOr<EncodedSample> EncodeSample(const PromptTemplate& t, const Tokenizer& tok, const sharding::SampleRecord& s,
                                     int max_len) {
  RETURN_IF_ERROR(t.Validate());
  EncodedSample out;
  auto append = [&](const std::vector<int32_t>& ids, bool target) {
    out.input_ids.insert(out.input_ids.end(), ids.begin(), ids.end());
    out.labels.insert(out.labels.end(), ids.size(), target ? 0 : kIgnoreIndex);
    if (target) std::copy(ids.begin(), ids.end(), out.labels.end() - ids.size());
  };
  if (t.bos_id >= 0) append({t.bos_id}, false);

  if (s.kind == sharding::SampleKind::kText) {
    append(tok.EncodeText(s.text), true);
    if (t.eos_id >= 0) append({t.eos_id}, true);
  } else {
    // The instruction (human turn) and the answer (caption or gpt turn).
    std::string human, answer;
    if (s.kind == sharding::SampleKind::kConversation) {
      for (const auto& turn : s.conversation) {
        if (turn.from == "human" && human.empty()) human = turn.value;
        if (turn.from == "gpt" && answer.empty()) answer = turn.value;
      }
      if (answer.empty()) return InvalidArgumentError(fmt::format("sample '{}' has no gpt turn", s.id));
    } else {
      answer = s.text;
    }
    // Where the image goes: {image} in the template, else the human turn's tag.
    std::string prompt = t.prompt;
    const bool template_places_image = prompt.find(kImage) != std::string::npos;
    std::string instruction = template_places_image ? StripTag(human, t.image_tag) : human;
    if (!template_places_image) {
      if (instruction.find(t.image_tag) == std::string::npos)
        return InvalidArgumentError(fmt::format("sample '{}': template '{}' puts the image at the human turn's {} tag, "
                                                "and this turn has none", s.id, t.name, t.image_tag));
      ReplaceAll(&instruction, t.image_tag, kImage);
    }
    ReplaceAll(&prompt, kInstruction, instruction);
    size_t at = prompt.find(kImage);
    append(tok.EncodeText(prompt.substr(0, at)), false);
    out.image_position = static_cast<int32_t>(out.input_ids.size());
    append(std::vector<int32_t>(t.image_tokens, t.image_token_id), false);
    append(tok.EncodeText(prompt.substr(at + std::string(kImage).size())), false);
    append(tok.EncodeText(answer + t.answer), true);
    if (t.eos_id >= 0) append({t.eos_id}, true);
  }

  if (max_len > 0 && static_cast<int>(out.input_ids.size()) > max_len) {
    // Everything before the first label is prompt (+ image); it must fit whole.
    size_t prompt_len = 0;
    while (prompt_len < out.labels.size() && out.labels[prompt_len] == kIgnoreIndex) ++prompt_len;
    if (static_cast<int>(prompt_len) >= max_len)
      return FailedPreconditionError(fmt::format("sample '{}': prompt and image take {} tokens, more than max_len {}; "
                                                 "raise max_len or shorten the template", s.id, prompt_len, max_len));
    out.input_ids.resize(max_len);
    out.labels.resize(max_len);
    out.truncated = true;
  }
  return out;
}

}  // namespace vlorch::dataflow
