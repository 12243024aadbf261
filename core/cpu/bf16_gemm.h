// bf16 compute for the CPU backend's large GEMMs: bf16 inputs (the activations rounded to
// nearest even, the weights as stored), f32 accumulation and output, as the GPU path computes.
// oneDNN's matmul does the work and picks the processor's bf16 instructions at run time
// (AVX512_BF16 dot products, AMX tiles); the f32 path (bf16 weights widened exactly, OpenBLAS)
// stays the reference. Thread-compatible: called from the thread that runs the model.
#ifndef Q3VL_CORE_CPU_BF16_GEMM_H_
#define Q3VL_CORE_CPU_BF16_GEMM_H_

#include <cstdint>
#include <string>

namespace q3vl::cpu {

// What oneDNN finds on this processor: the ISA it dispatches to ("avx512_core_bf16",
// "avx512_core_amx", "avx2", ...) and whether that ISA multiplies bf16 natively.
struct Bf16Support {
  std::string isa;
  bool native = false;
};
const Bf16Support& CpuBf16Support();

struct Bf16GemmParams {
  const float* a = nullptr;     // [m, k] f32 activations, rows lda apart
  int64_t lda = 0;
  const uint16_t* b = nullptr;  // [n, k] bf16 weights (nn.Linear rows), contiguous
  float beta = 0.0f;            // out = beta * out + a @ bᵀ (beta 0: out's contents ignored)
  float* out = nullptr;         // [m, n] f32, rows ldo apart
  int64_t ldo = 0;
  int64_t m = 0, n = 0, k = 0;
};
// REQUIRES: CpuBf16Support().native.
void Bf16Gemm(const Bf16GemmParams& p);

// Rounds f32 to bf16, nearest even (NaN stays NaN), in parallel over rows.
void RoundToBf16(const float* src, int64_t ld, int64_t rows, int64_t cols, uint16_t* dst);

}  // namespace q3vl::cpu

#endif  // Q3VL_CORE_CPU_BF16_GEMM_H_
