// Host-side helpers for reductions: f32 accumulation of f32/bf16 buffers and the single final
// rounding, shared by the in-process and MPI communicators. Stateless, thread-safe.
#ifndef Q3VL_PARALLEL_HOST_REDUCE_H_
#define Q3VL_PARALLEL_HOST_REDUCE_H_

#include <cstddef>

#include "core/dtype.h"

namespace q3vl::parallel {

// True for the dtypes reductions accept: f32 and bf16.
bool IsReducible(DType dtype);
// acc[i] += src[i] (src of `dtype`, widened to f32), i < n.
void AccumulateF32(DType dtype, const void* src, float* acc, size_t n);
// dst[i] = src[i] converted to `dtype` (bf16: round to nearest even), i < n.
void StoreFromF32(DType dtype, const float* src, void* dst, size_t n);

}  // namespace q3vl::parallel

#endif  // Q3VL_PARALLEL_HOST_REDUCE_H_
