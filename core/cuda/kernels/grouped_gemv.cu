// GroupedGemv: the expert GEMMs of a decode step, with the group offsets read on the device so
// that the host does not wait for the routing. Decode gives each expert a handful of rows, so
// the work is streaming the weights of the experts that have rows: memory-bound, on CUDA cores.
//
// Grid (column tiles of kBlockCols, groups). A block whose group is empty returns at once. Each
// warp takes kCols adjacent weight rows (output columns) and streams them once per kRows
// activation rows: lane l reads elements [8l, 8l + 8) of every 256-element stretch, as 16-byte
// loads marked streaming (weights are read once; activations, re-read by every warp, stay in L1).
// The partial dot products are summed across the warp with shuffles.
#include <type_traits>

#include "core/cuda/kernels/common.cuh"

namespace q3vl::cuda {
namespace {

constexpr int kWarps = 8;
constexpr int kThreads = kWarps * 32;
constexpr int kCols = 4;  // weight rows per warp
constexpr int kRows = 4;  // activation rows per pass
constexpr int kBlockCols = kWarps * kCols;

__device__ __forceinline__ float2 Pair(__nv_bfloat162 h) { return __bfloat1622float2(h); }
__device__ __forceinline__ float2 Pair(__half2 h) { return __half22float2(h); }

// Eight 16-bit values (pairs of type T2) packed in `u`, as f32.
template <typename T2>
__device__ __forceinline__ void Widen(const uint4& u, float v[8]) {
  const T2* h = reinterpret_cast<const T2*>(&u);
  for (int i = 0; i < 4; ++i) {
    const float2 f = Pair(h[i]);
    v[2 * i] = f.x;
    v[2 * i + 1] = f.y;
  }
}

// Eight elements at p (16-byte aligned) as f32; kStream: a load that is not kept in L1.
template <bool kStream, typename T>
__device__ __forceinline__ void Load8(const T* p, float v[8]) {
  if constexpr (sizeof(T) == 4) {
    const float4* q = reinterpret_cast<const float4*>(p);
    const float4 x = kStream ? __ldcs(q) : __ldg(q), y = kStream ? __ldcs(q + 1) : __ldg(q + 1);
    v[0] = x.x, v[1] = x.y, v[2] = x.z, v[3] = x.w, v[4] = y.x, v[5] = y.y, v[6] = y.z, v[7] = y.w;
  } else {
    using T2 = std::conditional_t<std::is_same_v<T, __half>, __half2, __nv_bfloat162>;
    const uint4* q = reinterpret_cast<const uint4*>(p);
    Widen<T2>(kStream ? __ldcs(q) : __ldg(q), v);
  }
}

__device__ __forceinline__ void Store(void* out, ElemType type, int64_t i, float v) {
  switch (type) {
    case ElemType::kF32: static_cast<float*>(out)[i] = v; return;
    case ElemType::kBF16: static_cast<__nv_bfloat16*>(out)[i] = __float2bfloat16_rn(v); return;
    case ElemType::kF16: static_cast<__half*>(out)[i] = __float2half_rn(v); return;
  }
}

template <typename TA, typename TW>
__global__ void __launch_bounds__(kThreads) GroupedGemvKernel(GroupedGemvArgs a) {
  const int64_t g = blockIdx.y;
  const int64_t begin = max(a.offsets[g], int64_t{0}), end = min(a.offsets[g + 1], a.rows);
  if (begin >= end) return;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int64_t n0 = blockIdx.x * int64_t{kBlockCols} + warp * kCols;
  if (n0 >= a.n) return;  // no block-wide barriers below
  const TW* w[kCols];
  for (int c = 0; c < kCols; ++c) {
    w[c] = static_cast<const TW*>(a.weights) + (g * a.n + min(n0 + c, a.n - 1)) * a.k;
  }
  const TA* x = static_cast<const TA*>(a.a);
  for (int64_t r0 = begin; r0 < end; r0 += kRows) {
    const int nr = static_cast<int>(min(end - r0, int64_t{kRows}));
    float acc[kCols][kRows] = {};
    for (int64_t kk = lane * 8; kk < a.k; kk += 256) {
      float wv[kCols][8];
#pragma unroll
      for (int c = 0; c < kCols; ++c) Load8<true>(w[c] + kk, wv[c]);
#pragma unroll
      for (int r = 0; r < kRows; ++r) {
        if (r < nr) {
          float xv[8];
          Load8<false>(x + (r0 + r) * a.lda + kk, xv);
#pragma unroll
          for (int c = 0; c < kCols; ++c) {
#pragma unroll
            for (int i = 0; i < 8; ++i) acc[c][r] = fmaf(wv[c][i], xv[i], acc[c][r]);
          }
        }
      }
    }
#pragma unroll
    for (int c = 0; c < kCols; ++c) {
#pragma unroll
      for (int r = 0; r < kRows; ++r) acc[c][r] = WarpSum(acc[c][r]);
    }
    // Lane c * kRows + r writes (row r, column c).
#pragma unroll
    for (int c = 0; c < kCols; ++c) {
#pragma unroll
      for (int r = 0; r < kRows; ++r) {
        if (lane == c * kRows + r && r < nr && n0 + c < a.n) Store(a.out, a.out_type, (r0 + r) * a.ldo + n0 + c, acc[c][r]);
      }
    }
  }
}

}  // namespace

void GroupedGemv(const GroupedGemvArgs& a, cudaStream_t stream) {
  if (a.groups == 0 || a.n == 0 || a.rows == 0) return;
  const dim3 grid(static_cast<unsigned>((a.n + kBlockCols - 1) / kBlockCols), static_cast<unsigned>(a.groups));
  DispatchType(a.a_type, [&](auto a_tag) {
    DispatchType(a.weight_type, [&](auto w_tag) {
      GroupedGemvKernel<decltype(a_tag), decltype(w_tag)><<<grid, kThreads, 0, stream>>>(a);
    });
  });
}

}  // namespace q3vl::cuda
