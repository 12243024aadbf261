#include "core/cuda/cuda_backend.h"

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/cuda/cuda_status.h"
#include "core/cuda/kernels/kernels.h"

namespace q3vl::cuda {
namespace {

ElemType ToElemType(DType dtype, const char* what) {
  switch (dtype) {
    case DType::kF32: return ElemType::kF32;
    case DType::kBF16: return ElemType::kBF16;
    case DType::kF16: return ElemType::kF16;
    default: break;
  }
  Q3VL_CHECK(false) << what << ": the CUDA backend computes on f32, bf16 and f16, not " << DTypeName(dtype);
  return ElemType::kF32;
}

cudaDataType_t ToCudaType(DType dtype) {
  switch (dtype) {
    case DType::kF32: return CUDA_R_32F;
    case DType::kBF16: return CUDA_R_16BF;
    case DType::kF16: return CUDA_R_16F;
    default: break;
  }
  Q3VL_CHECK(false) << "no cuBLASLt type for " << DTypeName(dtype);
  return CUDA_R_32F;
}

void CheckOnDevice(const Tensor& t, const char* what) {
  Q3VL_CHECK(t.device() == Device::kCuda) << what << " must be a CUDA tensor: " << t.DebugString();
}

// Rows of a tensor viewed as [rows, last dim]; REQUIRES contiguous, on the device.
struct Rows {
  void* data;
  ElemType type;
  int64_t rows;
  int64_t width;
};

Rows AsRows(const Tensor& t, const char* what) {
  CheckOnDevice(t, what);
  Q3VL_CHECK(t.is_contiguous()) << what << " must be contiguous: " << t.DebugString();
  const int64_t width = t.rank() == 0 ? 1 : t.dim(-1);
  return {t.raw_data(), ToElemType(t.dtype(), what), width == 0 ? 0 : t.numel() / width, width};
}

// Row stride of a rank-2 tensor whose rows are contiguous.
int64_t RowStride(const Tensor& t, const char* what) {
  Q3VL_CHECK_EQ(t.rank(), 2) << what << " " << t.DebugString();
  Q3VL_CHECK(t.strides()[1] == 1 || t.dim(1) <= 1) << what << " rows must be contiguous: " << t.DebugString();
  return std::max<int64_t>(t.strides()[0], std::max<int64_t>(t.dim(1), 1));
}

bool IdsAreI64(const Tensor& ids) {
  Q3VL_CHECK(ids.dtype() == DType::kI64 || ids.dtype() == DType::kI32) << "ids must be i64 or i32: " << ids.DebugString();
  return ids.dtype() == DType::kI64;
}

}  // namespace

int DeviceCount() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return count;
}

absl::StatusOr<std::unique_ptr<CudaBackend>> CudaBackend::Create(const CudaBackendOptions& options) {
  int count = 0;
  Q3VL_CUDA_RETURN_IF_ERROR(cudaGetDeviceCount(&count));
  if (options.device < 0 || options.device >= count) {
    return absl::InvalidArgumentError(absl::StrCat("CUDA device ", options.device, " does not exist (", count,
                                                   " visible)"));
  }
  std::unique_ptr<CudaBackend> b(new CudaBackend());
  b->device_ = options.device;
  Q3VL_CUDA_RETURN_IF_ERROR(cudaSetDevice(b->device_));
  Q3VL_CUDA_RETURN_IF_ERROR(cudaGetDeviceProperties(&b->properties_, b->device_));
  if (b->properties_.major < 8) {
    return absl::FailedPreconditionError(absl::StrCat("CUDA device ", b->device_, " (", b->properties_.name,
                                                      ") is sm_", b->properties_.major, b->properties_.minor,
                                                      "; q3vl needs sm_80 or newer (bf16)"));
  }
  Q3VL_CUDA_RETURN_IF_ERROR(cudaStreamCreateWithFlags(&b->stream_, cudaStreamNonBlocking));
  b->pool_ = DevicePool::Create(b->device_, options.max_cached_bytes);
  auto workspace = b->pool_->Allocate(options.gemm_workspace_bytes);
  if (!workspace.ok()) return workspace.status();
  b->workspace_ = Tensor(*std::move(workspace), DType::kU8, {static_cast<int64_t>(options.gemm_workspace_bytes)});
  auto error = b->pool_->Allocate(sizeof(int));
  if (!error.ok()) return error.status();
  b->error_ = Tensor(*std::move(error), DType::kI32, {1});
  Q3VL_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(b->error_.raw_data(), 0, sizeof(int), b->stream_));
  if (options.staging_segments > 0) {
    auto staging = PinnedStaging::Create(b->stream_, options.staging_segment_bytes, options.staging_segments);
    if (staging.ok()) {
      b->staging_ = *std::move(staging);
    } else {  // still correct without it, only slower: say so once
      (void)cudaGetLastError();
      std::fprintf(stderr, "q3vl: warning: %s; host copies take the driver's pageable path\n",
                   std::string(staging.status().message()).c_str());
    }
  }
  auto gemm = LtGemm::Create(b->stream_, b->workspace_.raw_data(), options.gemm_workspace_bytes);
  if (!gemm.ok()) return gemm.status();
  b->gemm_ = *std::move(gemm);
  Q3VL_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(b->stream_));
  return b;
}

