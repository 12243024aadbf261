// Convert: elementwise dtype conversion (f32 <-> bf16 <-> f16), rounding to nearest even.
#include "core/cuda/kernels/common.cuh"

namespace q3vl::cuda {
namespace {

template <typename In, typename Out>
__global__ void ConvertKernel(const In* in, Out* out, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n; i += int64_t{gridDim.x} * blockDim.x) {
    out[i] = FromF32<Out>(ToF32(in[i]));
  }
}

}  // namespace

void Convert(const ConvertArgs& a, cudaStream_t stream) {
  if (a.n == 0) return;
  DispatchType(a.in_type, [&](auto in_tag) {
    DispatchType(a.out_type, [&](auto out_tag) {
      using In = decltype(in_tag);
      using Out = decltype(out_tag);
      ConvertKernel<In, Out><<<GridFor(a.n, 256), 256, 0, stream>>>(static_cast<const In*>(a.in),
                                                                     static_cast<Out*>(a.out), a.n);
    });
  });
}

}  // namespace q3vl::cuda
