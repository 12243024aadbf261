// Byte-level helpers of the tokenizer (internal to model/): the GPT-2 byte <-> char alphabet
// that byte-level BPE vocabularies are spelled in, and UTF-8 validation / lossy conversion with
// exactly the replacement rule of Rust's String::from_utf8_lossy. Stateless and thread-safe.
#ifndef Q3VL_MODEL_TEXT_BYTE_LEVEL_H_
#define Q3VL_MODEL_TEXT_BYTE_LEVEL_H_

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>

#include "absl/strings/string_view.h"

namespace q3vl::model {

// The code point that byte `b` is spelled as (printable Latin-1 bytes map to themselves, the
// other 68 bytes to U+0100.. in byte order; e.g. 0x20 -> U+0120 'Ġ', 0x0A -> U+010A 'Ċ').
char32_t ByteLevelChar(uint8_t b);

// The bytes a byte-level token spelling stands for, or nullopt if `token` is not valid UTF-8
// or has a char outside the alphabet.
std::optional<std::string> ByteLevelToBytes(absl::string_view token);

// Classifies the UTF-8 sequence at the start of [p, p + n), n >= 1: returns its length (1-4)
// when it is a complete valid char, -k when its first k bytes are a maximal invalid subpart
// (replaced by one U+FFFD), and 0 when all n bytes are a proper prefix of a valid char.
int ClassifyUtf8(const uint8_t* p, size_t n);

// True when `s` is entirely valid UTF-8.
bool IsValidUtf8(absl::string_view s);

// Appends `bytes` to `out`, each maximal invalid subpart replaced by U+FFFD. When `final` is
// false, a trailing proper prefix of a valid char is left unconsumed (it may still complete).
// Returns the number of bytes consumed.
size_t AppendUtf8Lossy(absl::string_view bytes, bool final, std::string* out);

}  // namespace q3vl::model

#endif  // Q3VL_MODEL_TEXT_BYTE_LEVEL_H_