CudaBackend::~CudaBackend() {
  if (stream_ != nullptr) {
    cudaStreamSynchronize(stream_);
    gemm_.reset();
    staging_.reset();
    cudaStreamDestroy(stream_);
  }
}

void CudaBackend::CheckLaunch(const char* op) {
  const cudaError_t error = cudaGetLastError();
  Q3VL_CHECK(error == cudaSuccess) << CudaStatus(error, op);
}

Tensor CudaBackend::Allocate(DType dtype, Shape shape) {
  Tensor t = AllocateUninitialized(dtype, std::move(shape));
  if (t.size_bytes() > 0) Q3VL_CUDA_CHECK(cudaMemsetAsync(t.raw_data(), 0, t.size_bytes(), stream_));
  return t;
}

Tensor CudaBackend::AllocateUninitialized(DType dtype, Shape shape) {
  for (int64_t d : shape) Q3VL_CHECK_GE(d, 0) << ShapeString(shape);
  auto buffer = pool_->Allocate(NumElements(shape) * DTypeSize(dtype));
  Q3VL_CHECK_OK(buffer.status());
  return Tensor(*std::move(buffer), dtype, std::move(shape));
}

void CudaBackend::Copy(const Tensor& src, Tensor& dst) {
  Q3VL_CHECK(src.shape() == dst.shape()) << src.DebugString() << " -> " << dst.DebugString();
  Q3VL_CHECK(src.dtype() == dst.dtype()) << src.DebugString() << " -> " << dst.DebugString();
  if (src.device() == Device::kCpu && dst.device() == Device::kCpu) {
    dst.CopyFrom(src);
    return;
  }
  if (src.size_bytes() == 0) return;
  if (src.device() == Device::kCpu && !src.is_contiguous()) {  // pack on the host first
    const Tensor packed = src.Clone();
    Copy(packed, dst);
    return;
  }
  if (dst.device() == Device::kCpu && !dst.is_contiguous()) {  // through a packed host tensor
    Tensor packed = Tensor::Empty(dst.dtype(), dst.shape());
    Copy(src, packed);
    dst.CopyFrom(packed);
    return;
  }
  const size_t esize = DTypeSize(src.dtype());
  if (src.is_contiguous() && dst.is_contiguous()) {
    if (staging_ != nullptr && src.device() == Device::kCpu && !PinnedStaging::IsPinned(src.raw_data())) {
      staging_->Upload(dst.raw_data(), src.raw_data(), src.size_bytes());
      return;
    }
    if (staging_ != nullptr && dst.device() == Device::kCpu && !PinnedStaging::IsPinned(dst.raw_data())) {
      staging_->Download(dst.raw_data(), src.raw_data(), src.size_bytes());
      CheckDeviceErrors();  // the host waited anyway: report a bad id seen by a kernel now
      return;
    }
    Q3VL_CUDA_CHECK(cudaMemcpyAsync(dst.raw_data(), src.raw_data(), src.size_bytes(), cudaMemcpyDefault, stream_));
  } else {  // a device view that is rows of one stride (column slices, one of q/k/v): one 2-D copy
    const std::optional<RowCopy> plan = PlanRowCopy(src, dst);
    Q3VL_CHECK(plan.has_value()) << "CUDA Copy takes views that are rows of one stride: " << src.DebugString()
                                 << " -> " << dst.DebugString();
    Q3VL_CUDA_CHECK(cudaMemcpy2DAsync(dst.raw_data(), plan->dst_pitch * esize, src.raw_data(), plan->src_pitch * esize,
                                      plan->width * esize, plan->rows, cudaMemcpyDefault, stream_));
  }
  if (dst.device() == Device::kCpu) {  // the caller reads it next
    Q3VL_CUDA_CHECK(cudaStreamSynchronize(stream_));
    CheckDeviceErrors();
  }
}

