#include "benchmarks/bench_machine.h"

#include <cblas.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <memory>
#include <thread>

#include "core/cpu/bf16_gemm.h"
#include "core/cpu/cpu_backend.h"

namespace q3vl::bench {
namespace {

uint64_t SplitMix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

}  // namespace

double SecondsSince(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// Fills the contiguous f32 tensor `t` uniformly in [center - half_width, center + half_width).
// Element i depends only on (seed, i), so the fill runs in parallel and is reproducible.
void FillUniform(const Tensor& t, float center, float half_width, uint64_t seed) {
  float* p = t.data<float>();
  const int64_t n = t.numel();
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    const uint64_t bits = SplitMix64(seed * 0xD1B54A32D192ED03ull + static_cast<uint64_t>(i));
    const float u = static_cast<float>(bits >> 40) * (1.0f / 16777216.0f);  // [0, 1)
    p[i] = center + half_width * (2.0f * u - 1.0f);
  }
}

// Best-of-`reps` memcpy bandwidth of `bytes` from src to dst split over `threads` threads,
// counting read + write (2 x bytes).
double CopyBandwidth(const char* src, char* dst, int64_t bytes, int reps, int threads) {
  const int64_t chunk = bytes / threads;
  double best = 1e30;
  for (int r = 0; r < reps; ++r) {
    const Clock::time_point start = Clock::now();
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int i = 0; i < threads; ++i) std::memcpy(dst + i * chunk, src + i * chunk, chunk);
    best = std::min(best, SecondsSince(start));
  }
  return 2.0 * static_cast<double>(chunk * threads) / best;
}

// Best-of-`reps` FLOP/s of a square n x n x n cblas_sgemm (after one untimed warm-up).
double SgemmPeak(int64_t n, int reps) {
  Tensor a = Tensor::Empty(DType::kF32, {n, n});  // [n, n]
  Tensor b = Tensor::Empty(DType::kF32, {n, n});  // [n, n]
  Tensor c = Tensor::Empty(DType::kF32, {n, n});  // [n, n]
  FillUniform(a, 0.0f, 1.0f, 1);
  FillUniform(b, 0.0f, 1.0f, 2);
  double best = 1e30;
  for (int r = 0; r <= reps; ++r) {
    const Clock::time_point start = Clock::now();
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, a.data<float>(), n,
                b.data<float>(), n, 0.0f, c.data<float>(), n);
    if (r > 0) best = std::min(best, SecondsSince(start));
  }
  return 2.0 * n * n * static_cast<double>(n) / best;
}

// Busy (non-idle) share of all CPU time over `window_s`, from /proc/stat; -1 when unreadable.
// Sampled before measuring: other work on the machine skews every figure, most of all OpenMP
// barriers when the cores are oversubscribed.
double BusyCpuFraction(double window_s) {
  auto sample = [](uint64_t* busy, uint64_t* total) {
    std::ifstream in("/proc/stat");
    std::string label;
    uint64_t v[8] = {};
    if (!(in >> label >> v[0] >> v[1] >> v[2] >> v[3] >> v[4] >> v[5] >> v[6] >> v[7])) return false;
    *total = v[0] + v[1] + v[2] + v[3] + v[4] + v[5] + v[6] + v[7];
    *busy = *total - v[3] - v[4];  // minus idle and iowait
    return true;
  };
  uint64_t busy0, total0, busy1, total1;
  if (!sample(&busy0, &total0)) return -1;
  std::this_thread::sleep_for(std::chrono::duration<double>(window_s));
  if (!sample(&busy1, &total1) || total1 == total0) return -1;
  return static_cast<double>(busy1 - busy0) / static_cast<double>(total1 - total0);
}

Machine MeasureMachine(bool quick) {
  Machine m{.threads = CpuThreads(), .other_busy_fraction = BusyCpuFraction(0.5),
            .copy_bytes = int64_t{1} << 30, .sgemm_size = quick ? 2048 : 4096};
  if (m.other_busy_fraction > 0.1) {
    std::cerr << "q3vl_bench: warning: " << static_cast<int>(100 * m.other_busy_fraction)
              << "% of the CPU was busy with other work at start; the figures will be skewed\n";
  }
  {
    std::unique_ptr<char[]> src(new char[m.copy_bytes]);
    std::unique_ptr<char[]> dst(new char[m.copy_bytes]);
    std::memset(src.get(), 1, m.copy_bytes);  // fault the pages in before timing
    std::memset(dst.get(), 0, m.copy_bytes);
    const int reps = quick ? 3 : 6;
    m.copy_bytes_per_s = CopyBandwidth(src.get(), dst.get(), m.copy_bytes, reps, m.threads);
    m.copy_1thread_bytes_per_s = CopyBandwidth(src.get(), dst.get(), m.copy_bytes, reps, 1);
  }
  m.sgemm_flop_per_s = SgemmPeak(m.sgemm_size, 3);
  return m;
}

nlohmann::json MachineJson(const Machine& m) {
  return {{"cpu_threads", m.threads},
          {"other_cpu_busy_fraction_at_start", m.other_busy_fraction},
          {"copy_buffer_bytes", m.copy_bytes},
          {"copy_bandwidth_bytes_per_s", m.copy_bytes_per_s},
          {"copy_bandwidth_1thread_bytes_per_s", m.copy_1thread_bytes_per_s},
          {"sgemm_size", m.sgemm_size},
          {"sgemm_peak_flop_per_s", m.sgemm_flop_per_s}};
}

// The processor's model name, from /proc/cpuinfo ("" when unreadable).
std::string CpuModelName() {
  std::ifstream in("/proc/cpuinfo");
  for (std::string line; std::getline(in, line);) {
    if (line.rfind("model name", 0) == 0) return line.substr(line.find(':') + 2);
  }
  return "";
}

// Best-of-`reps` FLOP/s of a square n x n x n bf16 GEMM through the bf16 compute path.
double Bf16GemmPeak(int64_t n, int reps) {
  Tensor a = Tensor::Empty(DType::kF32, {n, n});
  Tensor w = Tensor::Empty(DType::kF32, {n, n});
  Tensor w16 = Tensor::Empty(DType::kBF16, {n, n});
  Tensor c = Tensor::Empty(DType::kF32, {n, n});
  FillUniform(a, 0.0f, 1.0f, 1);
  FillUniform(w, 0.0f, 1.0f, 2);
  cpu::RoundToBf16(w.data<float>(), n, n, n, w16.data<uint16_t>());
  double best = 1e30;
  for (int r = 0; r <= reps; ++r) {
    const Clock::time_point start = Clock::now();
    cpu::Bf16Gemm({.a = a.data<float>(), .lda = n, .b = w16.data<uint16_t>(), .out = c.data<float>(), .ldo = n,
                   .m = n, .n = n, .k = n});
    if (r > 0) best = std::min(best, SecondsSince(start));
  }
  return 2.0 * n * n * static_cast<double>(n) / best;
}

}  // namespace q3vl::bench
