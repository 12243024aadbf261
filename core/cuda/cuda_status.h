// CUDA and cuBLASLt errors as absl::Status (setup paths return them) and as CHECK failures on
// the hot path (Backend ops return void: a failed launch or a sticky device error is a bug or a
// dead device, and the rank must stop with the reason).
#ifndef Q3VL_CORE_CUDA_CUDA_STATUS_H_
#define Q3VL_CORE_CUDA_CUDA_STATUS_H_

#include <cublasLt.h>
#include <cuda_runtime.h>

#include "absl/status/status.h"
#include "core/check.h"

namespace q3vl::cuda {

absl::Status CudaStatus(cudaError_t error, const char* what);
absl::Status CublasStatus(cublasStatus_t status, const char* what);

}  // namespace q3vl::cuda

#define Q3VL_CUDA_RETURN_IF_ERROR(expr)                                          \
  do {                                                                           \
    const cudaError_t q3vl_cuda_error_ = (expr);                                 \
    if (q3vl_cuda_error_ != cudaSuccess) return ::q3vl::cuda::CudaStatus(q3vl_cuda_error_, #expr); \
  } while (0)

#define Q3VL_CUDA_CHECK(expr)                                                    \
  do {                                                                           \
    const cudaError_t q3vl_cuda_error_ = (expr);                                 \
    Q3VL_CHECK(q3vl_cuda_error_ == cudaSuccess) << ::q3vl::cuda::CudaStatus(q3vl_cuda_error_, #expr); \
  } while (0)

#define Q3VL_CUBLAS_CHECK(expr)                                                  \
  do {                                                                           \
    const cublasStatus_t q3vl_cublas_status_ = (expr);                           \
    Q3VL_CHECK(q3vl_cublas_status_ == CUBLAS_STATUS_SUCCESS)                      \
        << ::q3vl::cuda::CublasStatus(q3vl_cublas_status_, #expr);               \
  } while (0)

#endif  // Q3VL_CORE_CUDA_CUDA_STATUS_H_