void CudaBackend::Zero(Tensor& t) {
  if (t.numel() == 0) return;
  CheckOnDevice(t, "Zero");
  if (t.is_contiguous()) {
    Q3VL_CUDA_CHECK(cudaMemsetAsync(t.raw_data(), 0, t.size_bytes(), stream_));
    return;
  }
  const std::optional<Tensor::RowRuns> runs = t.AsRowRuns();
  Q3VL_CHECK(runs.has_value()) << "CUDA Zero takes views that are rows of one stride: " << t.DebugString();
  const size_t esize = DTypeSize(t.dtype());
  Q3VL_CUDA_CHECK(cudaMemset2DAsync(t.raw_data(), runs->row_stride * esize, 0, runs->width * esize, runs->rows,
                                    stream_));
}

Tensor CudaBackend::ToDevice(const Tensor& host) {
  Tensor t = AllocateUninitialized(host.dtype(), host.shape());
  Copy(host, t);
  return t;
}

Tensor CudaBackend::ToHost(const Tensor& device) {
  Tensor t = Tensor::Empty(device.dtype(), device.shape());
  Copy(device, t);
  return t;
}

void CudaBackend::Synchronize() {
  Q3VL_CUDA_CHECK(cudaStreamSynchronize(stream_));
  CheckDeviceErrors();
}

void CudaBackend::CheckDeviceErrors() {
  CheckLaunch("CUDA backend");
  int bits = 0;
  Q3VL_CUDA_CHECK(cudaMemcpy(&bits, error_.raw_data(), sizeof bits, cudaMemcpyDeviceToHost));
  Q3VL_CHECK((bits & kErrorGatherId) == 0) << "GatherRows: a row id outside the table (the row was zeroed)";
  Q3VL_CHECK((bits & kErrorScatterId) == 0) << "ScatterAddRows: a row id outside the output (the row was skipped)";
}

Tensor CudaBackend::Cast(const Tensor& t, DType dtype) {
  if (t.dtype() == dtype && t.device() == Device::kCuda) return t;
  Tensor src = t.device() == Device::kCuda ? t : ToDevice(t);
  if (src.dtype() == dtype) return src;
  Q3VL_CHECK(src.is_contiguous()) << "cast of a strided view: " << src.DebugString();
  Tensor out = AllocateUninitialized(dtype, src.shape());
  cuda::Convert({.in = src.raw_data(), .in_type = ToElemType(src.dtype(), "cast"), .out = out.raw_data(),
                 .out_type = ToElemType(dtype, "cast"), .n = src.numel()},
                stream_);
  CheckLaunch("Convert");
  return out;
}

