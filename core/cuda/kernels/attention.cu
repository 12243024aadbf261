// Attention: the general reference kernel of the CUDA backend. One block of 128 threads per
// (query row, head): the query (pre-scaled) sits in shared memory, keys come in tiles of 128
// (one score per thread), and an online softmax rescales the running output, which each thread
// keeps for up to 4 of the head dimensions. Correct for any mix of sequence lengths, causal or
// not, GQA, empty sequences, packed or paged keys; it reads each KV head once per query head, so
// it is the prefill and general path, not the decode one (attention_decode.cu). Keys and values
// may be bf16 under f32 queries (a bf16 KV cache).
#include "core/cuda/kernels/common.cuh"

namespace q3vl::cuda {
namespace {

constexpr int kTile = 128;  // keys per tile = threads per block
constexpr int kMaxDimsPerThread = 4;

template <typename T, typename KV>
__global__ void __launch_bounds__(kTile) AttentionKernel(AttentionArgs a) {
  extern __shared__ float shared[];
  float* sq = shared;                // [head_dim] scaled query
  float* sp = shared + a.head_dim;   // [kTile] tile probabilities
  __shared__ float scratch[32];
  const int64_t row = blockIdx.x;
  const int h = blockIdx.y, hd = a.head_dim;
  // The sequence owning this row: the last s with q_starts[s] <= row (skips empty sequences).
  int lo = 0, hi = a.num_seqs - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (a.q_starts[mid] <= row) lo = mid; else hi = mid - 1;
  }
  const int64_t q0 = a.q_starts[lo], nq = a.q_starts[lo + 1] - q0;
  const int64_t k0 = a.k_starts[lo], nk = a.k_starts[lo + 1] - k0;
  int64_t visible = a.causal ? nk - nq + (row - q0) + 1 : nk;
  visible = visible < 0 ? 0 : (visible > nk ? nk : visible);
  const int kvh = h / (a.heads / a.kv_heads);
  const T* q = static_cast<const T*>(a.q) + (row * a.heads + h) * hd;
  const KV* k = static_cast<const KV*>(a.k);
  const KV* v = static_cast<const KV*>(a.v);
  for (int d = threadIdx.x; d < hd; d += blockDim.x) sq[d] = ToF32(q[d]) * a.scale;
  __syncthreads();
  float m = -INFINITY, l = 0.0f;
  float acc[kMaxDimsPerThread] = {0.0f, 0.0f, 0.0f, 0.0f};
  for (int64_t t0 = 0; t0 < visible; t0 += kTile) {
    const int64_t j = t0 + threadIdx.x;
    float s = -INFINITY;
    if (j < visible) {
      const KV* kr = k + (KeyRow(a, lo, k0, j) * a.kv_heads + kvh) * hd;
      float dot = 0.0f;
      for (int d = 0; d < hd; ++d) dot += sq[d] * ToF32(kr[d]);
      s = dot;
    }
    const float m_new = fmaxf(m, BlockMax(s, scratch));
    const float p = j < visible ? expf(s - m_new) : 0.0f;
    sp[threadIdx.x] = p;
    const float tile_sum = BlockSum(p, scratch);  // its barrier also publishes sp
    const float correction = expf(m - m_new);
    l = l * correction + tile_sum;
    const int64_t n = visible - t0 < kTile ? visible - t0 : kTile;
    for (int c = 0; c < kMaxDimsPerThread; ++c) {
      const int d = threadIdx.x + c * kTile;
      if (d >= hd) break;
      float out = acc[c] * correction;
      for (int64_t jj = 0; jj < n; ++jj) {
        out += sp[jj] * ToF32(v[(KeyRow(a, lo, k0, t0 + jj) * a.kv_heads + kvh) * hd + d]);
      }
      acc[c] = out;
    }
    m = m_new;
    __syncthreads();  // sp is rewritten by the next tile
  }
  T* o = static_cast<T*>(a.out) + (row * a.heads + h) * hd;
  for (int c = 0; c < kMaxDimsPerThread; ++c) {
    const int d = threadIdx.x + c * kTile;
    if (d >= hd) break;
    o[d] = FromF32<T>(visible > 0 ? acc[c] / l : 0.0f);
  }
}

}  // namespace

void Attention(const AttentionArgs& a, cudaStream_t stream) {
  if (a.total_q == 0 || a.heads == 0) return;
  const dim3 grid(static_cast<unsigned>(a.total_q), static_cast<unsigned>(a.heads));
  const size_t shared = (a.head_dim + kTile) * sizeof(float);
  DispatchAttentionTypes(a.type, a.kv_type, [&](auto tag, auto kv_tag) {
    using T = decltype(tag);
    using KV = decltype(kv_tag);
    AttentionKernel<T, KV><<<grid, kTile, shared, stream>>>(a);
  });
}

}  // namespace q3vl::cuda
