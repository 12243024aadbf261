#include "model/text/pretokenizer.h"

#include <algorithm>
#include <cstdlib>
#include <vector>

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <utf8proc.h>

#include "absl/strings/str_cat.h"
#include "core/check.h"
#include "model/text/byte_level.h"

namespace q3vl::model {
namespace {

constexpr char32_t kMaxCodePoint = 0x10FFFF;

// Code points that may change under NFC or change their neighbour: non-starters, chars with a
// canonical decomposition (except Hangul syllables, which are NFC) and the last char of every
// multi-char canonical decomposition (the second half of a composable pair, Hangul V/T jamo
// included). Text without any of them is NFC. Built once from utf8proc's own tables.
const std::vector<bool>& NfcUnstable() {
  static const std::vector<bool>* const unstable = [] {
    auto* table = new std::vector<bool>(kMaxCodePoint + 1, false);
    utf8proc_int32_t parts[32];
    for (char32_t cp = 0x80; cp <= kMaxCodePoint; ++cp) {
      if (cp >= 0xD800 && cp <= 0xDFFF) continue;
      const utf8proc_property_t* property = utf8proc_get_property(cp);
      if (property->combining_class != 0) (*table)[cp] = true;
      const bool hangul_syllable = cp >= 0xAC00 && cp <= 0xD7A3;
      if (property->decomp_seqindex == UINT16_MAX && !hangul_syllable) continue;  // no mapping
      int last_boundclass = 0;
      const utf8proc_ssize_t n = utf8proc_decompose_char(cp, parts, 32, UTF8PROC_DECOMPOSE, &last_boundclass);
      if (n < 1 || (n == 1 && parts[0] == static_cast<utf8proc_int32_t>(cp))) continue;
      if (!hangul_syllable) (*table)[cp] = true;
      if (n >= 2) (*table)[parts[n - 1]] = true;
    }
    return table;
  }();
  return *unstable;
}

// Unicode White_Space, as Oniguruma's and Rust's `\s` match it (a class body, no brackets).
constexpr char kWhiteSpaceClass[] =
    "\\x{9}-\\x{d}\\x{20}\\x{85}\\x{a0}\\x{1680}\\x{2000}-\\x{200a}\\x{2028}\\x{2029}\\x{202f}"
    "\\x{205f}\\x{3000}";

}  // namespace

absl::string_view NormalizeNfc(absl::string_view text, std::string* buffer) {
  const auto* p = reinterpret_cast<const uint8_t*>(text.data());
  const size_t n = text.size();
  const std::vector<bool>* unstable = nullptr;
  // Returns whether the char at i is stable and sets *len to its length.
  auto stable_at = [&](size_t i, size_t* len) {
    if (p[i] < 0x80) {
      *len = 1;
      return true;
    }
    if (unstable == nullptr) unstable = &NfcUnstable();
    utf8proc_int32_t cp;
    const utf8proc_ssize_t l = utf8proc_iterate(p + i, static_cast<utf8proc_ssize_t>(n - i), &cp);
    Q3VL_CHECK_GT(l, 0) << "NormalizeNfc needs valid UTF-8";
    *len = static_cast<size_t>(l);
    return !(*unstable)[cp];
  };
  // A stable char is a starter nothing composes into, so NFC never reaches across the point
  // before it: only the runs of unstable chars plus the stable char before each are normalised.
  size_t copied = 0;       // text[0, copied) is in *buffer (once the buffer is in use)
  size_t last_stable = 0;  // start of the last stable char seen
  bool buffered = false;
  size_t len = 0;
  for (size_t i = 0; i < n;) {
    if (stable_at(i, &len)) {
      last_stable = i;
      i += len;
      continue;
    }
    size_t end = i + len;
    while (end < n && !stable_at(end, &len)) end += len;
    if (!buffered) buffer->clear();
    buffered = true;
    buffer->append(text.data() + copied, last_stable - copied);
    utf8proc_uint8_t* normalized = nullptr;
    const utf8proc_ssize_t size =
        utf8proc_map(p + last_stable, static_cast<utf8proc_ssize_t>(end - last_stable), &normalized,
                     static_cast<utf8proc_option_t>(UTF8PROC_STABLE | UTF8PROC_COMPOSE));
    Q3VL_CHECK_GE(size, 0) << "utf8proc_map: " << utf8proc_errmsg(size);
    buffer->append(reinterpret_cast<const char*>(normalized), size);
    std::free(normalized);
    copied = last_stable = i = end;
  }
  if (!buffered) return text;
  buffer->append(text.data() + copied, n - copied);
  return *buffer;
}

absl::StatusOr<std::string> TranslateSplitPattern(absl::string_view pattern) {
  std::string out;
  bool in_class = false;
  for (size_t i = 0; i < pattern.size(); ++i) {
    const char c = pattern[i];
    if (c == '\\' && i + 1 < pattern.size()) {
      const char escaped = pattern[++i];
      if (escaped == 's' && in_class) {
        out += kWhiteSpaceClass;
      } else if (escaped == 's' || escaped == 'S') {
        if (in_class) {
          return absl::InvalidArgumentError(
              absl::StrCat("split pattern: \\S inside a character class is not supported: ", pattern));
        }
        absl::StrAppend(&out, escaped == 's' ? "[" : "[^", kWhiteSpaceClass, "]");
      } else {
        out += c;
        out += escaped;
      }
      continue;
    }
    out += c;
    if (!in_class && c == '[') {
      in_class = true;
      if (i + 1 < pattern.size() && pattern[i + 1] == '^') out += pattern[++i];
      if (i + 1 < pattern.size() && pattern[i + 1] == ']') out += pattern[++i];  // literal ']'
    } else if (in_class && c == '[' && i + 1 < pattern.size() && pattern[i + 1] == ':') {
      const size_t end = pattern.find(":]", i + 2);  // POSIX class such as [:alpha:]
      if (end != absl::string_view::npos) {
        out.append(pattern.data() + i + 1, end + 2 - (i + 1));
        i = end + 1;
      }
    } else if (in_class && c == ']') {
      in_class = false;
    }
  }
  return out;
}

absl::StatusOr<std::unique_ptr<SplitRegex>> SplitRegex::Compile(absl::string_view pattern) {
  auto translated = TranslateSplitPattern(pattern);
  if (!translated.ok()) return translated.status();
  int error = 0;
  PCRE2_SIZE error_offset = 0;
  pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(translated->data()), translated->size(),
                                   PCRE2_UTF | PCRE2_UCP, &error, &error_offset, nullptr);
  if (code == nullptr) {
    PCRE2_UCHAR message[256];
    pcre2_get_error_message(error, message, sizeof message);
    return absl::InvalidArgumentError(absl::StrCat("split pattern does not compile with PCRE2 at offset ",
                                                   error_offset, ": ", reinterpret_cast<char*>(message)));
  }
  // JIT is an optimisation: pcre2_match falls back to the interpreter when it is unavailable.
  pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);
  return std::unique_ptr<SplitRegex>(new SplitRegex(code));
}

