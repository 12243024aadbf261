// The CUDA backend: the Backend op set on one device and one stream. Memory comes from a
// DevicePool (cudaMalloc underneath, cached), GEMMs from cuBLASLt (LtGemm, f32 accumulation),
// everything else from the kernels in kernels/ (one op per file). Activations may be f32, bf16
// or f16; weights are used in the dtype they were loaded in, and a GEMM whose activation and
// weight dtypes differ casts the activation to the weight's dtype first (bf16 weights: bf16
// GEMMs with f32 accumulation, per the numerics contract). Errors: Create returns a Status (no
// device, no driver, out of memory); on the hot path a failed launch, a device fault or a bad
// id seen by a kernel CHECK-fails at the next Synchronize with the reason. Copies to and from
// pageable host memory go through a ring of pinned memory (PinnedStaging), so uploads do not
// block the host. One thread at a time, like every Backend.
#ifndef Q3VL_CORE_CUDA_CUDA_BACKEND_H_
#define Q3VL_CORE_CUDA_CUDA_BACKEND_H_

#include <cuda_runtime.h>

#include <memory>

#include "absl/status/statusor.h"
#include "core/backend.h"
#include "core/cuda/device_pool.h"
#include "core/cuda/lt_gemm.h"
#include "core/cuda/pinned_staging.h"

namespace q3vl::cuda {

struct CudaBackendOptions {
  int device = 0;
  size_t max_cached_bytes = size_t{16} << 30;     // freed blocks kept by the pool
  size_t gemm_workspace_bytes = size_t{32} << 20; // cuBLASLt workspace
  size_t staging_segment_bytes = size_t{4} << 20;  // pinned host staging: segments of this size
  int staging_segments = 8;                        // (0: copy straight from pageable memory)
};

// Number of CUDA devices visible (0 without a driver or device).
int DeviceCount();

class CudaBackend final : public Backend {
 public:
  static absl::StatusOr<std::unique_ptr<CudaBackend>> Create(const CudaBackendOptions& options = {});
  ~CudaBackend() override;

  absl::string_view name() const override { return "cuda"; }
  int64_t device_memory_bytes() const override { return static_cast<int64_t>(properties_.totalGlobalMem); }
  Device device() const override { return Device::kCuda; }
  Tensor Allocate(DType dtype, Shape shape) override;
  Tensor AllocateUninitialized(DType dtype, Shape shape) override;
  void Copy(const Tensor& src, Tensor& dst) override;
  void Synchronize() override;
  void Zero(Tensor& t) override;

  void Gemm(const GemmParams& p) override;
  void GroupedGemm(const GroupedGemmParams& p) override;
  void RmsNorm(const RmsNormParams& p) override;
  void LayerNorm(const LayerNormParams& p) override;
  void Rope(const RopeParams& p) override;
  void Activation(const ActivationParams& p) override;
  void Attention(const AttentionParams& p) override;
  void Router(const RouterParams& p) override;
  void GroupByExpert(const GroupByExpertParams& p) override;
  void TopK(const TopKParams& p) override;
  void GatherRows(const GatherRowsParams& p) override;
  void ScatterAddRows(const ScatterAddRowsParams& p) override;
  void Add(const AddParams& p) override;

  // Host tensor -> new device tensor, and back (conveniences over Allocate + Copy).
  Tensor ToDevice(const Tensor& host);
  Tensor ToHost(const Tensor& device);

  cudaStream_t stream() const { return stream_; }
  const DevicePool& pool() const { return *pool_; }
  const cudaDeviceProp& properties() const { return properties_; }

 private:
  CudaBackend() = default;
  // A device tensor of `dtype` holding `t` (t itself when it already is one).
  Tensor Cast(const Tensor& t, DType dtype);
  void CheckLaunch(const char* op);
  // After the stream is idle: CHECK-fails on a launch error or an error bit a kernel raised.
  void CheckDeviceErrors();
  // cuBLASLt per group with rows, from offsets on the host.
  void GroupedGemmOnHostOffsets(const GroupedGemmParams& p, const int64_t* offsets);

  int device_ = 0;
  cudaDeviceProp properties_{};
  cudaStream_t stream_ = nullptr;
  std::shared_ptr<DevicePool> pool_;
  std::unique_ptr<PinnedStaging> staging_;  // null: pageable copies through the driver
  Tensor workspace_;  // cuBLASLt
  Tensor error_;      // [1] i32: DeviceError bits raised by kernels
  std::unique_ptr<LtGemm> gemm_;
};

}  // namespace q3vl::cuda

#endif  // Q3VL_CORE_CUDA_CUDA_BACKEND_H_