void CudaBackend::Gemm(const GemmParams& p) {
  CheckOnDevice(p.b, "Gemm b");
  CheckOnDevice(p.out, "Gemm out");
  const int64_t m = p.a.dim(0), k = p.a.dim(1), n = p.out.dim(1);
  Q3VL_CHECK_EQ(p.out.dim(0), m);
  Q3VL_CHECK_EQ(p.b_transposed ? p.b.dim(1) : p.b.dim(0), k) << p.a.DebugString() << " x " << p.b.DebugString();
  Q3VL_CHECK_EQ(p.b_transposed ? p.b.dim(0) : p.b.dim(1), n) << p.b.DebugString() << " -> " << p.out.DebugString();
  Q3VL_CHECK_GT(k, 0) << "Gemm with K = 0";
  // The weight's dtype decides the GEMM's input type; the activation follows it.
  const Tensor a = p.a.dtype() == p.b.dtype() ? p.a : Cast(p.a, p.b.dtype());
  CheckOnDevice(a, "Gemm a");
  Tensor bias;
  if (p.bias.defined()) {
    Q3VL_CHECK_EQ(p.bias.numel(), n);
    bias = Cast(p.bias, p.out.dtype());
  }
  gemm_->Run({.a = a.raw_data(), .lda = RowStride(a, "a"), .b = p.b.raw_data(), .ldb = RowStride(p.b, "b"),
              .b_transposed = p.b_transposed, .bias = bias.defined() ? bias.raw_data() : nullptr,
              .out = p.out.raw_data(), .ldo = RowStride(p.out, "out"), .ab_type = ToCudaType(p.b.dtype()),
              .out_type = ToCudaType(p.out.dtype()), .m = m, .n = n, .k = k, .beta = p.beta});
}

void CudaBackend::GroupedGemm(const GroupedGemmParams& p) {
  Q3VL_CHECK_EQ(p.weights.rank(), 3) << p.weights.DebugString();
  CheckOnDevice(p.weights, "GroupedGemm weights");
  CheckOnDevice(p.out, "GroupedGemm out");
  const int64_t groups = p.weights.dim(0), rows = p.a.dim(0), k = p.a.dim(1);
  const int64_t n = p.weights_transposed ? p.weights.dim(1) : p.weights.dim(2);
  Q3VL_CHECK_EQ(p.weights_transposed ? p.weights.dim(2) : p.weights.dim(1), k)
      << p.a.DebugString() << " x " << p.weights.DebugString();
  Q3VL_CHECK(p.out.rank() == 2 && p.out.dim(0) == rows && p.out.dim(1) == n) << p.out.DebugString();
  const bool on_device = p.device_offsets.defined();
  Q3VL_CHECK(on_device != !p.offsets.empty()) << "GroupedGemm takes either offsets or device_offsets";
  if (!on_device) {
    Q3VL_CHECK_EQ(static_cast<int64_t>(p.offsets.size()), groups + 1);
    Q3VL_CHECK_EQ(p.offsets.back(), rows);
    GroupedGemmOnHostOffsets(p, p.offsets.data());
    return;
  }
  CheckOnDevice(p.device_offsets, "GroupedGemm device_offsets");
  Q3VL_CHECK(p.device_offsets.dtype() == DType::kI64 && p.device_offsets.numel() == groups + 1)
      << p.device_offsets.DebugString() << " for " << groups << " groups";
  CheckOnDevice(p.a, "GroupedGemm a");
  // Decode: a few rows per group (on average at most kGemvRowsPerGroup) stream the weights
  // through the GEMV kernel, which reads the offsets on the device. Larger batches are compute
  // work for cuBLASLt, which needs the row counts on the host: one sync, small next to the GEMMs.
  constexpr int64_t kGemvRowsPerGroup = 8;
  const auto aligned = [](const Tensor& t) { return reinterpret_cast<uintptr_t>(t.raw_data()) % 16 == 0; };
  const bool gemv = p.weights_transposed && rows <= kGemvRowsPerGroup * groups && k % 8 == 0 &&
                    p.weights.is_contiguous() && aligned(p.weights) && aligned(p.a) &&
                    RowStride(p.a, "GroupedGemm a") % 8 == 0;
  if (gemv) {
    cuda::GroupedGemv({.a = p.a.raw_data(), .a_type = ToElemType(p.a.dtype(), "GroupedGemm a"),
                       .lda = RowStride(p.a, "GroupedGemm a"), .weights = p.weights.raw_data(),
                       .weight_type = ToElemType(p.weights.dtype(), "GroupedGemm weights"),
                       .offsets = p.device_offsets.device_data<int64_t>(), .groups = groups, .n = n, .k = k, .rows = rows,
                       .out = p.out.raw_data(), .out_type = ToElemType(p.out.dtype(), "GroupedGemm out"),
                       .ldo = RowStride(p.out, "GroupedGemm out")},
                      stream_);
    CheckLaunch("GroupedGemv");
    return;
  }
  const Tensor offsets = q3vl::Download(*this, p.device_offsets);
  const int64_t* o = offsets.data<int64_t>();
  Q3VL_CHECK(o[0] >= 0 && o[groups] <= rows) << "GroupedGemm offsets [" << o[0] << ", " << o[groups]
                                             << "] outside " << rows << " rows";
  GroupedGemmOnHostOffsets(p, o);
}

