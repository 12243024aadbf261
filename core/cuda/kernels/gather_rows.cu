// GatherRows: one block per output row copies (and converts) its table row; a bad id zeroes the
// row and raises kErrorGatherId.
#include "core/cuda/kernels/common.cuh"

namespace q3vl::cuda {
namespace {

template <typename T, typename O>
__global__ void GatherRowsKernel(const T* table, int64_t row_stride, int64_t table_rows, int64_t width,
                                 const void* ids, bool ids_are_i64, O* out, int* error) {
  const int64_t i = blockIdx.x;
  const int64_t id = ids_are_i64 ? static_cast<const int64_t*>(ids)[i] : static_cast<const int32_t*>(ids)[i];
  O* orow = out + i * width;
  if (id < 0 || id >= table_rows) {
    for (int64_t j = threadIdx.x; j < width; j += blockDim.x) orow[j] = FromF32<O>(0.0f);
    if (threadIdx.x == 0) atomicOr(error, kErrorGatherId);
    return;
  }
  const T* row = table + id * row_stride;
  for (int64_t j = threadIdx.x; j < width; j += blockDim.x) orow[j] = FromF32<O>(ToF32(row[j]));
}

}  // namespace

void GatherRows(const GatherRowsArgs& a, cudaStream_t stream) {
  if (a.n == 0) return;
  DispatchType(a.table_type, [&](auto t_tag) {
    DispatchType(a.out_type, [&](auto o_tag) {
      using T = decltype(t_tag);
      using O = decltype(o_tag);
      GatherRowsKernel<T, O><<<static_cast<unsigned>(a.n), 256, 0, stream>>>(
          static_cast<const T*>(a.table), a.row_stride, a.table_rows, a.width, a.ids, a.ids_are_i64,
          static_cast<O*>(a.out), a.error);
    });
  });
}

}  // namespace q3vl::cuda
