// Element types of tensors and the scalar conversions between them. Compute types are f32
// (CPU), bf16 and f16 (GPU); fp8 e4m3 is a storage type only. Integer and bool types carry
// token ids, positions and masks. Stateless and thread-safe.
#ifndef Q3VL_CORE_DTYPE_H_
#define Q3VL_CORE_DTYPE_H_

#include <cstdint>
#include <cstring>
#include "absl/strings/string_view.h"

#include "absl/status/statusor.h"

namespace q3vl {

enum class DType : uint8_t { kF32, kBF16, kF16, kF8E4M3, kI64, kI32, kU8, kBool };

// Bytes per element.
size_t DTypeSize(DType dtype);
// Lower-case name: "f32", "bf16", ...
absl::string_view DTypeName(DType dtype);
// Parses a safetensors dtype string ("F32", "BF16", "F16", "F8_E4M3", "I64", ...).
absl::StatusOr<DType> DTypeFromSafetensors(absl::string_view name);
absl::string_view DTypeToSafetensors(DType dtype);

inline float BF16ToF32(uint16_t v) {
  const uint32_t bits = static_cast<uint32_t>(v) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

// Round to nearest even; NaN stays NaN.
inline uint16_t F32ToBF16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((bits >> 16) | 0x40);
  const uint32_t rounding = 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>((bits + rounding) >> 16);
}

float F16ToF32(uint16_t v);
uint16_t F32ToF16(float f);
float F8E4M3ToF32(uint8_t v);
// Round to nearest even, saturating at +-448 (e4m3fn has no infinities); NaN stays NaN.
uint8_t F32ToF8E4M3(float f);

// Widens `n` elements of `src` (of floating dtype `dtype`) to f32.
void ConvertToF32(DType dtype, const void* src, float* dst, size_t n);

}  // namespace q3vl

#endif  // Q3VL_CORE_DTYPE_H_