void CudaBackend::GroupedGemmOnHostOffsets(const GroupedGemmParams& p, const int64_t* offsets) {
  const Tensor a = p.a.dtype() == p.weights.dtype() ? p.a : Cast(p.a, p.weights.dtype());
  // One cuBLASLt call per group that has rows; empty groups read no weight bytes.
  for (int64_t g = 0; g < p.weights.dim(0); ++g) {
    const int64_t begin = offsets[g], end = offsets[g + 1];
    Q3VL_CHECK_LE(begin, end) << "group " << g;
    if (begin == end) continue;
    Gemm({.a = a.Slice(0, begin, end), .b = p.weights.Select(g), .out = p.out.Slice(0, begin, end),
          .b_transposed = p.weights_transposed});
  }
}

void CudaBackend::RmsNorm(const RmsNormParams& p) {
  const Rows x = AsRows(p.x, "x"), out = AsRows(p.out, "out"), w = AsRows(p.weight, "weight");
  Q3VL_CHECK(x.rows == out.rows && x.width == out.width) << "norm of [" << x.rows << ", " << x.width << "] into ["
                                                        << out.rows << ", " << out.width << "]";
  Q3VL_CHECK_EQ(p.weight.numel(), x.width);
  const void* residual = nullptr;
  if (p.residual.defined()) {
    const Rows r = AsRows(p.residual, "residual");
    Q3VL_CHECK(r.rows == x.rows && r.width == x.width && r.type == x.type)
        << p.residual.DebugString() << " vs " << p.x.DebugString();
    Q3VL_CHECK(out.data != x.data) << "RmsNorm with a residual writes x and out: they must differ";
    residual = r.data;
  }
  cuda::RmsNorm({.x = x.data, .x_type = x.type, .weight = w.data, .weight_type = w.type, .out = out.data,
                 .out_type = out.type, .rows = x.rows, .width = x.width, .eps = p.eps, .residual = residual},
                stream_);
  CheckLaunch("RmsNorm");
}

void CudaBackend::LayerNorm(const LayerNormParams& p) {
  const Rows x = AsRows(p.x, "x"), out = AsRows(p.out, "out");
  Q3VL_CHECK(x.rows == out.rows && x.width == out.width) << "norm of [" << x.rows << ", " << x.width << "] into ["
                                                        << out.rows << ", " << out.width << "]";
  Q3VL_CHECK_EQ(p.weight.numel(), x.width);
  Q3VL_CHECK_EQ(p.bias.numel(), x.width);
  Q3VL_CHECK(p.weight.dtype() == p.bias.dtype()) << p.weight.DebugString() << " vs " << p.bias.DebugString();
  const Rows w = AsRows(p.weight, "weight"), b = AsRows(p.bias, "bias");
  cuda::LayerNorm({.x = x.data, .x_type = x.type, .weight = w.data, .bias = b.data, .param_type = w.type,
                   .out = out.data, .out_type = out.type, .rows = x.rows, .width = x.width, .eps = p.eps},
                  stream_);
  CheckLaunch("LayerNorm");
}

void CudaBackend::Rope(const RopeParams& p) {
  Q3VL_CHECK_EQ(p.x.rank(), 3) << p.x.DebugString();
  const int64_t tokens = p.x.dim(0), heads = p.x.dim(1), d = p.x.dim(2);
  Q3VL_CHECK(p.cos.shape() == Shape({tokens, d})) << p.cos.DebugString() << " for " << p.x.DebugString();
  Q3VL_CHECK(p.sin.shape() == Shape({tokens, d}));
  Q3VL_CHECK(p.cos.dtype() == p.sin.dtype());
  const Rows x = AsRows(p.x, "x"), c = AsRows(p.cos, "cos"), s = AsRows(p.sin, "sin");
  cuda::Rope({.x = x.data, .x_type = x.type, .cos = c.data, .sin = s.data, .table_type = c.type, .tokens = tokens,
              .heads = heads, .dim = d},
             stream_);
  CheckLaunch("Rope");
}

