// Parsing and validation of a Hugging Face tokenizer.json (internal to model/). Accepts only
// what the Tokenizer implements exactly: a byte-level BPE model, an NFC (or no) normalizer, one
// Split regex + ByteLevel pre-tokenizer, a ByteLevel (or no) decoder and post-processor, and
// added tokens without lstrip/rstrip/single_word/normalized. Anything else is refused by name.
#ifndef Q3VL_MODEL_TEXT_TOKENIZER_JSON_H_
#define Q3VL_MODEL_TEXT_TOKENIZER_JSON_H_

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "model/text/bpe.h"
#include "model/text/tokenizer.h"

namespace q3vl::model {

struct TokenizerSpec {
  bool nfc = false;           // normalizer is NFC (else none)
  std::string split_pattern;  // the Split pre-tokenizer's regex, as written in the file
  std::vector<std::string> vocab;  // id -> token spelling (byte-level alphabet); "" where unused
  std::array<int32_t, 256> byte_ids{};  // id of each single-byte token
  std::vector<BytePairEncoder::Merge> merges;  // in rank order
  std::vector<AddedToken> added_tokens;        // in file order
};

// Parses the text of a tokenizer.json. Errors are InvalidArgument and say what is wrong and
// where (JSON path); the caller prefixes the file name.
absl::StatusOr<TokenizerSpec> ParseTokenizerJson(absl::string_view json_text);

}  // namespace q3vl::model

#endif  // Q3VL_MODEL_TEXT_TOKENIZER_JSON_H_
