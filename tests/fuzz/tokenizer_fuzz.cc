// Fuzz target: the real Qwen3 tokenizer (Q3VL_TOKENIZER_JSON, loaded once) on arbitrary bytes.
// Encode must not crash and every id must be in the vocabulary; for valid UTF-8 input the
// round trip is lossless up to NFC: Decode(Encode(x)) == x with each stretch between added
// tokens NFC-normalised by utf8proc (a reference written here, not the tokenizer's fast path).
// Streaming detokenisation must give the same text as Decode.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "model/text/tokenizer.h"

extern "C" {
#include <utf8proc.h>
}

namespace {

using q3vl::model::Tokenizer;

const Tokenizer& RealTokenizer() {
  static const Tokenizer* tokenizer = [] {
    auto loaded = Tokenizer::FromFile(Q3VL_TOKENIZER_JSON);
    if (!loaded.ok()) {
      std::fprintf(stderr, "tokenizer_fuzz: %s\n", std::string(loaded.status().message()).c_str());
      std::abort();
    }
    return new Tokenizer(*std::move(loaded));
  }();
  return *tokenizer;
}

bool IsValidUtf8(absl::string_view s) {
  const auto* p = reinterpret_cast<const utf8proc_uint8_t*>(s.data());
  for (size_t i = 0; i < s.size();) {
    utf8proc_int32_t cp;
    const utf8proc_ssize_t n = utf8proc_iterate(p + i, static_cast<utf8proc_ssize_t>(s.size() - i), &cp);
    if (n <= 0) return false;
    i += static_cast<size_t>(n);
  }
  return true;
}

// NFC with utf8proc (length-delimited, so NUL is an ordinary char). utf8proc 2.8 (Debian 12)
// wrongly composes an LV syllable with U+11A7, which is not a trailing consonant and must stay
// (JuliaStrings/utf8proc#317); U+11A7 is a starter nothing composes with, so NFC may be taken
// separately on each side of it.
std::string Nfc(absl::string_view s) {
  constexpr absl::string_view kU11A7 = "\xe1\x86\xa7";
  if (const size_t at = s.find(kU11A7, 1); at != absl::string_view::npos) {
    return Nfc(s.substr(0, at)) + Nfc(s.substr(at));
  }
  if (s.empty()) return "";
  utf8proc_uint8_t* out = nullptr;
  const utf8proc_ssize_t n =
      utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(s.data()), static_cast<utf8proc_ssize_t>(s.size()),
                   &out, static_cast<utf8proc_option_t>(UTF8PROC_STABLE | UTF8PROC_COMPOSE));
  if (n < 0) std::abort();  // only called on valid UTF-8
  std::string result(reinterpret_cast<char*>(out), static_cast<size_t>(n));
  std::free(out);
  return result;
}

// What Decode(Encode(x)) must be: added tokens verbatim (longest at the leftmost position, as
// Hugging Face's added-vocabulary matcher), the text between them NFC-normalised.
std::string ExpectedRoundTrip(const Tokenizer& tokenizer, absl::string_view text) {
  std::string expected;
  size_t segment_start = 0;
  for (size_t i = 0; i < text.size();) {
    size_t longest = 0;
    for (const q3vl::model::AddedToken& t : tokenizer.added_tokens()) {
      if (t.content.size() > longest && text.substr(i, t.content.size()) == t.content) longest = t.content.size();
    }
    if (longest == 0) {
      ++i;
      continue;
    }
    expected += Nfc(text.substr(segment_start, i - segment_start));
    expected.append(text.data() + i, longest);
    i += longest;
    segment_start = i;
  }
  return expected + Nfc(text.substr(segment_start));
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const Tokenizer& tokenizer = RealTokenizer();
  const absl::string_view text(reinterpret_cast<const char*>(data), size);
  const std::vector<int32_t> ids = tokenizer.Encode(text);
  for (int32_t id : ids) {
    if (id < 0 || id >= tokenizer.vocab_size()) std::abort();
  }
  const std::string decoded = tokenizer.Decode(ids);
  if (!IsValidUtf8(decoded)) std::abort();
  q3vl::model::StreamDecoder stream(tokenizer);
  std::string streamed;
  for (int32_t id : ids) streamed += stream.Push(id);
  streamed += stream.Flush();
  if (streamed != decoded) std::abort();
  if (IsValidUtf8(text) && decoded != ExpectedRoundTrip(tokenizer, text)) {
    std::fprintf(stderr, "tokenizer_fuzz: round trip differs from NFC for the %zu input bytes:", size);
    for (size_t i = 0; i < size; ++i) std::fprintf(stderr, " %02x", data[i]);
    std::fprintf(stderr, "\n");
    std::abort();
  }
  return 0;
}
