// The CPU backend: the f32 reference every other backend is tested against. GEMMs go to
// OpenBLAS (OpenMP build; bf16 weights widened exactly) or, in bf16 compute, to oneDNN (bf16
// inputs, f32 accumulation: core/cpu/bf16_gemm.h); the other ops are plain loops parallelised
// with OpenMP over rows, heads or sequences.
#ifndef Q3VL_CORE_CPU_CPU_BACKEND_H_
#define Q3VL_CORE_CPU_CPU_BACKEND_H_

#include <memory>

#include "core/backend.h"
#include "core/cpu/host_pool.h"

namespace q3vl {

// How the CPU backend multiplies a GEMM of more than kSmallGemmMaxRows (16) rows by bf16
// weights (the engine option --cpu-compute); fewer rows (decode of small batches) stay f32
// either way. In bf16 a request's rows are therefore rounded or not by the step's row count,
// so its output may vary with what else is batched, as on GPUs.
enum class CpuCompute : uint8_t {
  kF32,   // weights widened exactly, f32 GEMMs: the reference
  kBF16,  // activations rounded to bf16, f32 accumulation; needs bf16 instructions
};
// The process's default for CpuBackendOptions::compute: kF32 until set (the launcher sets it
// from --cpu-compute before it creates a backend).
CpuCompute DefaultCpuCompute();
void SetDefaultCpuCompute(CpuCompute compute);

struct CpuBackendOptions {
  // Freed activation blocks kept for reuse (see core/cpu/host_pool.h).
  size_t max_cached_bytes = size_t{4} << 30;
  // AllocateUninitialized fills its tensors with 0xff bytes (NaN floats, -1 integers), so that a
  // read before the first write shows up in results: for tests.
  bool poison_uninitialized = false;
  // kBF16 on a processor without bf16 instructions computes in f32 (the launcher refuses it).
  CpuCompute compute = DefaultCpuCompute();
};

class CpuBackend final : public Backend {
 public:
  explicit CpuBackend(const CpuBackendOptions& options = {});

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
  // Whether large GEMMs run in bf16 (options.compute, where the processor allows).
  bool bf16_compute() const { return bf16_; }

 private:
  Tensor FromPool(DType dtype, Shape shape, bool zero);

  std::shared_ptr<cpu::HostPool> pool_;
  bool poison_ = false;
  bool bf16_ = false;
};

// Number of threads the CPU ops use (OpenMP's maximum).
int CpuThreads();

}  // namespace q3vl

#endif  // Q3VL_CORE_CPU_CPU_BACKEND_H_
