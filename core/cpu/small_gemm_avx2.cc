// SmallGemm compiled for avx2 (compile flags set in core/CMakeLists.txt).
#define Q3VL_SG_NAME SmallGemmAvx2
#define Q3VL_SG_VEC_BYTES 32
#define Q3VL_SG_MR 2
#include "core/cpu/small_gemm_kernels.inc"
