// SmallGemm compiled for baseline (compile flags set in core/CMakeLists.txt).
#define Q3VL_SG_NAME SmallGemmBaseline
#define Q3VL_SG_VEC_BYTES 16
#define Q3VL_SG_MR 2
#include "core/cpu/small_gemm_kernels.inc"
