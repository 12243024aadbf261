// TopK over rows of logits (sampling candidates), one block of 1024 threads per row.
//
// Values are compared through an order-preserving 32-bit key (sign-flipped float bits; -0 is
// folded into +0 so that the two compare equal, as floats do). k == 1 reduces
// (key, inverted column) pairs as 64-bit maxima: the largest value, the lowest column on ties.
// Otherwise:
//   1. radix select, 8 bits per pass from the top: a 256-bin histogram of the keys sharing the
//      prefix found so far, and warp 0 picks the bin holding the k-th largest; after 4 passes
//      the prefix is the k-th largest key T and `remaining` says how many keys equal to T are
//      among the top k;
//   2. one pass collects every key > T (any order) and the first `remaining` keys == T in
//      column order (a block-wide ordered count of the ties in each chunk);
//   3. a bitonic sort of the k candidates in shared memory by (value desc, column asc).
// The result equals the CPU backend's partial sort exactly.
#include <climits>

#include "core/cuda/kernels/common.cuh"

namespace q3vl::cuda {
namespace {

constexpr int kThreads = 1024;
constexpr int kWarps = kThreads / 32;

__device__ __forceinline__ uint32_t Key(float v) {
  const uint32_t u = __float_as_uint(v == 0.0f ? 0.0f : v);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

__global__ void __launch_bounds__(kThreads) ArgMaxKernel(TopKArgs a) {
  __shared__ unsigned long long best_of_warp[kWarps];
  const float* row = a.x + blockIdx.x * a.ld;
  unsigned long long best = 0;
  for (int64_t j = threadIdx.x; j < a.width; j += kThreads) {
    const unsigned long long packed =
        (static_cast<unsigned long long>(Key(row[j])) << 32) | (0xffffffffu - static_cast<uint32_t>(j));
    best = packed > best ? packed : best;
  }
  for (int o = 16; o > 0; o >>= 1) {
    const unsigned long long other = __shfl_xor_sync(0xffffffffu, best, o);
    best = other > best ? other : best;
  }
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  if (lane == 0) best_of_warp[warp] = best;
  __syncthreads();
  if (warp == 0) {
    best = best_of_warp[lane];
    for (int o = 16; o > 0; o >>= 1) {
      const unsigned long long other = __shfl_xor_sync(0xffffffffu, best, o);
      best = other > best ? other : best;
    }
    if (lane == 0) {
      const uint32_t column = 0xffffffffu - static_cast<uint32_t>(best & 0xffffffffu);
      a.values[blockIdx.x] = row[column];
      a.ids[blockIdx.x] = static_cast<int32_t>(column);
    }
  }
}

// (value, column) a goes before b: larger value, then lower column.
__device__ __forceinline__ bool Before(float va, int ia, float vb, int ib) {
  return va > vb || (va == vb && ia < ib);
}

__global__ void __launch_bounds__(kThreads) TopKKernel(TopKArgs a) {
  __shared__ unsigned hist[256];
  __shared__ uint32_t prefix_shared;
  __shared__ int remaining_shared;
  __shared__ int warp_ties[kWarps];
  __shared__ int gt_count;
  __shared__ float cand_value[kTopKMax];
  __shared__ int cand_id[kTopKMax];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const float* row = a.x + blockIdx.x * a.ld;

  // 1. Radix select of the k-th largest key.
  uint32_t prefix = 0, mask = 0;
  int remaining = a.k;
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (int i = threadIdx.x; i < 256; i += kThreads) hist[i] = 0;
    __syncthreads();
    for (int64_t j = threadIdx.x; j < a.width; j += kThreads) {
      const uint32_t key = Key(row[j]);
      if ((key & mask) == prefix) atomicAdd(&hist[(key >> shift) & 255u], 1u);
    }
    __syncthreads();
    if (warp == 0) {
      // Lane l holds bins [8l, 8l + 8); counts are taken from the top bin down.
      unsigned count[8], sum = 0;
      for (int i = 0; i < 8; ++i) sum += count[i] = hist[lane * 8 + i];
      unsigned suffix = sum;  // bins of this lane and all higher lanes
      for (int o = 1; o < 32; o <<= 1) {
        const unsigned v = __shfl_down_sync(0xffffffffu, suffix, o);
        if (lane + o < 32) suffix += v;
      }
      unsigned above = suffix - sum;
      if (above < static_cast<unsigned>(remaining) && static_cast<unsigned>(remaining) <= suffix) {
        for (int i = 7; i >= 0; --i) {
          if (above + count[i] >= static_cast<unsigned>(remaining)) {
            prefix_shared = prefix | (static_cast<uint32_t>(lane * 8 + i) << shift);
            remaining_shared = remaining - static_cast<int>(above);
            break;
          }
          above += count[i];
        }
      }
    }
    __syncthreads();
    prefix = prefix_shared;
    remaining = remaining_shared;
    mask |= 255u << shift;
  }
  const uint32_t threshold = prefix;
  const int greater = a.k - remaining;  // keys > threshold, all in the top k

  // 2. Collect: keys above the threshold anywhere in [0, greater); ties in column order after.
  if (threadIdx.x == 0) gt_count = 0;
  __syncthreads();
  int ties_before = 0;  // ties in earlier chunks (the same in every thread)
  for (int64_t base = 0; base < a.width; base += kThreads) {
    const int64_t j = base + threadIdx.x;
    const float v = j < a.width ? row[j] : 0.0f;
    const uint32_t key = j < a.width ? Key(v) : 0u;
    const bool tie = j < a.width && key == threshold;
    if (j < a.width && key > threshold) {
      const int slot = atomicAdd(&gt_count, 1);
      cand_value[slot] = v;
      cand_id[slot] = static_cast<int>(j);
    }
    const unsigned ballot = __ballot_sync(0xffffffffu, tie);
    if (lane == 0) warp_ties[warp] = __popc(ballot);
    __syncthreads();
    int rank = ties_before + __popc(ballot & ((1u << lane) - 1));
    int chunk_ties = 0;
    for (int w = 0; w < kWarps; ++w) {
      if (w < warp) rank += warp_ties[w];
      chunk_ties += warp_ties[w];
    }
    if (tie && rank < remaining) {
      cand_value[greater + rank] = v;
      cand_id[greater + rank] = static_cast<int>(j);
    }
    ties_before += chunk_ties;
    __syncthreads();  // warp_ties is rewritten by the next chunk
  }

  // 3. Bitonic sort of the k candidates (padded to a power of two with sentinels).
  int size = 1;
  while (size < a.k) size <<= 1;
  for (int i = a.k + threadIdx.x; i < size; i += kThreads) {
    cand_value[i] = -INFINITY;
    cand_id[i] = INT_MAX;
  }
  __syncthreads();
  for (int span = 2; span <= size; span <<= 1) {
    for (int stride = span >> 1; stride > 0; stride >>= 1) {
      for (int i = threadIdx.x; i < size; i += kThreads) {
        const int j = i ^ stride;
        if (j <= i) continue;
        const bool ascending = (i & span) == 0;  // this run ends up in "before" order
        const bool swap = ascending ? Before(cand_value[j], cand_id[j], cand_value[i], cand_id[i])
                                    : Before(cand_value[i], cand_id[i], cand_value[j], cand_id[j]);
        if (swap) {
          const float tv = cand_value[i];
          cand_value[i] = cand_value[j];
          cand_value[j] = tv;
          const int ti = cand_id[i];
          cand_id[i] = cand_id[j];
          cand_id[j] = ti;
        }
      }
      __syncthreads();
    }
  }
  for (int i = threadIdx.x; i < a.k; i += kThreads) {
    a.values[blockIdx.x * a.k + i] = cand_value[i];
    a.ids[blockIdx.x * a.k + i] = cand_id[i];
  }
}

}  // namespace

void TopK(const TopKArgs& a, cudaStream_t stream) {
  if (a.rows == 0) return;
  const unsigned grid = static_cast<unsigned>(a.rows);
  if (a.k == 1) {
    ArgMaxKernel<<<grid, kThreads, 0, stream>>>(a);
  } else {
    TopKKernel<<<grid, kThreads, 0, stream>>>(a);
  }
}

}  // namespace q3vl::cuda