void CudaBackend::Activation(const ActivationParams& p) {
  const Rows x = AsRows(p.x, "x"), out = AsRows(p.out, "out");
  Q3VL_CHECK_EQ(x.rows, out.rows);
  ActivationOp op = ActivationOp::kSiluMul;
  switch (p.kind) {
    case ActivationKind::kSiluMul:
      Q3VL_CHECK_EQ(x.width, 2 * out.width);
      op = ActivationOp::kSiluMul;
      break;
    case ActivationKind::kGeluTanh:
    case ActivationKind::kGeluErf:
      Q3VL_CHECK_EQ(x.width, out.width);
      op = p.kind == ActivationKind::kGeluTanh ? ActivationOp::kGeluTanh : ActivationOp::kGeluErf;
      break;
  }
  cuda::Activation({.op = op, .x = x.data, .x_type = x.type, .out = out.data, .out_type = out.type, .rows = out.rows,
                    .width = out.width},
                   stream_);
  CheckLaunch("Activation");
}

void CudaBackend::Attention(const AttentionParams& p) {
  Q3VL_CHECK(p.q.rank() == 3 && p.k.rank() == 3 && p.v.rank() == 3 && p.out.rank() == 3);
  const int64_t heads = p.q.dim(1), kv_heads = p.k.dim(1), hd = p.q.dim(2);
  Q3VL_CHECK(kv_heads > 0 && heads % kv_heads == 0) << heads << " query heads over " << kv_heads << " KV heads";
  Q3VL_CHECK(p.k.dim(2) == hd && p.v.shape() == p.k.shape() && p.out.shape() == p.q.shape());
  Q3VL_CHECK_LE(hd, 512) << "head_dim";
  Q3VL_CHECK(p.q.dtype() == p.out.dtype() && p.k.dtype() == p.v.dtype() &&
             (p.k.dtype() == p.q.dtype() || (p.page_size > 0 && p.k.dtype() == DType::kBF16)))
      << "Attention wants one dtype for q and out, and k, v of that dtype or bf16 pages";
  const size_t seqs = p.q_starts.size() - 1;
  Q3VL_CHECK(p.q_starts.size() >= 2 && p.k_starts.size() == p.q_starts.size());
  Q3VL_CHECK_EQ(p.q_starts.back(), p.q.dim(0));
  for (size_t s = 0; s < seqs && p.causal; ++s) {
    Q3VL_CHECK_GE(p.k_starts[s + 1] - p.k_starts[s], p.q_starts[s + 1] - p.q_starts[s])
        << "causal attention with more queries than keys (sequence " << s << ")";
  }
  const bool paged = p.page_size > 0;
  if (paged) {
    Q3VL_CHECK(p.block_tables.dtype() == DType::kI32 && p.block_tables.rank() == 2 &&
               p.block_tables.dim(0) == static_cast<int64_t>(seqs) && p.block_tables.is_contiguous())
        << "block_tables must be [num_seqs, max_pages] i32: " << p.block_tables.DebugString();
    CheckOnDevice(p.block_tables, "block_tables");
    for (size_t s = 0; s < seqs; ++s) {
      Q3VL_CHECK_LE(p.k_starts[s + 1] - p.k_starts[s], p.block_tables.dim(1) * p.page_size)
          << "sequence " << s << " has more keys than its block table";
    }
  } else {
    Q3VL_CHECK_EQ(p.k_starts.back(), p.k.dim(0));
  }
  const Rows q = AsRows(p.q, "q"), k = AsRows(p.k, "k"), v = AsRows(p.v, "v"), out = AsRows(p.out, "out");
  // Sequence bounds go up in one copy: [q_starts | k_starts].
  std::vector<int64_t> starts(p.q_starts.begin(), p.q_starts.end());
  starts.insert(starts.end(), p.k_starts.begin(), p.k_starts.end());
  Tensor bounds = ToDevice(Tensor::FromVectorI64(starts, {static_cast<int64_t>(starts.size())}));
  const int64_t* d_starts = bounds.device_data<int64_t>();
  const AttentionArgs args{
      .q = q.data, .k = k.data, .v = v.data, .out = out.data, .type = q.type, .kv_type = k.type, .q_starts = d_starts,
      .k_starts = d_starts + seqs + 1, .num_seqs = static_cast<int>(seqs), .total_q = p.q.dim(0),
      .heads = static_cast<int>(heads), .kv_heads = static_cast<int>(kv_heads), .head_dim = static_cast<int>(hd),
      .causal = p.causal, .scale = p.scale, .block_tables = paged ? p.block_tables.device_data<int32_t>() : nullptr,
      .max_pages = paged ? p.block_tables.dim(1) : 0, .page_size = p.page_size};
  bool decode = p.q.dim(0) == static_cast<int64_t>(seqs) &&
                DecodeAttentionSupported(static_cast<int>(hd), static_cast<int>(heads), static_cast<int>(kv_heads));
  int64_t max_keys = 0;
  for (size_t s = 0; s < seqs && decode; ++s) {
    decode = p.q_starts[s] == static_cast<int64_t>(s);  // one query per sequence
    max_keys = std::max(max_keys, p.k_starts[s + 1] - p.k_starts[s]);
  }
  if (decode && max_keys > 0) {
    // Split the keys so that about two blocks per SM stream the cache, each at least 256 keys.
    const int64_t wanted = 2 * static_cast<int64_t>(properties_.multiProcessorCount);
    int64_t splits = std::max<int64_t>(1, wanted / (static_cast<int64_t>(seqs) * kv_heads));
    splits = std::min(splits, std::max<int64_t>(1, (max_keys + 255) / 256));
    const int64_t split_keys = (max_keys + splits - 1) / splits;
    splits = (max_keys + split_keys - 1) / split_keys;
    const int64_t partials = static_cast<int64_t>(seqs) * heads * splits;
    Tensor stats = AllocateUninitialized(DType::kF32, {2, partials});  // every partial is written
    Tensor partial_out = AllocateUninitialized(DType::kF32, {partials, hd});
    cuda::DecodeAttention({.attn = args, .splits = static_cast<int>(splits), .split_keys = split_keys,
                           .partial_max = stats.device_data<float>(),
                           .partial_sum = stats.device_data<float>() + partials,
                           .partial_out = partial_out.device_data<float>()},
                          stream_);
    CheckLaunch("DecodeAttention");
    return;
  }
  cuda::Attention(args, stream_);
  CheckLaunch("Attention");
}