SplitRegex::~SplitRegex() { pcre2_code_free(code_); }

void SplitRegex::Split(absl::string_view text, absl::FunctionRef<void(absl::string_view)> piece) const {
  if (text.empty()) return;
  pcre2_match_data* match = pcre2_match_data_create_from_pattern(code_, nullptr);
  Q3VL_CHECK(match != nullptr) << "out of memory";
  const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
  size_t start = 0;     // where the next search begins
  size_t emitted = 0;   // text before this has been passed to `piece`
  while (start < text.size()) {
    const int rc = pcre2_match(code_, subject, text.size(), start, PCRE2_NO_UTF_CHECK, match, nullptr);
    if (rc == PCRE2_ERROR_NOMATCH) break;
    Q3VL_CHECK_GT(rc, 0) << "pcre2_match failed with error " << rc;
    const PCRE2_SIZE* ovector = pcre2_get_ovector_pointer(match);
    const size_t begin = ovector[0], end = ovector[1];
    if (begin > emitted) piece(text.substr(emitted, begin - emitted));
    if (end > begin) {
      piece(text.substr(begin, end - begin));
      emitted = end;
      start = end;
    } else {  // empty match: step over one char
      if (end >= text.size()) break;
      start = end + std::max(1, ClassifyUtf8(subject + end, text.size() - end));
    }
  }
  if (emitted < text.size()) piece(text.substr(emitted));
  pcre2_match_data_free(match);
}

}  // namespace q3vl::model
