#include "model/text/byte_level.h"

#include <array>

namespace q3vl::model {
namespace {

constexpr bool IsPrintableByte(int b) {
  return (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
}

constexpr std::array<char32_t, 256> MakeByteChars() {
  std::array<char32_t, 256> chars{};
  char32_t next = 0x100;
  for (int b = 0; b < 256; ++b) chars[b] = IsPrintableByte(b) ? static_cast<char32_t>(b) : next++;
  return chars;
}

constexpr std::array<char32_t, 256> kByteChars = MakeByteChars();

// Byte for a code point of the alphabet, or -1. The alphabet lies in U+0000..U+0143.
constexpr std::array<int16_t, 0x144> MakeCharBytes() {
  std::array<int16_t, 0x144> bytes{};
  for (int16_t& b : bytes) b = -1;
  for (int b = 0; b < 256; ++b) bytes[kByteChars[b]] = static_cast<int16_t>(b);
  return bytes;
}

constexpr std::array<int16_t, 0x144> kCharBytes = MakeCharBytes();

// Decodes the valid char of `len` bytes at p.
char32_t DecodeChar(const uint8_t* p, int len) {
  if (len == 1) return p[0];
  char32_t cp = p[0] & (0xFF >> (len + 1));
  for (int i = 1; i < len; ++i) cp = (cp << 6) | (p[i] & 0x3F);
  return cp;
}

}  // namespace

char32_t ByteLevelChar(uint8_t b) { return kByteChars[b]; }

std::optional<std::string> ByteLevelToBytes(absl::string_view token) {
  std::string bytes;
  bytes.reserve(token.size());
  const auto* p = reinterpret_cast<const uint8_t*>(token.data());
  size_t i = 0;
  while (i < token.size()) {
    const int len = ClassifyUtf8(p + i, token.size() - i);
    if (len <= 0) return std::nullopt;
    const char32_t cp = DecodeChar(p + i, len);
    if (cp >= kCharBytes.size() || kCharBytes[cp] < 0) return std::nullopt;
    bytes.push_back(static_cast<char>(kCharBytes[cp]));
    i += len;
  }
  return bytes;
}

int ClassifyUtf8(const uint8_t* p, size_t n) {
  const uint8_t lead = p[0];
  if (lead < 0x80) return 1;
  int trail;
  uint8_t lo = 0x80, hi = 0xBF;  // allowed range of the first continuation byte
  if (lead >= 0xC2 && lead <= 0xDF) {
    trail = 1;
  } else if (lead >= 0xE0 && lead <= 0xEF) {
    trail = 2;
    if (lead == 0xE0) lo = 0xA0;  // no overlong forms
    if (lead == 0xED) hi = 0x9F;  // no surrogates
  } else if (lead >= 0xF0 && lead <= 0xF4) {
    trail = 3;
    if (lead == 0xF0) lo = 0x90;
    if (lead == 0xF4) hi = 0x8F;  // <= U+10FFFF
  } else {
    return -1;
  }
  for (int i = 1; i <= trail; ++i) {
    if (static_cast<size_t>(i) >= n) return 0;
    if (p[i] < lo || p[i] > hi) return -i;
    lo = 0x80;
    hi = 0xBF;
  }
  return trail + 1;
}

bool IsValidUtf8(absl::string_view s) {
  const auto* p = reinterpret_cast<const uint8_t*>(s.data());
  size_t i = 0;
  while (i < s.size()) {
    if (p[i] < 0x80) {
      ++i;
      continue;
    }
    const int len = ClassifyUtf8(p + i, s.size() - i);
    if (len <= 0) return false;
    i += len;
  }
  return true;
}

size_t AppendUtf8Lossy(absl::string_view bytes, bool final, std::string* out) {
  static constexpr char kReplacement[] = "\xEF\xBF\xBD";
  const auto* p = reinterpret_cast<const uint8_t*>(bytes.data());
  const size_t n = bytes.size();
  size_t run_start = 0;  // start of the valid run not yet appended
  size_t i = 0;
  while (i < n) {
    if (p[i] < 0x80) {
      ++i;
      continue;
    }
    const int len = ClassifyUtf8(p + i, n - i);
    if (len > 0) {
      i += len;
      continue;
    }
    out->append(bytes.data() + run_start, i - run_start);
    if (len == 0 && !final) return i;  // hold back the incomplete char
    out->append(kReplacement, 3);
    i += len == 0 ? n - i : static_cast<size_t>(-len);
    run_start = i;
  }
  out->append(bytes.data() + run_start, n - run_start);
  return n;
}

}  // namespace q3vl::model
