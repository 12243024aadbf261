// Vectorised float exp, tanh and erf for the CPU backend's element-wise loops, from glibc's
// vector math library (libmvec; SSE, AVX2 and AVX-512 variants, at most 4 ulp). glibc's <math.h>
// declares these SIMD variants only under -ffast-math; declaring them here lets `#pragma omp
// simd` loops call them without fast-math anywhere else. Q3VL_ISA_CLONES on a function compiles
// it for AVX-512, AVX2 and the baseline, picked at load time, so the widest variant is used.
// Without libmvec (CMake did not find it) or with another compiler, the loops stay scalar.
// Internal to core/cpu.
#ifndef Q3VL_CORE_CPU_VECTOR_MATH_H_
#define Q3VL_CORE_CPU_VECTOR_MATH_H_

#include <cmath>

#if defined(Q3VL_HAVE_LIBMVEC) && defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
extern "C" {
float expf(float) noexcept __attribute__((simd("notinbranch")));
float tanhf(float) noexcept __attribute__((simd("notinbranch")));
float erff(float) noexcept __attribute__((simd("notinbranch")));
}
#define Q3VL_ISA_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define Q3VL_ISA_CLONES
#endif

#endif  // Q3VL_CORE_CPU_VECTOR_MATH_H_
