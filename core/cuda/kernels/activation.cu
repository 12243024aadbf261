// Activation: SiLU(gate) * up over [gate | up] rows, and the tanh and erf GELUs, in f32.
#include "core/cuda/kernels/common.cuh"

namespace q3vl::cuda {
namespace {

template <typename T, typename O>
__global__ void SiluMulKernel(const T* x, O* out, int64_t rows, int64_t width) {
  const int64_t total = rows * width;
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < total; i += int64_t{gridDim.x} * blockDim.x) {
    const int64_t r = i / width, j = i % width;
    const float g = ToF32(x[r * 2 * width + j]), u = ToF32(x[r * 2 * width + width + j]);
    out[i] = FromF32<O>(g / (1.0f + expf(-g)) * u);
  }
}

template <typename T, typename O, bool kTanh>
__global__ void GeluKernel(const T* x, O* out, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n; i += int64_t{gridDim.x} * blockDim.x) {
    const float u = ToF32(x[i]);
    const float y = kTanh ? 0.5f * u * (1.0f + tanhf(0.7978845608028654f * (u + 0.044715f * u * u * u)))
                          : 0.5f * u * (1.0f + erff(u * 0.7071067811865476f));
    out[i] = FromF32<O>(y);
  }
}

}  // namespace

void Activation(const ActivationArgs& a, cudaStream_t stream) {
  const int64_t n = a.rows * a.width;
  if (n == 0) return;
  DispatchType(a.x_type, [&](auto x_tag) {
    DispatchType(a.out_type, [&](auto o_tag) {
      using T = decltype(x_tag);
      using O = decltype(o_tag);
      const T* x = static_cast<const T*>(a.x);
      O* out = static_cast<O*>(a.out);
      switch (a.op) {
        case ActivationOp::kSiluMul:
          SiluMulKernel<T, O><<<GridFor(n, 256), 256, 0, stream>>>(x, out, a.rows, a.width);
          return;
        case ActivationOp::kGeluTanh:
          GeluKernel<T, O, true><<<GridFor(n, 256), 256, 0, stream>>>(x, out, n);
          return;
        case ActivationOp::kGeluErf:
          GeluKernel<T, O, false><<<GridFor(n, 256), 256, 0, stream>>>(x, out, n);
          return;
      }
    });
  });
}

}  // namespace q3vl::cuda
