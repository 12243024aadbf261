// LtGemm: row-major GEMMs out[M, N] = a[M, K] · op(b) + bias + beta · out through cuBLASLt, with
// f32 accumulation (CUBLAS_COMPUTE_32F: f32 inputs stay exact f32, no TF32; bf16/f16 inputs
// accumulate in f32). A row-major matrix is the transpose of a column-major one, so the call is
// issued as outᵀ = op(b)ᵀ · aᵀ. The algorithm comes from cuBLASLt's heuristic and is cached per
// shape, leading dimensions, types, bias and pointer alignment. One instance per stream; not
// thread-safe.
#ifndef Q3VL_CORE_CUDA_LT_GEMM_H_
#define Q3VL_CORE_CUDA_LT_GEMM_H_

#include <cublasLt.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <memory>
#include <tuple>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"

namespace q3vl::cuda {

struct LtGemmArgs {
  const void* a;        // [M, K], rows lda elements apart
  int64_t lda;
  const void* b;        // [N, K] when b_transposed (nn.Linear weight), else [K, N]
  int64_t ldb;
  bool b_transposed = true;
  const void* bias;     // optional [N], of out_type
  void* out;            // [M, N], rows ldo elements apart
  int64_t ldo;
  cudaDataType_t ab_type;   // a and b
  cudaDataType_t out_type;  // out and bias
  int64_t m, n, k;
  float beta = 0.0f;
};

class LtGemm {
 public:
  // `workspace` (device, `workspace_bytes`) must outlive the instance.
  static absl::StatusOr<std::unique_ptr<LtGemm>> Create(cudaStream_t stream, void* workspace,
                                                        size_t workspace_bytes);
  ~LtGemm();
  LtGemm(const LtGemm&) = delete;
  LtGemm& operator=(const LtGemm&) = delete;

  // Enqueues the GEMM. CHECK-fails when cuBLASLt has no algorithm for it or the launch fails.
  void Run(const LtGemmArgs& args);
  size_t cached_plans() const { return plans_.size(); }

 private:
  using Key = std::tuple<int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int, int, bool, bool, int>;
  struct Plan {
    cublasLtMatmulDesc_t op = nullptr;
    cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
    cublasLtMatmulAlgo_t algo;
  };
  LtGemm(cublasLtHandle_t handle, cudaStream_t stream, void* workspace, size_t workspace_bytes)
      : handle_(handle), stream_(stream), workspace_(workspace), workspace_bytes_(workspace_bytes) {}
  Plan& PlanFor(const LtGemmArgs& args);

  cublasLtHandle_t handle_;
  cudaStream_t stream_;
  void* workspace_;
  size_t workspace_bytes_;
  absl::flat_hash_map<Key, Plan> plans_;
};

}  // namespace q3vl::cuda

#endif  // Q3VL_CORE_CUDA_LT_GEMM_H_
