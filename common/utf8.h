// UTF-8 hygiene for text that comes from outside (job specs, worker messages, dataset
// records) before it is persisted or dumped as JSON: nlohmann::json's strict dump throws on
// invalid UTF-8, so one stray Latin-1 byte must never reach it unreplaced.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

namespace vlorch {

// `text` with every invalid UTF-8 sequence (stray continuation bytes, truncated or overlong
// sequences, surrogates, code points past U+10FFFF) replaced by U+FFFD. Valid text comes back
// unchanged.
std::string SanitizeUtf8(std::string_view text);

// True when `text` is valid UTF-8 by the rules above.
bool IsValidUtf8(std::string_view text);

// SanitizeUtf8(text), then cut to at most `max_bytes` bytes without splitting a character.
std::string SanitizeUtf8(std::string_view text, size_t max_bytes);

}  // namespace vlorch
