// A backend whose memory the host may not touch, as with a GPU, for testing on machines without
// one. Tensors it allocates live in host memory but carry Device::kCuda, so host code that
// reads or writes them (Tensor::data, CopyFrom, Clone, ToF32) CHECK-fails, and every op demands
// that its tensors are this backend's (as CudaBackend does): model code that passes a host
// tensor to an op, or reads a result without Download, fails here the way it would on a device.
// The ops run on a CpuBackend over host views of the same memory, so the numbers are the CPU
// backend's, bit for bit. Counts the device -> host copies (each one a sync on a real device).
#ifndef Q3VL_TESTS_DEVICE_SIM_BACKEND_H_
#define Q3VL_TESTS_DEVICE_SIM_BACKEND_H_

#include <cstring>
#include <memory>

#include "core/backend.h"
#include "core/check.h"
#include "core/cpu/cpu_backend.h"

namespace q3vl::testing {

class DeviceSimBackend final : public Backend {
 public:
  absl::string_view name() const override { return "device_sim"; }
  Device device() const override { return Device::kCuda; }

  Tensor Allocate(DType dtype, Shape shape) override {
    for (int64_t d : shape) Q3VL_CHECK_GE(d, 0) << ShapeString(shape);
    const size_t bytes = NumElements(shape) * DTypeSize(dtype);
    return Tensor(std::make_shared<SimBuffer>(bytes), dtype, std::move(shape));
  }
  // Poisoned (0xff bytes: NaN floats, -1 ids), so a read before the first write shows up.
  Tensor AllocateUninitialized(DType dtype, Shape shape) override {
    Tensor t = Allocate(dtype, std::move(shape));
    if (t.size_bytes() > 0) std::memset(t.raw_data(), 0xff, t.size_bytes());
    return t;
  }
  void Copy(const Tensor& src, Tensor& dst) override {
    if (dst.device() == Device::kCpu && src.device() != Device::kCpu) {
      ++downloads_;
      download_bytes_ += src.size_bytes();
    }
    if (src.device() != Device::kCpu || dst.device() != Device::kCpu) {
      // What the CUDA backend can copy: host views are packed first, device views must be rows
      // of one stride.
      const Tensor s = src.device() == Device::kCpu && !src.is_contiguous() ? src.Clone() : src;
      const Tensor d = dst.device() == Device::kCpu && !dst.is_contiguous() ? Tensor::Empty(dst.dtype(), dst.shape())
                                                                              : dst;
      Q3VL_CHECK((s.is_contiguous() && d.is_contiguous()) || PlanRowCopy(s, d).has_value())
          << "Copy: a device copy of views that are not rows of one stride: " << src.DebugString() << " -> "
          << dst.DebugString();
    }
    Tensor d = AnyHost(dst);
    d.CopyFrom(AnyHost(src));
  }
  void Synchronize() override {}
  void Zero(Tensor& t) override {
    Q3VL_CHECK(t.AsRowRuns().has_value()) << "Zero: the CUDA backend takes rows of one stride: " << t.DebugString();
    Tensor h = Host(t, "Zero");
    cpu_.Zero(h);
  }

