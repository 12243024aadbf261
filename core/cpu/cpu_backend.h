// The CPU backend: the f32 reference every other backend is tested against. GEMMs go to
// OpenBLAS (OpenMP build); the other ops are plain loops parallelised with OpenMP over rows,
// heads or sequences. Weights must already be f32 (the loader widens bf16 at load time).
#ifndef Q3VL_CORE_CPU_CPU_BACKEND_H_
#define Q3VL_CORE_CPU_CPU_BACKEND_H_

#include <memory>

#include "core/backend.h"
#include "core/cpu/host_pool.h"

namespace q3vl {

struct CpuBackendOptions {
  // Freed activation blocks kept for reuse (see core/cpu/host_pool.h).
  size_t max_cached_bytes = size_t{4} << 30;
  // AllocateUninitialized fills its tensors with 0xff bytes (NaN floats, -1 integers), so that a
  // read before the first write shows up in results: for tests.
  bool poison_uninitialized = false;
};

class CpuBackend final : public Backend {
 public:
  explicit CpuBackend(const CpuBackendOptions& options = {})
      : pool_(cpu::HostPool::Create(options.max_cached_bytes)), poison_(options.poison_uninitialized) {}

  absl::string_view name() const override { return "cpu"; }
  Device device() const override { return Device::kCpu; }
  Tensor Allocate(DType dtype, Shape shape) override;
  Tensor AllocateUninitialized(DType dtype, Shape shape) override;
  void Copy(const Tensor& src, Tensor& dst) override;
  void Synchronize() override {}
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
  void WriteKvFp8(const KvWriteFp8Params& p) override;

  const cpu::HostPool& pool() const { return *pool_; }

 private:
  Tensor FromPool(DType dtype, Shape shape, bool zero);

  std::shared_ptr<cpu::HostPool> pool_;
  bool poison_ = false;
};

// Number of threads the CPU ops use (OpenMP's maximum).
int CpuThreads();

}  // namespace q3vl

#endif  // Q3VL_CORE_CPU_CPU_BACKEND_H_
