// Decode attention (one query per sequence), split-K flash-decoding over packed or paged keys.
// Pass 1: a block of kWarps warps per (sequence, KV head, split) reads its split's keys and
// values once for every query head of the GQA group: each warp takes every kWarps-th key, each
// lane holds kDims of the head dimension, scores come from a warp reduction, and every warp keeps
// an online softmax (max, sum, weighted values) per head. The warps are merged in shared memory
// and the block writes one partial (max, sum, unnormalised output) per head and split.
// Pass 2: one block per (sequence, head) rescales and sums the splits. Long contexts (256K) get
// many splits, so the whole GPU streams the cache even at batch 1. Keys and values may be bf16
// under f32 queries (a bf16 KV cache).
#include "core/cuda/kernels/common.cuh"

namespace q3vl::cuda {
namespace {

constexpr int kWarps = 4;

// kDims = head_dim / 32 dimensions per lane; kGroup = query heads per KV head.
template <typename T, typename KV, int kDims, int kGroup>
__global__ void __launch_bounds__(kWarps * 32) DecodePartialKernel(DecodeAttentionArgs a) {
  const int s = blockIdx.x, kvh = blockIdx.y, split = blockIdx.z;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int64_t nk = a.attn.k_starts[s + 1] - a.attn.k_starts[s];
  const int64_t begin = split * a.split_keys;
  const int64_t end = begin + a.split_keys < nk ? begin + a.split_keys : nk;
  const int hd = kDims * 32;
  // This lane's dimensions of every head's query, pre-scaled.
  float q[kGroup][kDims];
  for (int g = 0; g < kGroup; ++g) {
    const T* qh = static_cast<const T*>(a.attn.q) + (static_cast<int64_t>(s) * a.attn.heads + kvh * kGroup + g) * hd;
    for (int d = 0; d < kDims; ++d) q[g][d] = ToF32(qh[lane * kDims + d]) * a.attn.scale;
  }
  float m[kGroup], l[kGroup], acc[kGroup][kDims];
  for (int g = 0; g < kGroup; ++g) {
    m[g] = -INFINITY;
    l[g] = 0.0f;
    for (int d = 0; d < kDims; ++d) acc[g][d] = 0.0f;
  }
  const KV* k = static_cast<const KV*>(a.attn.k);
  const KV* v = static_cast<const KV*>(a.attn.v);
  for (int64_t j = begin + warp; j < end; j += kWarps) {
    const int64_t row = (KeyRow(a.attn, s, a.attn.k_starts[s], j) * a.attn.kv_heads + kvh) * hd + lane * kDims;
    float kr[kDims], vr[kDims];
    for (int d = 0; d < kDims; ++d) kr[d] = ToF32(k[row + d]), vr[d] = ToF32(v[row + d]);
    for (int g = 0; g < kGroup; ++g) {
      float dot = 0.0f;
      for (int d = 0; d < kDims; ++d) dot += q[g][d] * kr[d];
      dot = WarpSum(dot);  // every lane has the score
      const float m_new = fmaxf(m[g], dot);
      const float correction = __expf(m[g] - m_new), p = __expf(dot - m_new);
      l[g] = l[g] * correction + p;
      for (int d = 0; d < kDims; ++d) acc[g][d] = acc[g][d] * correction + p * vr[d];
      m[g] = m_new;
    }
  }
  // Merge the warps: each writes its state, warp 0 combines.
  __shared__ float s_m[kWarps][kGroup], s_l[kWarps][kGroup];
  extern __shared__ float s_acc[];  // [kWarps][kGroup][hd]
  for (int g = 0; g < kGroup; ++g) {
    if (lane == 0) s_m[warp][g] = m[g], s_l[warp][g] = l[g];
    for (int d = 0; d < kDims; ++d) s_acc[(warp * kGroup + g) * hd + lane * kDims + d] = acc[g][d];
  }
  __syncthreads();
  if (warp != 0) return;
  const int64_t out_base = (static_cast<int64_t>(s) * a.attn.heads + kvh * kGroup) * a.splits + split;
  for (int g = 0; g < kGroup; ++g) {
    float mx = -INFINITY;
    for (int w = 0; w < kWarps; ++w) mx = fmaxf(mx, s_m[w][g]);
    float sum = 0.0f, o[kDims];
    for (int d = 0; d < kDims; ++d) o[d] = 0.0f;
    for (int w = 0; w < kWarps; ++w) {
      const float f = s_m[w][g] == -INFINITY ? 0.0f : __expf(s_m[w][g] - mx);
      sum += s_l[w][g] * f;
      for (int d = 0; d < kDims; ++d) o[d] += s_acc[(w * kGroup + g) * hd + lane * kDims + d] * f;
    }
    const int64_t at = out_base + static_cast<int64_t>(g) * a.splits;  // [seq, head, split]
    if (lane == 0) a.partial_max[at] = mx, a.partial_sum[at] = sum;
    for (int d = 0; d < kDims; ++d) a.partial_out[at * hd + lane * kDims + d] = o[d];
  }
}

// out[s, h] = Σ_split e^(m_split - M) o_split / Σ_split e^(m_split - M) l_split.
template <typename T>
__global__ void DecodeCombineKernel(DecodeAttentionArgs a) {
  const int64_t sh = blockIdx.x;  // seq * heads + head
  const int hd = a.attn.head_dim;
  const int64_t base = sh * a.splits;
  float mx = -INFINITY;
  for (int i = 0; i < a.splits; ++i) mx = fmaxf(mx, a.partial_max[base + i]);
  float sum = 0.0f;
  for (int i = 0; i < a.splits; ++i) {
    if (a.partial_max[base + i] != -INFINITY) sum += a.partial_sum[base + i] * __expf(a.partial_max[base + i] - mx);
  }
  T* o = static_cast<T*>(a.attn.out) + sh * hd;
  for (int d = threadIdx.x; d < hd; d += blockDim.x) {
    float acc = 0.0f;
    for (int i = 0; i < a.splits; ++i) {
      if (a.partial_max[base + i] != -INFINITY) {
        acc += a.partial_out[(base + i) * hd + d] * __expf(a.partial_max[base + i] - mx);
      }
    }
    o[d] = FromF32<T>(sum > 0.0f ? acc / sum : 0.0f);
  }
}

template <typename T, typename KV, int kDims, int kGroup>
void Launch(const DecodeAttentionArgs& a, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>(a.attn.num_seqs), static_cast<unsigned>(a.attn.kv_heads),
                  static_cast<unsigned>(a.splits));
  const size_t shared = static_cast<size_t>(kWarps) * kGroup * kDims * 32 * sizeof(float);
  if (shared > 48 * 1024) {
    cudaFuncSetAttribute(DecodePartialKernel<T, KV, kDims, kGroup>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                         static_cast<int>(shared));
  }
  DecodePartialKernel<T, KV, kDims, kGroup><<<grid, kWarps * 32, shared, stream>>>(a);
  DecodeCombineKernel<T><<<static_cast<unsigned>(a.attn.num_seqs) * a.attn.heads, 128, 0, stream>>>(a);
}

template <typename T, typename KV, int kDims>
bool DispatchGroup(const DecodeAttentionArgs& a, cudaStream_t stream) {
  switch (a.attn.heads / a.attn.kv_heads) {
    case 1: Launch<T, KV, kDims, 1>(a, stream); return true;
    case 2: Launch<T, KV, kDims, 2>(a, stream); return true;
    case 4: Launch<T, KV, kDims, 4>(a, stream); return true;
    case 8: Launch<T, KV, kDims, 8>(a, stream); return true;
    case 16: Launch<T, KV, kDims, 16>(a, stream); return true;
    default: return false;
  }
}

}  // namespace

bool DecodeAttentionSupported(int head_dim, int heads, int kv_heads) {
  if (kv_heads <= 0 || heads % kv_heads != 0) return false;
  const int group = heads / kv_heads;
  return (head_dim == 64 || head_dim == 128) && (group == 1 || group == 2 || group == 4 || group == 8 || group == 16);
}

void DecodeAttention(const DecodeAttentionArgs& a, cudaStream_t stream) {
  if (a.attn.num_seqs == 0 || a.attn.heads == 0) return;
  DispatchAttentionTypes(a.attn.type, a.attn.kv_type, [&](auto tag, auto kv_tag) {
    using T = decltype(tag);
    using KV = decltype(kv_tag);
    if (a.attn.head_dim == 64) {
      DispatchGroup<T, KV, 2>(a, stream);
    } else {
      DispatchGroup<T, KV, 4>(a, stream);
    }
  });
}

}  // namespace q3vl::cuda
