// ScatterAddRows: one block per source row; accumulation uses atomic adds (f32, or bf16 on
// sm_80+), so repeated ids sum in an unspecified order (f32 rounding differs from the CPU's
// sequential order by a few ulp). A bad id skips the row and raises kErrorScatterId.
#include "core/cuda/kernels/common.cuh"

namespace q3vl::cuda {
namespace {

__device__ __forceinline__ void AtomicAddTo(float* p, float v) { atomicAdd(p, v); }
__device__ __forceinline__ void AtomicAddTo(__nv_bfloat16* p, float v) { atomicAdd(p, __float2bfloat16_rn(v)); }
__device__ __forceinline__ void AtomicAddTo(__half* p, float v) { atomicAdd(p, __float2half_rn(v)); }

template <typename S, typename O>
__global__ void ScatterKernel(const S* src, const void* ids, bool ids_are_i64, const float* scale, O* out,
                              int64_t out_rows, int64_t width, bool accumulate, int* error) {
  const int64_t i = blockIdx.x;
  const int64_t id = ids_are_i64 ? static_cast<const int64_t*>(ids)[i] : static_cast<const int32_t*>(ids)[i];
  if (id < 0 || id >= out_rows) {
    if (threadIdx.x == 0) atomicOr(error, kErrorScatterId);
    return;
  }
  const float s = scale != nullptr ? scale[i] : 1.0f;
  const S* row = src + i * width;
  O* orow = out + id * width;
  for (int64_t j = threadIdx.x; j < width; j += blockDim.x) {
    const float v = s * ToF32(row[j]);
    if (accumulate) {
      AtomicAddTo(orow + j, v);
    } else {
      orow[j] = FromF32<O>(v);
    }
  }
}

}  // namespace

void ScatterAddRows(const ScatterAddRowsArgs& a, cudaStream_t stream) {
  if (a.n == 0) return;
  DispatchType(a.src_type, [&](auto s_tag) {
    DispatchType(a.out_type, [&](auto o_tag) {
      using S = decltype(s_tag);
      using O = decltype(o_tag);
      ScatterKernel<S, O><<<static_cast<unsigned>(a.n), 256, 0, stream>>>(
          static_cast<const S*>(a.src), a.ids, a.ids_are_i64, a.scale, static_cast<O*>(a.out), a.out_rows,
          a.width, a.accumulate, a.error);
    });
  });
}

}  // namespace q3vl::cuda
