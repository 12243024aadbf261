// SmallGemm compiled for avx512 (compile flags set in core/CMakeLists.txt).
#define Q3VL_SG_NAME SmallGemmAvx512
#define Q3VL_SG_VEC_BYTES 64
#define Q3VL_SG_MR 6
#include "core/cpu/small_gemm_kernels.inc"