void CudaBackend::Router(const RouterParams& p) {
  const Rows logits = AsRows(p.logits, "logits");
  Q3VL_CHECK(p.top_k >= 1 && p.top_k <= logits.width && p.top_k <= 32) << "top_k " << p.top_k << " of " << logits.width;
  Q3VL_CHECK(p.expert_ids.dtype() == DType::kI32 && p.expert_ids.numel() == logits.rows * p.top_k);
  Q3VL_CHECK(p.weights.dtype() == DType::kF32 && p.weights.numel() == logits.rows * p.top_k);
  CheckOnDevice(p.expert_ids, "expert_ids");
  CheckOnDevice(p.weights, "weights");
  cuda::Router({.logits = logits.data, .logits_type = logits.type, .tokens = logits.rows, .experts = logits.width,
                .top_k = p.top_k, .renormalize = p.renormalize, .expert_ids = p.expert_ids.device_data<int32_t>(),
                .weights = p.weights.device_data<float>()},
               stream_);
  CheckLaunch("Router");
}

void CudaBackend::GroupByExpert(const GroupByExpertParams& p) {
  CheckOnDevice(p.expert_ids, "GroupByExpert expert_ids");
  for (const Tensor* t : {&p.weights, &p.offsets, &p.source_token, &p.row_weight}) {
    CheckOnDevice(*t, "GroupByExpert");
  }
  const int64_t experts = CheckGroupByExpert(p);
  const int64_t pairs = p.expert_ids.numel();
  const int64_t top_k = p.expert_ids.rank() == 2 ? p.expert_ids.dim(1) : 1;
  Q3VL_CHECK_LE(experts, kGroupByExpertMaxExperts) << "local experts";
  Q3VL_CHECK_LT(pairs, int64_t{1} << 31);
  cuda::GroupByExpert({.expert_ids = p.expert_ids.device_data<int32_t>(), .weights = p.weights.device_data<float>(),
                       .pairs = pairs, .top_k = static_cast<int>(top_k), .first_expert = p.first_expert,
                       .experts = static_cast<int>(experts), .offsets = p.offsets.device_data<int64_t>(),
                       .source_token = p.source_token.device_data<int64_t>(), .row_weight = p.row_weight.device_data<float>()},
                      stream_);
  CheckLaunch("GroupByExpert");
}

