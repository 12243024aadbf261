#include "parallel/host_reduce.h"

#include <cstdint>
#include <cstring>

#include "core/check.h"

namespace q3vl::parallel {

bool IsReducible(DType dtype) { return dtype == DType::kF32 || dtype == DType::kBF16; }

void AccumulateF32(DType dtype, const void* src, float* acc, size_t n) {
  Q3VL_CHECK(IsReducible(dtype));
  if (dtype == DType::kF32) {
    const float* s = static_cast<const float*>(src);
    for (size_t i = 0; i < n; ++i) acc[i] += s[i];
    return;
  }
  const uint16_t* s = static_cast<const uint16_t*>(src);
  for (size_t i = 0; i < n; ++i) acc[i] += BF16ToF32(s[i]);
}

void StoreFromF32(DType dtype, const float* src, void* dst, size_t n) {
  Q3VL_CHECK(IsReducible(dtype));
  if (dtype == DType::kF32) {
    if (n > 0 && src != dst) std::memmove(dst, src, n * sizeof(float));
    return;
  }
  uint16_t* d = static_cast<uint16_t*>(dst);
  for (size_t i = 0; i < n; ++i) d[i] = F32ToBF16(src[i]);
}

}  // namespace q3vl::parallel
