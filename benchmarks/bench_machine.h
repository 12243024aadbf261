// What q3vl_bench measures about the machine before any model (compute threads, copy
// bandwidth, the SGEMM and bf16 GEMM peaks, the share of the CPU busy with other work, the
// processor's model), and the timing and fill helpers those measurements share with it.
#ifndef Q3VL_BENCHMARKS_BENCH_MACHINE_H_
#define Q3VL_BENCHMARKS_BENCH_MACHINE_H_

#include <chrono>
#include <cstdint>
#include <string>

#include "core/tensor.h"
#include "nlohmann/json.hpp"

namespace q3vl::bench {

using Clock = std::chrono::steady_clock;
double SecondsSince(Clock::time_point start);

// Fills the contiguous f32 tensor `t` uniformly in [center - half_width, center + half_width).
// Element i depends only on (seed, i), so the fill runs in parallel and is reproducible.
void FillUniform(const Tensor& t, float center, float half_width, uint64_t seed);

struct Machine {
  int threads = 0;
  double other_busy_fraction = -1;      // CPU share busy (not us) at start; -1: unknown
  int64_t copy_bytes = 0;
  double copy_bytes_per_s = 0;          // all threads, read + write
  double copy_1thread_bytes_per_s = 0;  // one thread, read + write
  int64_t sgemm_size = 0;
  double sgemm_flop_per_s = 0;
};

// Best-of-`reps` memcpy bandwidth of `bytes` from src to dst split over `threads` threads,
// counting read + write (2 x bytes).
double CopyBandwidth(const char* src, char* dst, int64_t bytes, int reps, int threads);
// Best-of-`reps` FLOP/s of a square n x n x n cblas_sgemm (after one untimed warm-up).
double SgemmPeak(int64_t n, int reps);
// Busy (non-idle) share of all CPU time over `window_s`, from /proc/stat; -1 when unreadable.
double BusyCpuFraction(double window_s);
Machine MeasureMachine(bool quick);
nlohmann::json MachineJson(const Machine& m);

// The processor's model name, from /proc/cpuinfo ("" when unreadable).
std::string CpuModelName();
// Best-of-`reps` FLOP/s of a square n x n x n bf16 GEMM through the CPU backend's bf16 path.
// REQUIRES: cpu::CpuBf16Support().native.
double Bf16GemmPeak(int64_t n, int reps);

}  // namespace q3vl::bench

#endif  // Q3VL_BENCHMARKS_BENCH_MACHINE_H_
