#include "core/cuda/lt_gemm.h"

#include <algorithm>

#include "core/cuda/cuda_status.h"

namespace q3vl::cuda {
namespace {

// Largest power of two <= 256 that divides the address (cuBLASLt's alignment preference).
int Alignment(const void* p) {
  const auto v = reinterpret_cast<uintptr_t>(p);
  int a = 256;
  while (a > 1 && v % a != 0) a /= 2;
  return a;
}

}  // namespace

absl::StatusOr<std::unique_ptr<LtGemm>> LtGemm::Create(cudaStream_t stream, void* workspace,
                                                       size_t workspace_bytes) {
  cublasLtHandle_t handle = nullptr;
  if (cublasStatus_t s = cublasLtCreate(&handle); s != CUBLAS_STATUS_SUCCESS) return CublasStatus(s, "cublasLtCreate");
  return std::unique_ptr<LtGemm>(new LtGemm(handle, stream, workspace, workspace_bytes));
}

LtGemm::~LtGemm() {
  for (auto& [key, plan] : plans_) {
    cublasLtMatrixLayoutDestroy(plan.a);
    cublasLtMatrixLayoutDestroy(plan.b);
    cublasLtMatrixLayoutDestroy(plan.c);
    cublasLtMatmulDescDestroy(plan.op);
  }
  cublasLtDestroy(handle_);
}

LtGemm::Plan& LtGemm::PlanFor(const LtGemmArgs& g) {
  // The alignment that matters is the weakest of the four pointers.
  int align = std::min({Alignment(g.a), Alignment(g.b), Alignment(g.out)});
  if (g.bias != nullptr) align = std::min(align, Alignment(g.bias));
  const Key key{g.m, g.n, g.k, g.lda, g.ldb, g.ldo, static_cast<int>(g.ab_type), static_cast<int>(g.out_type),
                g.b_transposed, g.bias != nullptr, align};
  auto it = plans_.find(key);
  if (it != plans_.end()) return it->second;

  Plan plan;
  Q3VL_CUBLAS_CHECK(cublasLtMatmulDescCreate(&plan.op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  // Lt's "A" is our b (N x K after op), Lt's "B" is our a (K x M), D is N x M, all column-major.
  const cublasOperation_t trans_a = g.b_transposed ? CUBLAS_OP_T : CUBLAS_OP_N;
  const cublasOperation_t trans_b = CUBLAS_OP_N;
  Q3VL_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(plan.op, CUBLASLT_MATMUL_DESC_TRANSA, &trans_a, sizeof trans_a));
  Q3VL_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(plan.op, CUBLASLT_MATMUL_DESC_TRANSB, &trans_b, sizeof trans_b));
  if (g.bias != nullptr) {
    const cublasLtEpilogue_t epilogue = CUBLASLT_EPILOGUE_BIAS;
    Q3VL_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(plan.op, CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue, sizeof epilogue));
    const cudaDataType_t bias_type = g.out_type;
    Q3VL_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(plan.op, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bias_type,
                                                     sizeof bias_type));
  }
  if (g.b_transposed) {
    Q3VL_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&plan.a, g.ab_type, g.k, g.n, g.ldb));
  } else {
    Q3VL_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&plan.a, g.ab_type, g.n, g.k, g.ldb));
  }
  Q3VL_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&plan.b, g.ab_type, g.k, g.m, g.lda));
  Q3VL_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&plan.c, g.out_type, g.n, g.m, g.ldo));

  cublasLtMatmulPreference_t pref = nullptr;
  Q3VL_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
  const uint64_t workspace = workspace_bytes_;
  Q3VL_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &workspace,
                                                         sizeof workspace));
  const uint32_t align_bytes = static_cast<uint32_t>(align);
  for (auto attr : {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
                    CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES}) {
    Q3VL_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, attr, &align_bytes, sizeof align_bytes));
  }
  cublasLtMatmulHeuristicResult_t result{};
  int found = 0;
  const cublasStatus_t status = cublasLtMatmulAlgoGetHeuristic(handle_, plan.op, plan.a, plan.b, plan.c, plan.c, pref,
                                                               1, &result, &found);
  cublasLtMatmulPreferenceDestroy(pref);
  Q3VL_CHECK(status == CUBLAS_STATUS_SUCCESS && found > 0)
      << "cuBLASLt has no algorithm for GEMM m=" << g.m << " n=" << g.n << " k=" << g.k << " (lda " << g.lda
      << ", ldb " << g.ldb << ", ldo " << g.ldo << ", types " << g.ab_type << "->" << g.out_type << ", alignment "
      << align << "): " << CublasStatus(status, "cublasLtMatmulAlgoGetHeuristic");
  plan.algo = result.algo;
  return plans_.emplace(key, plan).first->second;
}

void LtGemm::Run(const LtGemmArgs& g) {
  if (g.m == 0 || g.n == 0) return;
  Plan& plan = PlanFor(g);
  if (g.bias != nullptr) {
    Q3VL_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(plan.op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &g.bias,
                                                     sizeof g.bias));
  }
  const float alpha = 1.0f, beta = g.beta;
  Q3VL_CUBLAS_CHECK(cublasLtMatmul(handle_, plan.op, &alpha, g.b, plan.a, g.a, plan.b, &beta, g.out, plan.c, g.out,
                                   plan.c, &plan.algo, workspace_, workspace_bytes_, stream_));
}

}  // namespace q3vl::cuda
