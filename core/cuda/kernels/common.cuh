// Shared device helpers of the kernels: element loads and stores in f32, block reductions and
// the dispatch from ElemType to a C++ type. Included by the .cu files only.
#ifndef Q3VL_CORE_CUDA_KERNELS_COMMON_CUH_
#define Q3VL_CORE_CUDA_KERNELS_COMMON_CUH_

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "core/cuda/kernels/kernels.h"

namespace q3vl::cuda {

__device__ __forceinline__ float ToF32(float v) { return v; }
__device__ __forceinline__ float ToF32(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float ToF32(__half v) { return __half2float(v); }

template <typename T>
__device__ __forceinline__ T FromF32(float v);
template <>
__device__ __forceinline__ float FromF32<float>(float v) { return v; }
template <>
__device__ __forceinline__ __nv_bfloat16 FromF32<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }
template <>
__device__ __forceinline__ __half FromF32<__half>(float v) { return __float2half_rn(v); }

// Calls f(T{}) with T the C++ type of `type`.
template <typename F>
void DispatchType(ElemType type, F&& f) {
  switch (type) {
    case ElemType::kF32: f(float{}); return;
    case ElemType::kBF16: f(__nv_bfloat16{}); return;
    case ElemType::kF16: f(__half{}); return;
  }
}

// Calls f(T{}, KV{}) with T the C++ type of `type` and KV that of `kv_type`, which is `type`
// itself or bf16 (the pairs attention supports; anything else is refused by the backend).
template <typename F>
void DispatchAttentionTypes(ElemType type, ElemType kv_type, F&& f) {
  DispatchType(type, [&](auto tag) {
    using T = decltype(tag);
    if (kv_type == type) {
      f(T{}, T{});
    } else {
      f(T{}, __nv_bfloat16{});
    }
  });
}

__device__ __forceinline__ float WarpSum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float WarpMax(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Sum (or max) over the block; every thread gets the result. blockDim.x is a multiple of 32
// and at most 1024; `scratch` holds 32 floats. Ends with a barrier, so scratch can be reused.
template <bool kMax>
__device__ float BlockReduce(float v, float* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  v = kMax ? WarpMax(v) : WarpSum(v);
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  float r = lane < warps ? scratch[lane] : (kMax ? -INFINITY : 0.0f);
  r = kMax ? WarpMax(r) : WarpSum(r);
  __syncthreads();
  return r;
}
__device__ __forceinline__ float BlockSum(float v, float* scratch) { return BlockReduce<false>(v, scratch); }
__device__ __forceinline__ float BlockMax(float v, float* scratch) { return BlockReduce<true>(v, scratch); }

// Row of key j of sequence s (first packed row k0) in an attention's k and v: packed, or
// through the block tables when paged.
__device__ __forceinline__ int64_t KeyRow(const AttentionArgs& a, int s, int64_t k0, int64_t j) {
  if (a.page_size == 0) return k0 + j;
  return static_cast<int64_t>(a.block_tables[s * a.max_pages + j / a.page_size]) * a.page_size + j % a.page_size;
}

inline unsigned GridFor(int64_t n, int threads) {
  const int64_t blocks = (n + threads - 1) / threads;
  return static_cast<unsigned>(blocks < 65535 * 32 ? (blocks > 0 ? blocks : 1) : 65535 * 32);
}

}  // namespace q3vl::cuda

#endif  // Q3VL_CORE_CUDA_KERNELS_COMMON_CUH_
