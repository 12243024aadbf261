// Add: out = a + b elementwise, in f32.
#include "core/cuda/kernels/common.cuh"

namespace q3vl::cuda {
namespace {

template <typename T>
__global__ void AddKernel(const T* a, const T* b, T* out, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n; i += int64_t{gridDim.x} * blockDim.x) {
    out[i] = FromF32<T>(ToF32(a[i]) + ToF32(b[i]));
  }
}

}  // namespace

void Add(const AddArgs& a, cudaStream_t stream) {
  if (a.n == 0) return;
  DispatchType(a.type, [&](auto tag) {
    using T = decltype(tag);
    AddKernel<T><<<GridFor(a.n, 256), 256, 0, stream>>>(static_cast<const T*>(a.a), static_cast<const T*>(a.b),
                                                         static_cast<T*>(a.out), a.n);
  });
}

}  // namespace q3vl::cuda
