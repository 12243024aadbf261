// The Qwen byte-level BPE tokenizer, read from a Hugging Face tokenizer.json; Encode and Decode
// give the ids and text of HF tokenizers. A Tokenizer is immutable after loading apart from an
// internally locked cache, so one instance may be shared by many threads. A StreamDecoder
// borrows its Tokenizer (which must outlive it) and belongs to one thread.
#ifndef Q3VL_MODEL_TEXT_TOKENIZER_H_
#define Q3VL_MODEL_TEXT_TOKENIZER_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"

namespace q3vl::model {

// A token of tokenizer.json's "added_tokens": matched verbatim in raw text before anything else.
struct AddedToken {
  int32_t id = 0;
  std::string content;
  bool special = false;  // dropped by Decode(..., skip_special_tokens = true)
};

class Tokenizer {
 public:
  // Loads and validates tokenizer.json; errors name the file and the offending field.
  static absl::StatusOr<Tokenizer> FromFile(const std::string& tokenizer_json_path);
  // The same from the file's text; `source` names it in errors.
  static absl::StatusOr<Tokenizer> FromJson(absl::string_view json_text, absl::string_view source = "tokenizer.json");

  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;
  ~Tokenizer();

  // Token ids of `text`; no BOS/EOS is added. Pipeline: added tokens (longest match, leftmost
  // first), then per remaining segment NFC, the Split regex, byte-level BPE. Invalid UTF-8 in
  // `text` is first replaced by U+FFFD as Decode would (HF takes only valid strings).
  std::vector<int32_t> Encode(absl::string_view text) const;

  // The text of `ids`: token bytes concatenated, each maximal invalid UTF-8 subpart replaced by
  // U+FFFD (Rust's String::from_utf8_lossy). Ids that name no token are skipped, as HF does.
  // With `skip_special_tokens`, tokens whose `special` flag is true are dropped.
  std::string Decode(absl::Span<const int32_t> ids, bool skip_special_tokens = false) const;

  // Id of an added token by its content (e.g. "<|im_end|>"); nullopt for anything else.
  std::optional<int32_t> TokenId(absl::string_view token) const;
  // One past the largest token id (vocab and added tokens): 151669 for Qwen3.
  int32_t vocab_size() const;
  // True for added tokens flagged special; false for other or unknown ids.
  bool IsSpecial(int32_t id) const;
  // The raw bytes token `id` decodes to (may be part of a UTF-8 char); empty for unknown ids.
  absl::string_view TokenBytes(int32_t id) const;
  const std::vector<AddedToken>& added_tokens() const;

 private:
  struct Impl;
  explicit Tokenizer(std::unique_ptr<const Impl> impl);
  std::unique_ptr<const Impl> impl_;
};

// Incremental detokenisation for streaming output: Push returns the text that token `id`
// completes, never a broken UTF-8 sequence. An incomplete trailing sequence is held back until
// it completes or becomes provably invalid (then it is emitted as U+FFFD); Flush emits what is
// left. The concatenation of every Push and the final Flush equals Decode(all ids) byte for byte.
class StreamDecoder {
 public:
  explicit StreamDecoder(const Tokenizer& tokenizer, bool skip_special_tokens = false)
      : tokenizer_(&tokenizer), skip_special_tokens_(skip_special_tokens) {}

  std::string Push(int32_t id);
  // Emits the held-back bytes (an incomplete sequence becomes one U+FFFD) and resets.
  std::string Flush();

 private:
  const Tokenizer* tokenizer_;
  bool skip_special_tokens_;
  std::string pending_;  // bytes of an incomplete UTF-8 sequence at the end
};

}  // namespace q3vl::model

#endif  // Q3VL_MODEL_TEXT_TOKENIZER_H_
