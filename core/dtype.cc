#include "core/dtype.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "core/check.h"

namespace q3vl {

size_t DTypeSize(DType dtype) {
  switch (dtype) {
    case DType::kF32: return 4;
    case DType::kBF16: return 2;
    case DType::kF16: return 2;
    case DType::kF8E4M3: return 1;
    case DType::kI64: return 8;
    case DType::kI32: return 4;
    case DType::kU8: return 1;
    case DType::kBool: return 1;
  }
  return 0;
}

absl::string_view DTypeName(DType dtype) {
  switch (dtype) {
    case DType::kF32: return "f32";
    case DType::kBF16: return "bf16";
    case DType::kF16: return "f16";
    case DType::kF8E4M3: return "f8e4m3";
    case DType::kI64: return "i64";
    case DType::kI32: return "i32";
    case DType::kU8: return "u8";
    case DType::kBool: return "bool";
  }
  return "?";
}

namespace {
struct SafetensorsName {
  absl::string_view name;
  DType dtype;
};
constexpr SafetensorsName kSafetensorsNames[] = {
    {"F32", DType::kF32}, {"BF16", DType::kBF16}, {"F16", DType::kF16},
    {"F8_E4M3", DType::kF8E4M3}, {"I64", DType::kI64}, {"I32", DType::kI32},
    {"U8", DType::kU8}, {"BOOL", DType::kBool},
};
}  // namespace

absl::StatusOr<DType> DTypeFromSafetensors(absl::string_view name) {
  for (const auto& entry : kSafetensorsNames) {
    if (entry.name == name) return entry.dtype;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unsupported dtype \"", std::string(name), "\" (supported: F32, BF16, F16, F8_E4M3, ",
                   "I64, I32, U8, BOOL)"));
}

absl::string_view DTypeToSafetensors(DType dtype) {
  for (const auto& entry : kSafetensorsNames) {
    if (entry.dtype == dtype) return entry.name;
  }
  return "?";
}

float F16ToF32(uint16_t v) {
  const uint32_t sign = (v & 0x8000u) << 16;
  const uint32_t exponent = (v >> 10) & 0x1f;
  const uint32_t mantissa = v & 0x3ff;
  float magnitude;
  if (exponent == 0) {
    magnitude = std::ldexp(static_cast<float>(mantissa), -24);
  } else if (exponent == 31) {
    magnitude = mantissa ? NAN : INFINITY;
  } else {
    magnitude = std::ldexp(static_cast<float>(mantissa | 0x400), static_cast<int>(exponent) - 25);
  }
  uint32_t bits;
  std::memcpy(&bits, &magnitude, 4);
  bits |= sign;
  float out;
  std::memcpy(&out, &bits, 4);
  return out;
}

uint16_t F32ToF16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  const uint16_t sign = static_cast<uint16_t>((bits >> 16) & 0x8000u);
  const float a = std::fabs(f);
  if (std::isnan(a)) return sign | 0x7e00;
  if (a >= 65520.0f) return sign | 0x7c00;
  if (a < 6.103515625e-05f) {  // subnormal: multiples of 2^-24, round half to even
    return sign | static_cast<uint16_t>(std::nearbyint(a * 16777216.0f));
  }
  int exponent;
  const float m = std::frexp(a, &exponent);  // a = m * 2^exponent, m in [0.5, 1)
  float scaled = std::nearbyint(m * 2048.0f);  // 11 significant bits
  if (scaled == 2048.0f) {
    scaled = 1024.0f;
    ++exponent;
  }
  const uint32_t e = static_cast<uint32_t>(exponent + 14);
  if (e >= 31) return sign | 0x7c00;
  return sign | static_cast<uint16_t>((e << 10) | (static_cast<uint32_t>(scaled) - 1024));
}

float F8E4M3ToF32(uint8_t v) {
  const float sign = (v & 0x80) ? -1.0f : 1.0f;
  const int exponent = (v >> 3) & 0xf;
  const int mantissa = v & 0x7;
  if (exponent == 0xf && mantissa == 0x7) return NAN;  // e4m3fn has no infinities
  if (exponent == 0) return sign * std::ldexp(static_cast<float>(mantissa), -9);
  return sign * std::ldexp(static_cast<float>(8 + mantissa), exponent - 10);
}

uint8_t F32ToF8E4M3(float f) {
  if (std::isnan(f)) return 0x7f;
  const uint8_t sign = std::signbit(f) ? 0x80 : 0x00;
  const float a = std::fabs(f);
  if (a >= 448.0f) return sign | 0x7e;  // saturate (448 is the largest finite value)
  int e = 0;
  std::frexp(a, &e);  // a = m * 2^e, m in [0.5, 1)
  // Normal numbers have exponents -6..8 (value 2^(e - 1)); below that, steps of 2^-9.
  const int exponent = std::max(e - 1, -6);
  const float step = std::ldexp(1.0f, exponent - 3);  // 3 mantissa bits
  const float q = std::nearbyint(a / step);           // half to even
  if (q == 0.0f) return sign;
  float value = q * step;
  if (value >= 448.0f) return sign | 0x7e;
  int ve = 0;
  std::frexp(value, &ve);
  if (ve - 1 < -6) return sign | static_cast<uint8_t>(value / std::ldexp(1.0f, -9));  // subnormal
  const int mantissa = static_cast<int>(value / std::ldexp(1.0f, ve - 1) * 8.0f) - 8;
  return sign | static_cast<uint8_t>(((ve - 1 + 7) << 3) | mantissa);
}

void ConvertToF32(DType dtype, const void* src, float* dst, size_t n) {
  switch (dtype) {
    case DType::kF32:
      std::memcpy(dst, src, n * 4);
      return;
    case DType::kBF16: {
      const auto* s = static_cast<const uint16_t*>(src);
      for (size_t i = 0; i < n; ++i) dst[i] = BF16ToF32(s[i]);
      return;
    }
    case DType::kF16: {
      const auto* s = static_cast<const uint16_t*>(src);
      for (size_t i = 0; i < n; ++i) dst[i] = F16ToF32(s[i]);
      return;
    }
    case DType::kF8E4M3: {
      const auto* s = static_cast<const uint8_t*>(src);
      for (size_t i = 0; i < n; ++i) dst[i] = F8E4M3ToF32(s[i]);
      return;
    }
    default:
      Q3VL_CHECK(false) << "ConvertToF32 on non-float dtype " << DTypeName(dtype);
  }
}

}  // namespace q3vl