  void Gemm(const GemmParams& p) override {
    cpu_.Gemm({.a = Host(p.a, "Gemm a"), .b = Host(p.b, "Gemm b"), .bias = Host(p.bias, "Gemm bias"),
               .out = Host(p.out, "Gemm out"), .b_transposed = p.b_transposed, .beta = p.beta});
  }
  void GroupedGemm(const GroupedGemmParams& p) override {
    cpu_.GroupedGemm({.a = Host(p.a, "GroupedGemm a"), .weights = Host(p.weights, "GroupedGemm weights"),
                      .offsets = p.offsets, .out = Host(p.out, "GroupedGemm out"),
                      .weights_transposed = p.weights_transposed,
                      .device_offsets = Host(p.device_offsets, "GroupedGemm device_offsets")});
  }
  void RmsNorm(const RmsNormParams& p) override {
    cpu_.RmsNorm({.x = Host(p.x, "RmsNorm x"), .weight = Host(p.weight, "RmsNorm weight"),
                  .out = Host(p.out, "RmsNorm out"), .eps = p.eps, .residual = Host(p.residual, "RmsNorm residual")});
  }
  void LayerNorm(const LayerNormParams& p) override {
    cpu_.LayerNorm({.x = Host(p.x, "LayerNorm x"), .weight = Host(p.weight, "LayerNorm weight"),
                    .bias = Host(p.bias, "LayerNorm bias"), .out = Host(p.out, "LayerNorm out"), .eps = p.eps});
  }
  void Rope(const RopeParams& p) override {
    cpu_.Rope({.x = Host(p.x, "Rope x"), .cos = Host(p.cos, "Rope cos"), .sin = Host(p.sin, "Rope sin")});
  }
  void Activation(const ActivationParams& p) override {
    cpu_.Activation({.kind = p.kind, .x = Host(p.x, "Activation x"), .out = Host(p.out, "Activation out")});
  }
  void Attention(const AttentionParams& p) override {
    cpu_.Attention({.q = Host(p.q, "Attention q"), .k = Host(p.k, "Attention k"), .v = Host(p.v, "Attention v"),
                    .q_starts = p.q_starts, .k_starts = p.k_starts, .causal = p.causal, .scale = p.scale,
                    .out = Host(p.out, "Attention out"), .block_tables = Host(p.block_tables, "Attention block_tables"),
                    .page_size = p.page_size, .k_scale = Host(p.k_scale, "Attention k_scale"),
                    .v_scale = Host(p.v_scale, "Attention v_scale")});
  }
  void Router(const RouterParams& p) override {
    cpu_.Router({.logits = Host(p.logits, "Router logits"), .top_k = p.top_k, .renormalize = p.renormalize,
                 .expert_ids = Host(p.expert_ids, "Router expert_ids"), .weights = Host(p.weights, "Router weights")});
  }
  void GroupByExpert(const GroupByExpertParams& p) override {
    cpu_.GroupByExpert({.expert_ids = Host(p.expert_ids, "GroupByExpert expert_ids"),
                        .weights = Host(p.weights, "GroupByExpert weights"), .first_expert = p.first_expert,
                        .offsets = Host(p.offsets, "GroupByExpert offsets"),
                        .source_token = Host(p.source_token, "GroupByExpert source_token"),
                        .row_weight = Host(p.row_weight, "GroupByExpert row_weight")});
  }
  void TopK(const TopKParams& p) override {
    cpu_.TopK({.x = Host(p.x, "TopK x"), .k = p.k, .values = Host(p.values, "TopK values"),
               .ids = Host(p.ids, "TopK ids")});
  }
  void GatherRows(const GatherRowsParams& p) override {
    cpu_.GatherRows({.table = Host(p.table, "GatherRows table"), .ids = Host(p.ids, "GatherRows ids"),
                     .out = Host(p.out, "GatherRows out")});
  }
  void ScatterAddRows(const ScatterAddRowsParams& p) override {
    cpu_.ScatterAddRows({.src = Host(p.src, "ScatterAddRows src"), .ids = Host(p.ids, "ScatterAddRows ids"),
                         .scale = Host(p.scale, "ScatterAddRows scale"), .out = Host(p.out, "ScatterAddRows out"),
                         .accumulate = p.accumulate});
  }
  void WriteKvFp8(const KvWriteFp8Params& p) override {
    cpu_.WriteKvFp8({.src = Host(p.src, "WriteKvFp8 src"), .rows = Host(p.rows, "WriteKvFp8 rows"),
                     .pool = Host(p.pool, "WriteKvFp8 pool"), .scale = Host(p.scale, "WriteKvFp8 scale"),
                     .page_size = p.page_size});
  }
  void Add(const AddParams& p) override {
    cpu_.Add({.a = Host(p.a, "Add a"), .b = Host(p.b, "Add b"), .out = Host(p.out, "Add out")});
  }

  // The host view of one of this backend's tensors (CHECK-fails for any other tensor), for
  // test doubles standing in for device-side parts (device_sim_comm.h).
  static Tensor HostView(const Tensor& t) { return Host(t, "HostView"); }

  int64_t downloads() const { return downloads_; }
  int64_t download_bytes() const { return download_bytes_; }

 private:
  // Host memory that says it is not.
  class SimBuffer final : public Buffer {
   public:
    explicit SimBuffer(size_t bytes) : host_(std::make_shared<HostBuffer>(bytes)) {}
    void* data() override { return host_->data(); }
    size_t size_bytes() const override { return host_->size_bytes(); }
    Device device() const override { return Device::kCuda; }
    const std::shared_ptr<HostBuffer>& host() const { return host_; }

   private:
    std::shared_ptr<HostBuffer> host_;
  };

  // The host view of one of this backend's tensors (undefined stays undefined).
  static Tensor Host(const Tensor& t, const char* what) {
    if (!t.defined()) return t;
    const auto* sim = dynamic_cast<const SimBuffer*>(t.buffer().get());
    Q3VL_CHECK(sim != nullptr) << what << " is not in the device's memory: " << t.DebugString()
                               << " (Upload it first)";
    return t.Rebind(sim->host());
  }
  // Either side of a Copy: a host tensor as it is, a device tensor as its host view.
  static Tensor AnyHost(const Tensor& t) { return t.device() == Device::kCpu ? t : Host(t, "Copy"); }

  CpuBackend cpu_;
  int64_t downloads_ = 0;
  int64_t download_bytes_ = 0;
};

}  // namespace q3vl::testing

#endif  // Q3VL_TESTS_DEVICE_SIM_BACKEND_H_