void CudaBackend::TopK(const TopKParams& p) {
  CheckOnDevice(p.x, "TopK x");
  CheckOnDevice(p.values, "TopK values");
  CheckOnDevice(p.ids, "TopK ids");
  CheckTopK(p);
  Q3VL_CHECK_LE(p.k, kTopKMax) << "TopK on CUDA";
  const int64_t rows = p.x.dim(0), width = p.x.dim(1);
  cuda::TopK({.x = p.x.device_data<float>(), .ld = RowStride(p.x, "TopK x"), .rows = rows, .width = width,
              .k = static_cast<int>(p.k), .values = p.values.device_data<float>(),
              .ids = p.ids.device_data<int32_t>()},
             stream_);
  CheckLaunch("TopK");
}

void CudaBackend::GatherRows(const GatherRowsParams& p) {
  Q3VL_CHECK_EQ(p.table.rank(), 2);
  CheckOnDevice(p.table, "table");
  CheckOnDevice(p.ids, "ids");
  const Rows out = AsRows(p.out, "out");
  const int64_t n = p.ids.numel();
  Q3VL_CHECK_EQ(out.rows, n);
  Q3VL_CHECK_EQ(out.width, p.table.dim(1));
  cuda::GatherRows({.table = p.table.raw_data(), .table_type = ToElemType(p.table.dtype(), "table"),
                    .row_stride = RowStride(p.table, "table"), .table_rows = p.table.dim(0), .width = out.width,
                    .ids = p.ids.raw_data(), .ids_are_i64 = IdsAreI64(p.ids), .n = n, .out = out.data,
                    .out_type = out.type, .error = error_.device_data<int32_t>()},
                   stream_);
  CheckLaunch("GatherRows");
}

void CudaBackend::ScatterAddRows(const ScatterAddRowsParams& p) {
  const Rows src = AsRows(p.src, "src"), out = AsRows(p.out, "out");
  CheckOnDevice(p.ids, "ids");
  Q3VL_CHECK_EQ(src.width, out.width);
  Q3VL_CHECK_EQ(p.ids.numel(), src.rows);
  if (p.accumulate) Q3VL_CHECK(out.type != ElemType::kF16) << "ScatterAddRows accumulates into f32 or bf16";
  const float* scale = nullptr;
  if (p.scale.defined()) {
    Q3VL_CHECK(p.scale.dtype() == DType::kF32 && p.scale.numel() == src.rows) << p.scale.DebugString();
    CheckOnDevice(p.scale, "scale");
    scale = p.scale.device_data<float>();
  }
  cuda::ScatterAddRows({.src = src.data, .src_type = src.type, .ids = p.ids.raw_data(),
                        .ids_are_i64 = IdsAreI64(p.ids), .scale = scale, .out = out.data, .out_type = out.type,
                        .n = src.rows, .out_rows = out.rows, .width = out.width, .accumulate = p.accumulate,
                        .error = error_.device_data<int32_t>()},
                       stream_);
  CheckLaunch("ScatterAddRows");
}

void CudaBackend::Add(const AddParams& p) {
  const Rows a = AsRows(p.a, "a"), b = AsRows(p.b, "b"), out = AsRows(p.out, "out");
  const int64_t n = a.rows * a.width;
  Q3VL_CHECK_EQ(n, b.rows * b.width);
  Q3VL_CHECK_EQ(n, out.rows * out.width);
  Q3VL_CHECK(a.type == b.type && a.type == out.type) << "Add wants one dtype";
  cuda::Add({.a = a.data, .b = b.data, .out = out.data, .type = a.type, .n = n}, stream_);
  CheckLaunch("Add");
}

}  // namespace q3vl::cuda
