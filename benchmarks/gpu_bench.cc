// gpu_bench: the CUDA backend at Qwen3-VL-235B-A22B's real shapes on one GPU, printed as one
// JSON object on stdout (progress on stderr). Measures the device (copy bandwidth, cuBLASLt
// bf16 large-square peak), then with random bf16 weights:
//   - the MoE block at decode (route, GroupByExpert, grouped GEMMs on device offsets, combine)
//     for all 128 experts and for the EP8 shard's 16, batch 1/16/64/256: weight bytes of the
//     experts hit per second against the copy bandwidth;
//   - the same block at a 4096-token prefill: FLOP/s against the large-square peak;
//   - decode attention over a paged bf16 cache at 8K/64K/256K context (64/4 heads and the TP8
//     shard's 8/1, head_dim 128): KV bytes per second against the copy bandwidth.
// Times are CUDA-event means over repeated runs after a warm-up. Only with -DQ3VL_CUDA=ON.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <iostream>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "core/cuda/cuda_backend.h"
#include "core/cuda/cuda_status.h"
#include "moe/moe.h"
#include "nlohmann/json.hpp"

namespace q3vl::bench {
namespace {

using Json = nlohmann::json;
using cuda::CudaBackend;

// Mean seconds of one run of `f` on the backend's stream (after one untimed warm-up run).
template <typename F>
double TimeRuns(CudaBackend& backend, int runs, F&& f) {
  f();
  backend.Synchronize();
  cudaEvent_t start, stop;
  Q3VL_CUDA_CHECK(cudaEventCreate(&start));
  Q3VL_CUDA_CHECK(cudaEventCreate(&stop));
  Q3VL_CUDA_CHECK(cudaEventRecord(start, backend.stream()));
  for (int i = 0; i < runs; ++i) f();
  Q3VL_CUDA_CHECK(cudaEventRecord(stop, backend.stream()));
  Q3VL_CUDA_CHECK(cudaEventSynchronize(stop));
  float ms = 0;
  Q3VL_CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  backend.Synchronize();  // surfaces device errors raised by the runs
  return ms / 1e3 / runs;
}

// A device tensor of `dtype` with normal(0, scale) values: a 16M-element random host block,
// tiled over the tensor (the values only need to be realistic, not independent).
Tensor RandomDevice(CudaBackend& backend, DType dtype, Shape shape, float scale, uint32_t seed) {
  Tensor t = backend.Allocate(dtype, std::move(shape));
  const int64_t n = t.numel();
  const int64_t block = std::min<int64_t>(n, int64_t{1} << 24);
  if (block == 0) return t;
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, scale);
  Tensor host = Tensor::Empty(dtype, {block});
  for (int64_t i = 0; i < block; ++i) {
    const float v = dist(rng);
    if (dtype == DType::kBF16) {
      host.data<uint16_t>()[i] = F32ToBF16(v);
    } else {
      Q3VL_CHECK(dtype == DType::kF32) << DTypeName(dtype);
      host.data<float>()[i] = v;
    }
  }
  Tensor flat = t.Reshape({n});
  for (int64_t begin = 0; begin < n; begin += block) {
    const int64_t len = std::min(block, n - begin);
    Tensor dst = flat.Slice(0, begin, begin + len);
    backend.Copy(host.Slice(0, 0, len), dst);
  }
  return t;
}

struct DeviceFigures {
  double copy_bytes_per_s = 0;  // read + write
  double gemm_peak_flop_per_s = 0;
};

DeviceFigures MeasureDevice(CudaBackend& backend) {
  DeviceFigures d;
  const int64_t bytes = int64_t{2} << 30;
  Tensor src = backend.Allocate(DType::kU8, {bytes}), dst = backend.Allocate(DType::kU8, {bytes});
  const double copy_s = TimeRuns(backend, 10, [&] {
    Q3VL_CUDA_CHECK(cudaMemcpyAsync(dst.raw_data(), src.raw_data(), bytes, cudaMemcpyDeviceToDevice, backend.stream()));
  });
  d.copy_bytes_per_s = 2.0 * static_cast<double>(bytes) / copy_s;
  const int64_t n = 8192;
  const Tensor a = RandomDevice(backend, DType::kBF16, {n, n}, 1.0f, 1);
  const Tensor b = RandomDevice(backend, DType::kBF16, {n, n}, 1.0f, 2);
  Tensor out = backend.Allocate(DType::kBF16, {n, n});
  const double gemm_s = TimeRuns(backend, 10, [&] { backend.Gemm({.a = a, .b = b, .out = out}); });
  d.gemm_peak_flop_per_s = 2.0 * n * n * static_cast<double>(n) / gemm_s;
  return d;
}

constexpr int64_t kHidden = 4096, kInter = 1536, kTopK = 8;

// The MoE block (router included) over `tokens` random rows with `experts` local experts.
Json BenchMoe(CudaBackend& backend, const DeviceFigures& dev, int64_t experts, int64_t tokens) {
  moe::ExpertWeights w{.router = RandomDevice(backend, DType::kBF16, {experts, kHidden}, 0.02f, 3),
                       .gate_up = RandomDevice(backend, DType::kBF16, {experts, 2 * kInter, kHidden}, 0.02f, 4),
                       .down = RandomDevice(backend, DType::kBF16, {experts, kHidden, kInter}, 0.02f, 5)};
  const Tensor x = RandomDevice(backend, DType::kF32, {tokens, kHidden}, 1.0f, 6);
  Tensor out = backend.Allocate(DType::kF32, {tokens, kHidden});
  moe::LocalDispatcher dispatcher;
  moe::Routing routing;
  const int runs = tokens >= 1024 ? 5 : 20;
  const double s = TimeRuns(backend, runs, [&] {
    moe::MoeForward(backend, dispatcher, w,
                    {.x = x, .out = out, .top_k = static_cast<int>(std::min(kTopK, experts)), .routing_out = &routing});
  });
  const Tensor ids = Download(backend, routing.expert_ids);
  std::set<int32_t> hit(ids.data<int32_t>(), ids.data<int32_t>() + ids.numel());
  const double expert_bytes = 2.0 * (2 * kInter * kHidden + kHidden * kInter);
  const double weight_bytes = static_cast<double>(hit.size()) * expert_bytes + 2.0 * experts * kHidden;
  const double flops = 2.0 * tokens * (experts * kHidden + std::min(kTopK, experts) * 3 * kInter * kHidden);
  return {{"experts", experts},
          {"tokens", tokens},
          {"experts_hit", hit.size()},
          {"seconds", s},
          {"weight_bytes", weight_bytes},
          {"weight_bytes_per_s", weight_bytes / s},
          {"weight_fraction_of_copy_bandwidth", weight_bytes / s / dev.copy_bytes_per_s},
          {"flop_per_s", flops / s},
          {"flop_fraction_of_gemm_peak", flops / s / dev.gemm_peak_flop_per_s}};
}

// One decode query per sequence over `context` keys in a paged bf16 cache.
Json BenchDecodeAttention(CudaBackend& backend, const DeviceFigures& dev, int64_t heads, int64_t kv_heads,
                          int64_t context, int64_t batch) {
  constexpr int64_t kHeadDim = 128, kPage = 16;
  const int64_t pages_each = (context + kPage - 1) / kPage, pages = batch * pages_each;
  const Tensor k = RandomDevice(backend, DType::kBF16, {pages * kPage, kv_heads, kHeadDim}, 1.0f, 7);
  const Tensor v = RandomDevice(backend, DType::kBF16, {pages * kPage, kv_heads, kHeadDim}, 1.0f, 8);
  const Tensor q = RandomDevice(backend, DType::kBF16, {batch, heads, kHeadDim}, 1.0f, 9);
  Tensor out = backend.Allocate(DType::kBF16, {batch, heads, kHeadDim});
  // Pages in a shuffled order, as a long-running cache hands them out.
  std::vector<int32_t> order(pages);
  for (int64_t i = 0; i < pages; ++i) order[i] = static_cast<int32_t>(i);
  std::shuffle(order.begin(), order.end(), std::mt19937(10));
  Tensor tables = Tensor::Empty(DType::kI32, {batch, pages_each});
  std::copy(order.begin(), order.end(), tables.data<int32_t>());
  const Tensor d_tables = backend.ToDevice(tables);
  std::vector<int64_t> q_starts(batch + 1), k_starts(batch + 1);
  for (int64_t s = 0; s <= batch; ++s) q_starts[s] = s, k_starts[s] = s * context;
  const double s = TimeRuns(backend, 20, [&] {
    backend.Attention({.q = q, .k = k, .v = v, .q_starts = q_starts, .k_starts = k_starts, .causal = true,
                       .scale = 0.08838834764f, .out = out, .block_tables = d_tables, .page_size = kPage});
  });
  const double kv_bytes = 2.0 * batch * context * kv_heads * kHeadDim * 2;
  return {{"heads", heads},
          {"kv_heads", kv_heads},
          {"context", context},
          {"batch", batch},
          {"seconds", s},
          {"kv_bytes_per_s", kv_bytes / s},
          {"kv_fraction_of_copy_bandwidth", kv_bytes / s / dev.copy_bytes_per_s}};
}

int Main() {
  if (cuda::DeviceCount() == 0) {
    std::cerr << "gpu_bench: no CUDA device visible\n";
    return 1;
  }
  auto created = CudaBackend::Create();
  if (!created.ok()) {
    std::cerr << "gpu_bench: " << created.status() << "\n";
    return 1;
  }
  CudaBackend& backend = **created;
  Json result;
  result["device"] = backend.properties().name;
  std::cerr << "gpu_bench: measuring " << backend.properties().name << "\n";
  const DeviceFigures dev = MeasureDevice(backend);
  result["copy_bandwidth_bytes_per_s"] = dev.copy_bytes_per_s;
  result["bf16_gemm_peak_flop_per_s"] = dev.gemm_peak_flop_per_s;
  for (const int64_t experts : {int64_t{128}, int64_t{16}}) {
    for (const int64_t tokens : {int64_t{1}, int64_t{16}, int64_t{64}, int64_t{256}, int64_t{4096}}) {
      std::cerr << "gpu_bench: moe " << experts << " experts, " << tokens << " tokens\n";
      result["moe"].push_back(BenchMoe(backend, dev, experts, tokens));
    }
  }
  for (const auto& [heads, kv_heads] : {std::pair<int64_t, int64_t>{64, 4}, {8, 1}}) {
    for (const int64_t context : {int64_t{8192}, int64_t{65536}, int64_t{262144}}) {
      std::cerr << "gpu_bench: decode attention " << heads << "/" << kv_heads << " heads, context " << context << "\n";
      result["decode_attention"].push_back(BenchDecodeAttention(backend, dev, heads, kv_heads, context, 1));
    }
  }
  std::cout << result.dump(2) << std::endl;
  return 0;
}

}  // namespace
}  // namespace q3vl::bench

int main() { return q3vl::bench::Main(); }
