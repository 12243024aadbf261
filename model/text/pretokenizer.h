// Text stages of the tokenizer before BPE (internal to model/): NFC normalisation (utf8proc)
// and the Split pre-tokenizer regex (PCRE2, JIT). A compiled SplitRegex is immutable and safe
// to use from many threads at once; each Split call allocates its own match data.
#ifndef Q3VL_MODEL_TEXT_PRETOKENIZER_H_
#define Q3VL_MODEL_TEXT_PRETOKENIZER_H_

#include <memory>
#include <string>

#include "absl/functional/function_ref.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

struct pcre2_real_code_8;

namespace q3vl::model {

// Unicode NFC of `text`. Returns `text` itself when it is already NFC by a quick check (ASCII,
// and chars that neither decompose nor compose), else the normalised form written to `buffer`.
// REQUIRES: `text` is valid UTF-8.
absl::string_view NormalizeNfc(absl::string_view text, std::string* buffer);

// Rewrites a tokenizer.json (Oniguruma-flavoured) pattern for PCRE2: `\s` / `\S` become explicit
// classes of the Unicode White_Space chars (PCRE2's UCP `\s` also matches U+180E, Oniguruma's
// does not). InvalidArgument for `\S` inside a character class (not expressible in PCRE2).
absl::StatusOr<std::string> TranslateSplitPattern(absl::string_view pattern);

// The Split pre-tokenizer with behavior "Isolated": every match and every gap between matches
// becomes one piece.
class SplitRegex {
 public:
  // Translates and compiles `pattern` (UTF + UCP, JIT when available).
  static absl::StatusOr<std::unique_ptr<SplitRegex>> Compile(absl::string_view pattern);
  ~SplitRegex();
  SplitRegex(const SplitRegex&) = delete;
  SplitRegex& operator=(const SplitRegex&) = delete;

  // Calls `piece` for each non-empty piece of `text`, in order; the pieces concatenate to text.
  // REQUIRES: `text` is valid UTF-8.
  void Split(absl::string_view text, absl::FunctionRef<void(absl::string_view)> piece) const;

 private:
  explicit SplitRegex(pcre2_real_code_8* code) : code_(code) {}
  pcre2_real_code_8* code_;  // owned
};

}  // namespace q3vl::model

#endif  // Q3VL_MODEL_TEXT_PRETOKENIZER_H_
