// RmsNorm: one block per row; the sum of squares in f32, then the scaled row. With a residual
// the add is fused in: the first pass forms x + residual, stores it back into x (rounded to x's
// type) and sums its squares; the second pass rereads what the same thread stored.
#include "core/cuda/kernels/common.cuh"

namespace q3vl::cuda {
namespace {

template <typename T, typename W, typename O>
__global__ void RmsNormKernel(T* x, const T* residual, const W* weight, O* out, int64_t width, float eps) {
  __shared__ float scratch[32];
  T* row = x + blockIdx.x * width;
  O* orow = out + blockIdx.x * width;
  float sum_sq = 0.0f;
  if (residual != nullptr) {
    const T* rrow = residual + blockIdx.x * width;
    for (int64_t j = threadIdx.x; j < width; j += blockDim.x) {
      const T sum = FromF32<T>(ToF32(row[j]) + ToF32(rrow[j]));
      row[j] = sum;
      const float v = ToF32(sum);
      sum_sq += v * v;
    }
  } else {
    for (int64_t j = threadIdx.x; j < width; j += blockDim.x) {
      const float v = ToF32(row[j]);
      sum_sq += v * v;
    }
  }
  const float inv = rsqrtf(BlockSum(sum_sq, scratch) / static_cast<float>(width) + eps);
  for (int64_t j = threadIdx.x; j < width; j += blockDim.x) {
    orow[j] = FromF32<O>(ToF32(row[j]) * inv * ToF32(weight[j]));
  }
}

}  // namespace

void RmsNorm(const RmsNormArgs& a, cudaStream_t stream) {
  if (a.rows == 0) return;
  const int threads = a.width >= 1024 ? 256 : 128;
  DispatchType(a.x_type, [&](auto x_tag) {
    DispatchType(a.weight_type, [&](auto w_tag) {
      DispatchType(a.out_type, [&](auto o_tag) {
        using T = decltype(x_tag);
        using W = decltype(w_tag);
        using O = decltype(o_tag);
        RmsNormKernel<T, W, O><<<static_cast<unsigned>(a.rows), threads, 0, stream>>>(
            static_cast<T*>(a.x), static_cast<const T*>(a.residual), static_cast<const W*>(a.weight),
            static_cast<O*>(a.out), a.width, a.eps);
      });
    });
  });
}

}  // namespace q3vl::cuda
