// LayerNorm: one block per row; mean, then the variance around it (two passes, f32).
#include "core/cuda/kernels/common.cuh"

namespace q3vl::cuda {
namespace {

template <typename T, typename P, typename O>
__global__ void LayerNormKernel(const T* x, const P* weight, const P* bias, O* out, int64_t width, float eps) {
  __shared__ float scratch[32];
  const T* row = x + blockIdx.x * width;
  O* orow = out + blockIdx.x * width;
  float sum = 0.0f;
  for (int64_t j = threadIdx.x; j < width; j += blockDim.x) sum += ToF32(row[j]);
  const float mean = BlockSum(sum, scratch) / static_cast<float>(width);
  float var = 0.0f;
  for (int64_t j = threadIdx.x; j < width; j += blockDim.x) {
    const float d = ToF32(row[j]) - mean;
    var += d * d;
  }
  const float inv = rsqrtf(BlockSum(var, scratch) / static_cast<float>(width) + eps);
  for (int64_t j = threadIdx.x; j < width; j += blockDim.x) {
    orow[j] = FromF32<O>((ToF32(row[j]) - mean) * inv * ToF32(weight[j]) + ToF32(bias[j]));
  }
}

}  // namespace

void LayerNorm(const LayerNormArgs& a, cudaStream_t stream) {
  if (a.rows == 0) return;
  const int threads = a.width >= 1024 ? 256 : 128;
  DispatchType(a.x_type, [&](auto x_tag) {
    DispatchType(a.param_type, [&](auto p_tag) {
      DispatchType(a.out_type, [&](auto o_tag) {
        using T = decltype(x_tag);
        using P = decltype(p_tag);
        using O = decltype(o_tag);
        LayerNormKernel<T, P, O><<<static_cast<unsigned>(a.rows), threads, 0, stream>>>(
            static_cast<const T*>(a.x), static_cast<const P*>(a.weight), static_cast<const P*>(a.bias),
            static_cast<O*>(a.out), a.width, a.eps);
      });
    });
  });
}

}  // namespace q3vl::cuda
