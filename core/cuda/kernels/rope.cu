// Rope: rotate-half rotary in place; one thread per (token, head, j < dim/2) pair, so the two
// halves it reads are the two it writes.
#include "core/cuda/kernels/common.cuh"

namespace q3vl::cuda {
namespace {

template <typename T, typename C>
__global__ void RopeKernel(T* x, const C* cos, const C* sin, int64_t tokens, int64_t heads, int64_t dim) {
  const int64_t half = dim / 2, total = tokens * heads * half;
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < total; i += int64_t{gridDim.x} * blockDim.x) {
    const int64_t j = i % half, th = i / half, t = th / heads;
    T* v = x + th * dim;
    const C* c = cos + t * dim;
    const C* s = sin + t * dim;
    const float a = ToF32(v[j]), b = ToF32(v[j + half]);
    v[j] = FromF32<T>(a * ToF32(c[j]) - b * ToF32(s[j]));
    v[j + half] = FromF32<T>(b * ToF32(c[j + half]) + a * ToF32(s[j + half]));
  }
}

}  // namespace

void Rope(const RopeArgs& a, cudaStream_t stream) {
  const int64_t total = a.tokens * a.heads * (a.dim / 2);
  if (total == 0) return;
  DispatchType(a.x_type, [&](auto x_tag) {
    DispatchType(a.table_type, [&](auto c_tag) {
      using T = decltype(x_tag);
      using C = decltype(c_tag);
      RopeKernel<T, C><<<GridFor(total, 256), 256, 0, stream>>>(
          static_cast<T*>(a.x), static_cast<const C*>(a.cos), static_cast<const C*>(a.sin), a.tokens, a.heads, a.dim);
    });
  });
}

}  // namespace q3vl::cuda
