// Router: softmax + top-k + renormalisation, one thread per token (E experts are read k + 2
// times from L1; with E = 128 and k = 8 this is a few microseconds for thousands of tokens).
// The order of the softmax sum matches the CPU reference, so ties resolve the same way.
#include "core/cuda/kernels/common.cuh"

namespace q3vl::cuda {
namespace {

constexpr int kMaxTopK = 32;

template <typename T>
__global__ void RouterKernel(const T* logits, int64_t tokens, int64_t experts, int top_k, bool renormalize,
                             int32_t* expert_ids, float* weights) {
  const int64_t t = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (t >= tokens) return;
  const T* l = logits + t * experts;
  float max_logit = -INFINITY;
  for (int64_t e = 0; e < experts; ++e) max_logit = fmaxf(max_logit, ToF32(l[e]));
  float sum = 0.0f;
  for (int64_t e = 0; e < experts; ++e) sum += expf(ToF32(l[e]) - max_logit);
  int chosen[kMaxTopK];
  float prob[kMaxTopK];
  float top_sum = 0.0f;
  for (int j = 0; j < top_k; ++j) {
    int best = -1;
    float best_p = 0.0f;
    for (int64_t e = 0; e < experts; ++e) {
      bool taken = false;
      for (int i = 0; i < j; ++i) taken |= chosen[i] == e;
      if (taken) continue;
      const float p = expf(ToF32(l[e]) - max_logit) / sum;
      if (best < 0 || p > best_p) {  // strict: the lower index wins a tie
        best = static_cast<int>(e);
        best_p = p;
      }
    }
    chosen[j] = best;
    prob[j] = best_p;
    top_sum += best_p;
  }
  const float scale = renormalize ? 1.0f / top_sum : 1.0f;
  for (int j = 0; j < top_k; ++j) {
    expert_ids[t * top_k + j] = chosen[j];
    weights[t * top_k + j] = prob[j] * scale;
  }
}

}  // namespace

void Router(const RouterArgs& a, cudaStream_t stream) {
  if (a.tokens == 0) return;
  DispatchType(a.logits_type, [&](auto tag) {
    using T = decltype(tag);
    RouterKernel<T><<<static_cast<unsigned>((a.tokens + 127) / 128), 128, 0, stream>>>(
        static_cast<const T*>(a.logits), a.tokens, a.experts, a.top_k, a.renormalize, a.expert_ids, a.weights);
  });
}

}  // namespace q3vl::cuda
