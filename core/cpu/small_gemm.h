// Decode-shaped GEMMs (a few rows of activations against a large weight): OpenBLAS packs the
// whole weight for these and streams it at a quarter of memory bandwidth, so rows <= 16 go to
// these register-tiled kernels instead, which read each weight element once. Internal to the CPU
// backend; compiled per ISA (AVX-512, AVX2, baseline) and picked at run time. Thread-safe.
#ifndef Q3VL_CORE_CPU_SMALL_GEMM_H_
#define Q3VL_CORE_CPU_SMALL_GEMM_H_

#include <cstdint>

namespace q3vl::cpu {

// Rows of `a` up to which Gemm and GroupedGemm use SmallGemm.
inline constexpr int64_t kSmallGemmMaxRows = 16;

// out = beta * out + a @ op(b): a [m, k] (row stride lda), b [k, n] or, when b_transposed,
// [n, k] (row stride ldb), out [m, n] (row stride ldo). beta == 0 ignores out's contents.
struct SmallGemmArgs {
  const float* a = nullptr;
  int64_t lda = 0;
  const float* b = nullptr;
  const uint16_t* b_bf16 = nullptr;  // instead of b: bf16 weights, widened in registers (exact);
                                     // b_transposed only
  int64_t ldb = 0;
  bool b_transposed = false;
  float beta = 0.0f;
  float* out = nullptr;
  int64_t ldo = 0;
  int64_t m = 0, n = 0, k = 0;
};

void SmallGemm(const SmallGemmArgs& args);

// The ISA SmallGemm dispatches to on this machine: "avx512", "avx2" or "baseline".
const char* SmallGemmIsa();

// One entry point per compiled ISA (small_gemm_kernels.inc instantiated in each).
void SmallGemmAvx512(const SmallGemmArgs& args);
void SmallGemmAvx2(const SmallGemmArgs& args);
void SmallGemmBaseline(const SmallGemmArgs& args);

}  // namespace q3vl::cpu

#endif  // Q3VL_CORE_CPU_SMALL_GEMM_H_
