// GroupByExpert: a stable counting sort of routing pairs by local expert, in one block of 8
// warps (decode has ~100 pairs, a prefill chunk tens of thousands; both are a few microseconds
// next to the expert GEMMs). Warp w owns a contiguous segment of the pairs:
//   1. each warp counts its segment per expert (shared atomics into its own row);
//   2. an exclusive scan over (expert, warp) turns the counts into each warp's first row per
//      expert, and writes the offsets;
//   3. each warp walks its segment 32 pairs at a time in order; lanes with the same expert
//      find each other with __match_any_sync and take consecutive rows after the ones before.
// Rows come out ordered by expert, then pair index: the CPU's order, bit for bit.
#include "core/cuda/kernels/common.cuh"

namespace q3vl::cuda {
namespace {

constexpr int kWarps = 8;
constexpr int kThreads = kWarps * 32;

__global__ void __launch_bounds__(kThreads) GroupByExpertKernel(GroupByExpertArgs a) {
  extern __shared__ int cursor[];  // [kWarps][experts]: counts, then each warp's next row
  __shared__ int scan[kWarps];
  __shared__ int total;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int experts = a.experts;
  for (int i = threadIdx.x; i < kWarps * experts; i += kThreads) cursor[i] = 0;
  __syncthreads();

  const int64_t segment = (a.pairs + kWarps - 1) / kWarps;
  const int64_t begin = min(a.pairs, warp * segment), end = min(a.pairs, begin + segment);
  int* mine = cursor + warp * experts;
  for (int64_t i = begin + lane; i < end; i += 32) {
    const int64_t e = a.expert_ids[i] - a.first_expert;
    if (e >= 0 && e < experts) atomicAdd(&mine[e], 1);
  }
  __syncthreads();

  // Thread t scans experts [t * per, (t + 1) * per); a block scan of the threads' sums gives
  // each its starting row.
  const int per = (experts + kThreads - 1) / kThreads;
  const int e0 = min(experts, threadIdx.x * per), e1 = min(experts, e0 + per);
  int sum = 0;
  for (int e = e0; e < e1; ++e) {
    for (int w = 0; w < kWarps; ++w) sum += cursor[w * experts + e];
  }
  int inclusive = sum;
  for (int o = 1; o < 32; o <<= 1) {
    const int v = __shfl_up_sync(0xffffffffu, inclusive, o);
    if (lane >= o) inclusive += v;
  }
  if (lane == 31) scan[warp] = inclusive;
  __syncthreads();
  int row = inclusive - sum;
  for (int w = 0; w < warp; ++w) row += scan[w];
  for (int e = e0; e < e1; ++e) {
    a.offsets[e] = row;
    for (int w = 0; w < kWarps; ++w) {
      const int count = cursor[w * experts + e];
      cursor[w * experts + e] = row;
      row += count;
    }
  }
  if (threadIdx.x == kThreads - 1) {
    a.offsets[experts] = row;
    total = row;
  }
  __syncthreads();

  for (int64_t i = total + threadIdx.x; i < a.pairs; i += kThreads) {  // padding rows
    a.source_token[i] = 0;
    a.row_weight[i] = 0.0f;
  }
  for (int64_t base = begin; base < end; base += 32) {
    const int64_t i = base + lane;
    int e = -1;
    if (i < end) {
      const int64_t g = a.expert_ids[i] - a.first_expert;
      if (g >= 0 && g < experts) e = static_cast<int>(g);
    }
    const unsigned peers = __match_any_sync(0xffffffffu, e);
    const int leader = __ffs(peers) - 1;
    int first = 0;
    if (e >= 0 && lane == leader) first = mine[e];
    first = __shfl_sync(0xffffffffu, first, leader);
    __syncwarp();
    if (e >= 0 && lane == leader) mine[e] = first + __popc(peers);
    __syncwarp();
    if (e >= 0) {
      const int64_t r = first + __popc(peers & ((1u << lane) - 1));
      a.source_token[r] = i / a.top_k;
      a.row_weight[r] = a.weights[i];
    }
  }
}

}  // namespace

void GroupByExpert(const GroupByExpertArgs& a, cudaStream_t stream) {
  const size_t shared = sizeof(int) * kWarps * a.experts;
  GroupByExpertKernel<<<1, kThreads, shared, stream>>>(a);
}

}  // namespace q3vl::cuda
