// The CPU backend's row-wise ops: norms, rotary, activations, router, gather/scatter, add.
#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <numeric>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/cpu/bf16_gemm.h"
#include "core/cpu/cpu_backend.h"
#include "core/cpu/vector_math.h"
#ifdef Q3VL_HAVE_CUDA
#include "core/cuda/cuda_backend.h"
#endif

namespace q3vl {
namespace {

// Treats a contiguous f32 tensor as [rows, last_dim].
struct Rows {
  float* data;
  int64_t rows;
  int64_t width;
};

Rows AsRows(const Tensor& t, const char* what) {
  Q3VL_CHECK(t.dtype() == DType::kF32) << what << " must be f32: " << t.DebugString();
  Q3VL_CHECK(t.is_contiguous()) << what << " must be contiguous: " << t.DebugString();
  const int64_t width = t.rank() == 0 ? 1 : t.dim(-1);
  return {t.data<float>(), width == 0 ? 0 : t.numel() / width, width};
}

int64_t IdAt(const Tensor& ids, int64_t i) {
  return ids.dtype() == DType::kI64 ? ids.data<int64_t>()[i] : ids.data<int32_t>()[i];
}

}  // namespace

int CpuThreads() { return omp_get_max_threads(); }

namespace {
std::atomic<CpuCompute> default_cpu_compute{CpuCompute::kF32};
}  // namespace

CpuCompute DefaultCpuCompute() { return default_cpu_compute.load(); }
void SetDefaultCpuCompute(CpuCompute compute) { default_cpu_compute.store(compute); }

CpuBackend::CpuBackend(const CpuBackendOptions& options)
    : pool_(cpu::HostPool::Create(options.max_cached_bytes)),
      poison_(options.poison_uninitialized),
      bf16_(options.compute == CpuCompute::kBF16 && cpu::CpuBf16Support().native) {}

Tensor CpuBackend::Allocate(DType dtype, Shape shape) { return FromPool(dtype, std::move(shape), /*zero=*/true); }

Tensor CpuBackend::AllocateUninitialized(DType dtype, Shape shape) {
  Tensor t = FromPool(dtype, std::move(shape), /*zero=*/false);
  if (poison_ && t.size_bytes() > 0) std::memset(t.raw_data(), 0xff, t.size_bytes());
  return t;
}

Tensor CpuBackend::FromPool(DType dtype, Shape shape, bool zero) {
  for (int64_t d : shape) Q3VL_CHECK_GE(d, 0) << ShapeString(shape);
  std::shared_ptr<Buffer> buffer = pool_->Allocate(NumElements(shape) * DTypeSize(dtype), zero);
  return Tensor(std::move(buffer), dtype, std::move(shape));
}

void CpuBackend::Copy(const Tensor& src, Tensor& dst) { dst.CopyFrom(src); }

void CpuBackend::Zero(Tensor& t) {
  if (t.numel() == 0) return;
  Q3VL_CHECK(t.device() == Device::kCpu) << "Zero: " << t.DebugString() << " is not host memory";
  const size_t es = DTypeSize(t.dtype());
  if (t.is_contiguous()) {
    std::memset(t.raw_data(), 0, t.size_bytes());
    return;
  }
  Q3VL_CHECK(t.rank() == 2 && t.strides()[1] == 1) << "Zero of a strided view: " << t.DebugString();
  char* base = static_cast<char*>(t.raw_data());
  for (int64_t r = 0; r < t.dim(0); ++r) std::memset(base + r * t.strides()[0] * es, 0, t.dim(1) * es);
}

void CpuBackend::RmsNorm(const RmsNormParams& p) {
  const Rows x = AsRows(p.x, "x");
  const Rows out = AsRows(p.out, "out");
  Q3VL_CHECK(x.rows == out.rows && x.width == out.width) << "norm of [" << x.rows << ", " << x.width << "] into ["
                                                        << out.rows << ", " << out.width << "]";
  Q3VL_CHECK_EQ(p.weight.numel(), x.width);
  const float* w = p.weight.data<float>();
  const float* residual = nullptr;
  if (p.residual.defined()) {
    const Rows res = AsRows(p.residual, "residual");
    Q3VL_CHECK(res.rows == x.rows && res.width == x.width) << p.residual.DebugString() << " vs " << p.x.DebugString();
    Q3VL_CHECK(out.data != x.data) << "RmsNorm with a residual writes x and out: they must differ";
    residual = res.data;
  }
#pragma omp parallel for if (x.rows > 16)
  for (int64_t r = 0; r < x.rows; ++r) {
    float* xr = x.data + r * x.width;
    float* o = out.data + r * x.width;
    if (residual != nullptr) {
      const float* rr = residual + r * x.width;
      for (int64_t j = 0; j < x.width; ++j) xr[j] = xr[j] + rr[j];
    }
    double sum_sq = 0.0;
    for (int64_t j = 0; j < x.width; ++j) sum_sq += static_cast<double>(xr[j]) * xr[j];
    const float inv = 1.0f / std::sqrt(static_cast<float>(sum_sq / x.width) + p.eps);
    for (int64_t j = 0; j < x.width; ++j) o[j] = xr[j] * inv * w[j];
  }
}

void CpuBackend::LayerNorm(const LayerNormParams& p) {
  const Rows x = AsRows(p.x, "x");
  const Rows out = AsRows(p.out, "out");
  Q3VL_CHECK(x.rows == out.rows && x.width == out.width) << "norm of [" << x.rows << ", " << x.width << "] into ["
                                                        << out.rows << ", " << out.width << "]";
  Q3VL_CHECK_EQ(p.weight.numel(), x.width);
  Q3VL_CHECK_EQ(p.bias.numel(), x.width);
  const float* w = p.weight.data<float>();
  const float* b = p.bias.data<float>();
#pragma omp parallel for if (x.rows > 16)
  for (int64_t r = 0; r < x.rows; ++r) {
    const float* xr = x.data + r * x.width;
    float* o = out.data + r * x.width;
    double sum = 0.0;
    for (int64_t j = 0; j < x.width; ++j) sum += xr[j];
    const double mean = sum / x.width;
    double var = 0.0;
    for (int64_t j = 0; j < x.width; ++j) var += (xr[j] - mean) * (xr[j] - mean);
    const float inv = 1.0f / std::sqrt(static_cast<float>(var / x.width) + p.eps);
    const float m = static_cast<float>(mean);
    for (int64_t j = 0; j < x.width; ++j) o[j] = (xr[j] - m) * inv * w[j] + b[j];
  }
}

void CpuBackend::Rope(const RopeParams& p) {
  Q3VL_CHECK_EQ(p.x.rank(), 3) << p.x.DebugString();
  const int64_t tokens = p.x.dim(0), heads = p.x.dim(1), d = p.x.dim(2), half = d / 2;
  Q3VL_CHECK(p.x.is_contiguous() && p.x.dtype() == DType::kF32);
  Q3VL_CHECK(p.cos.shape() == Shape({tokens, d})) << p.cos.DebugString() << " for " << p.x.DebugString();
  Q3VL_CHECK(p.sin.shape() == Shape({tokens, d}));
  float* x = p.x.data<float>();
  const float* cos = p.cos.data<float>();
  const float* sin = p.sin.data<float>();
#pragma omp parallel for if (tokens > 16)
  for (int64_t t = 0; t < tokens; ++t) {
    const float* c = cos + t * d;
    const float* s = sin + t * d;
    for (int64_t h = 0; h < heads; ++h) {
      float* v = x + (t * heads + h) * d;
      for (int64_t j = 0; j < half; ++j) {
        const float a = v[j], b = v[j + half];
        v[j] = a * c[j] - b * s[j];
        v[j + half] = b * c[j + half] + a * s[j + half];
      }
    }
  }
}

namespace {

// o = silu(g) * u over n values.
Q3VL_ISA_CLONES void SiluMul(const float* g, const float* u, float* o, int64_t n) {
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) o[j] = g[j] / (1.0f + expf(-g[j])) * u[j];
}

Q3VL_ISA_CLONES void GeluTanh(const float* x, float* out, int64_t n) {
  const float k_sqrt_2_over_pi = 0.7978845608028654f;
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const float u = x[i];
    out[i] = 0.5f * u * (1.0f + tanhf(k_sqrt_2_over_pi * (u + 0.044715f * u * u * u)));
  }
}

Q3VL_ISA_CLONES void GeluErf(const float* x, float* out, int64_t n) {
  const float k_inv_sqrt2 = 0.7071067811865476f;
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) out[i] = 0.5f * x[i] * (1.0f + erff(x[i] * k_inv_sqrt2));
}

}  // namespace

void CpuBackend::Activation(const ActivationParams& p) {
  const Rows x = AsRows(p.x, "x");
  const Rows out = AsRows(p.out, "out");
  Q3VL_CHECK_EQ(x.rows, out.rows);
  switch (p.kind) {
    case ActivationKind::kSiluMul: {
      Q3VL_CHECK_EQ(x.width, 2 * out.width);
      const int64_t inter = out.width;
#pragma omp parallel for if (x.rows > 16)
      for (int64_t r = 0; r < x.rows; ++r) {
        const float* g = x.data + r * x.width;
        SiluMul(g, g + inter, out.data + r * inter, inter);
      }
      return;
    }
    case ActivationKind::kGeluTanh:
    case ActivationKind::kGeluErf: {
      Q3VL_CHECK_EQ(x.width, out.width);
      const bool use_tanh = p.kind == ActivationKind::kGeluTanh;
      const int64_t n = x.rows * x.width, chunk = 16384;
#pragma omp parallel for if (n > 65536)
      for (int64_t i = 0; i < n; i += chunk) {
        const int64_t len = std::min(chunk, n - i);
        if (use_tanh) {
          GeluTanh(x.data + i, out.data + i, len);
        } else {
          GeluErf(x.data + i, out.data + i, len);
        }
      }
      return;
    }
  }
}

void CpuBackend::Router(const RouterParams& p) {
  const Rows logits = AsRows(p.logits, "logits");
  const int64_t k = p.top_k;
  Q3VL_CHECK(k >= 1 && k <= logits.width) << "top_k " << k << " of " << logits.width;
  Q3VL_CHECK(p.expert_ids.dtype() == DType::kI32 && p.expert_ids.numel() == logits.rows * k);
  Q3VL_CHECK(p.weights.dtype() == DType::kF32 && p.weights.numel() == logits.rows * k);
  int32_t* ids = p.expert_ids.data<int32_t>();
  float* weights = p.weights.data<float>();
#pragma omp parallel
  {
    std::vector<float> prob(logits.width);
    std::vector<int32_t> order(logits.width);
#pragma omp for
    for (int64_t r = 0; r < logits.rows; ++r) {
      const float* l = logits.data + r * logits.width;
      const float max_logit = *std::max_element(l, l + logits.width);
      float sum = 0.0f;
      for (int64_t e = 0; e < logits.width; ++e) sum += prob[e] = std::exp(l[e] - max_logit);
      for (int64_t e = 0; e < logits.width; ++e) prob[e] /= sum;
      std::iota(order.begin(), order.end(), 0);
      std::partial_sort(order.begin(), order.begin() + k, order.end(), [&](int32_t a, int32_t b) {
        return prob[a] > prob[b] || (prob[a] == prob[b] && a < b);
      });
      float top_sum = 0.0f;
      for (int64_t j = 0; j < k; ++j) top_sum += prob[order[j]];
      const float scale = p.renormalize ? 1.0f / top_sum : 1.0f;
      for (int64_t j = 0; j < k; ++j) {
        ids[r * k + j] = order[j];
        weights[r * k + j] = prob[order[j]] * scale;
      }
    }
  }
}

int64_t CheckGroupByExpert(const GroupByExpertParams& p) {
  Q3VL_CHECK(p.expert_ids.dtype() == DType::kI32 && p.expert_ids.is_contiguous()) << p.expert_ids.DebugString();
  const int64_t pairs = p.expert_ids.numel();
  Q3VL_CHECK(p.weights.dtype() == DType::kF32 && p.weights.numel() == pairs) << p.weights.DebugString();
  Q3VL_CHECK(p.offsets.dtype() == DType::kI64 && p.offsets.rank() == 1) << p.offsets.DebugString();
  Q3VL_CHECK(p.source_token.dtype() == DType::kI64 && p.source_token.numel() == pairs);
  Q3VL_CHECK(p.row_weight.dtype() == DType::kF32 && p.row_weight.numel() == pairs);
  Q3VL_CHECK_GE(p.offsets.numel(), 2) << "GroupByExpert needs at least one local expert";
  return p.offsets.numel() - 1;
}

void CpuBackend::GroupByExpert(const GroupByExpertParams& p) {
  const int64_t experts = CheckGroupByExpert(p);
  const int64_t pairs = p.expert_ids.numel();
  const int64_t top_k = p.expert_ids.rank() == 2 ? p.expert_ids.dim(1) : 1;
  const int32_t* ids = p.expert_ids.data<int32_t>();
  const float* weights = p.weights.data<float>();
  int64_t* offsets = p.offsets.data<int64_t>();
  int64_t* source = p.source_token.data<int64_t>();
  float* row_weight = p.row_weight.data<float>();
  // A counting sort, stable in pair order.
  std::fill(offsets, offsets + experts + 1, 0);
  for (int64_t i = 0; i < pairs; ++i) {
    const int64_t e = ids[i] - p.first_expert;
    if (e >= 0 && e < experts) ++offsets[e + 1];
  }
  for (int64_t e = 0; e < experts; ++e) offsets[e + 1] += offsets[e];
  std::vector<int64_t> cursor(offsets, offsets + experts);
  for (int64_t i = 0; i < pairs; ++i) {
    const int64_t e = ids[i] - p.first_expert;
    if (e < 0 || e >= experts) continue;
    const int64_t row = cursor[e]++;
    source[row] = i / top_k;
    row_weight[row] = weights[i];
  }
  std::fill(source + offsets[experts], source + pairs, 0);
  std::fill(row_weight + offsets[experts], row_weight + pairs, 0.0f);
}

void CheckTopK(const TopKParams& p) {
  Q3VL_CHECK(p.x.dtype() == DType::kF32 && p.x.rank() == 2 && (p.x.strides()[1] == 1 || p.x.dim(1) <= 1))
      << "TopK x must be f32 [N, V] with contiguous rows: " << p.x.DebugString();
  const int64_t rows = p.x.dim(0), width = p.x.dim(1);
  Q3VL_CHECK(p.k >= 1 && p.k <= width) << "top-" << p.k << " of " << width << " columns";
  Q3VL_CHECK(p.values.dtype() == DType::kF32 && p.values.is_contiguous() && p.values.numel() == rows * p.k)
      << p.values.DebugString();
  Q3VL_CHECK(p.ids.dtype() == DType::kI32 && p.ids.is_contiguous() && p.ids.numel() == rows * p.k)
      << p.ids.DebugString();
}

void CpuBackend::TopK(const TopKParams& p) {
  CheckTopK(p);
  const int64_t rows = p.x.dim(0), width = p.x.dim(1), k = p.k, ld = p.x.strides()[0];
  const float* x = p.x.data<float>();
  float* values = p.values.data<float>();
  int32_t* ids = p.ids.data<int32_t>();
  if (k == 1) {  // greedy decoding: one pass, the first maximum
#pragma omp parallel for if (rows > 1)
    for (int64_t r = 0; r < rows; ++r) {
      const float* row = x + r * ld;
      const int64_t best = std::max_element(row, row + width) - row;
      values[r] = row[best];
      ids[r] = static_cast<int32_t>(best);
    }
    return;
  }
#pragma omp parallel if (rows > 1)
  {
    std::vector<int32_t> order(width);
#pragma omp for
    for (int64_t r = 0; r < rows; ++r) {
      const float* row = x + r * ld;
      std::iota(order.begin(), order.end(), 0);
      std::partial_sort(order.begin(), order.begin() + k, order.end(), [&](int32_t a, int32_t b) {
        return row[a] > row[b] || (row[a] == row[b] && a < b);
      });
      for (int64_t j = 0; j < k; ++j) {
        values[r * k + j] = row[order[j]];
        ids[r * k + j] = order[j];
      }
    }
  }
}

void CpuBackend::GatherRows(const GatherRowsParams& p) {
  Q3VL_CHECK_EQ(p.table.rank(), 2);
  Q3VL_CHECK(p.table.strides()[1] == 1);
  const Rows out = AsRows(p.out, "out");
  const int64_t n = p.ids.numel(), width = p.table.dim(1), vocab = p.table.dim(0);
  Q3VL_CHECK_EQ(out.rows, n);
  Q3VL_CHECK_EQ(out.width, width);
  const char* table = static_cast<const char*>(p.table.raw_data());
  const size_t row_bytes = p.table.strides()[0] * DTypeSize(p.table.dtype());
#pragma omp parallel for if (n > 64)
  for (int64_t i = 0; i < n; ++i) {
    const int64_t id = IdAt(p.ids, i);
    Q3VL_CHECK(id >= 0 && id < vocab) << "row id " << id << " outside [0, " << vocab << ")";
    ConvertToF32(p.table.dtype(), table + id * row_bytes, out.data + i * width, width);
  }
}

void CpuBackend::ScatterAddRows(const ScatterAddRowsParams& p) {
  const Rows src = AsRows(p.src, "src");
  Q3VL_CHECK_EQ(p.ids.numel(), src.rows);
  const float* scale = p.scale.defined() ? p.scale.data<float>() : nullptr;
  if (p.out.dtype() == DType::kBF16) {  // a bf16 store (the KV cache's pages): overwrite only
    Q3VL_CHECK(!p.accumulate) << "ScatterAddRows accumulates into f32 only: " << p.out.DebugString();
    Q3VL_CHECK(p.out.is_contiguous() && p.out.rank() >= 1 && p.out.dim(-1) == src.width) << p.out.DebugString();
    const int64_t out_rows = p.out.numel() / src.width;
    uint16_t* const out = p.out.data<uint16_t>();
    for (int64_t i = 0; i < src.rows; ++i) {
      const int64_t id = IdAt(p.ids, i);
      Q3VL_CHECK(id >= 0 && id < out_rows) << "row id " << id << " outside [0, " << out_rows << ")";
      const float s = scale ? scale[i] : 1.0f;
      const float* sr = src.data + i * src.width;
      uint16_t* o = out + id * src.width;
      for (int64_t j = 0; j < src.width; ++j) o[j] = F32ToBF16(s * sr[j]);
    }
    return;
  }
  const Rows out = AsRows(p.out, "out");
  Q3VL_CHECK_EQ(src.width, out.width);
  // Sequential over rows: ids may repeat; each row is vectorised.
  for (int64_t i = 0; i < src.rows; ++i) {
    const int64_t id = IdAt(p.ids, i);
    Q3VL_CHECK(id >= 0 && id < out.rows) << "row id " << id << " outside [0, " << out.rows << ")";
    const float s = scale ? scale[i] : 1.0f;
    const float* sr = src.data + i * src.width;
    float* o = out.data + id * out.width;
    if (p.accumulate) {
      for (int64_t j = 0; j < src.width; ++j) o[j] += s * sr[j];
    } else {
      for (int64_t j = 0; j < src.width; ++j) o[j] = s * sr[j];
    }
  }
}

void CpuBackend::Add(const AddParams& p) {
  const Rows a = AsRows(p.a, "a"), b = AsRows(p.b, "b"), out = AsRows(p.out, "out");
  const int64_t n = a.rows * a.width;
  Q3VL_CHECK_EQ(n, b.rows * b.width);
  Q3VL_CHECK_EQ(n, out.rows * out.width);
#pragma omp parallel for if (n > 65536)
  for (int64_t i = 0; i < n; ++i) out.data[i] = a.data[i] + b.data[i];
}

void Backend::WriteKvFp8(const KvWriteFp8Params&) {
  Q3VL_CHECK(false) << "fp8 KV pages are not implemented on the " << name() << " backend; use --kv-dtype bf16";
}

void CpuBackend::WriteKvFp8(const KvWriteFp8Params& p) {
  const Rows src = AsRows(p.src, "src");
  Q3VL_CHECK(p.pool.dtype() == DType::kF8E4M3 && p.pool.is_contiguous() && p.pool.dim(-1) == src.width)
      << "pool must be fp8 [rows, " << src.width << "]: " << p.pool.DebugString();
  Q3VL_CHECK(p.scale.dtype() == DType::kF32 && p.scale.rank() == 2 && p.scale.is_contiguous()) << p.scale.DebugString();
  Q3VL_CHECK_EQ(p.rows.numel(), src.rows);
  const int64_t heads = p.scale.dim(1), d = src.width / heads, pool_rows = p.pool.numel() / src.width;
  Q3VL_CHECK_EQ(heads * d, src.width);
  Q3VL_CHECK_EQ(p.scale.dim(0) * p.page_size, pool_rows);
  uint8_t* pool = p.pool.data<uint8_t>();
  float* scale = p.scale.data<float>();
  constexpr float kMax = 448.0f;
  for (int64_t i = 0; i < src.rows; ++i) {
    const int64_t row = IdAt(p.rows, i);
    Q3VL_CHECK(row >= 0 && row < pool_rows) << "row " << row << " outside [0, " << pool_rows << ")";
    const int64_t page = row / p.page_size, offset = row % p.page_size;
    if (offset == 0) std::fill_n(scale + page * heads, heads, 0.0f);  // a page starts afresh
    const float* x = src.data + i * src.width;
    for (int64_t h = 0; h < heads; ++h) {
      float amax = 0.0f;
      for (int64_t j = 0; j < d; ++j) amax = std::max(amax, std::fabs(x[h * d + j]));
      float& s = scale[page * heads + h];
      if (amax > s * kMax) {  // a larger scale: requantise what the page holds of this head
        const float grown = amax / kMax;
        for (int64_t r = page * p.page_size; r < row && s > 0.0f; ++r) {
          uint8_t* q = pool + r * src.width + h * d;
          for (int64_t j = 0; j < d; ++j) q[j] = F32ToF8E4M3(F8E4M3ToF32(q[j]) * s / grown);
        }
        s = grown;
      }
      uint8_t* q = pool + row * src.width + h * d;
      const float inv = s > 0.0f ? 1.0f / s : 0.0f;
      for (int64_t j = 0; j < d; ++j) q[j] = F32ToF8E4M3(x[h * d + j] * inv);
    }
  }
}

Tensor Upload(Backend& backend, const Tensor& t) {
  if (t.device() == backend.device()) return t;
  Tensor out = backend.AllocateUninitialized(t.dtype(), t.shape());  // the copy writes it all
  backend.Copy(t, out);
  return out;
}

Tensor Download(Backend& backend, const Tensor& t) {
  if (t.device() == Device::kCpu) return t;
  Tensor out = Tensor::Empty(t.dtype(), t.shape());
  backend.Copy(t, out);
  return out;
}

absl::StatusOr<std::unique_ptr<Backend>> CreateBackend(BackendKind kind, int local_rank) {
  switch (kind) {
    case BackendKind::kCpu:
      return std::unique_ptr<Backend>(new CpuBackend());
    case BackendKind::kCuda: {
#ifdef Q3VL_HAVE_CUDA
      const int devices = cuda::DeviceCount();
      if (devices == 0) return absl::FailedPreconditionError("no CUDA device is visible to this process");
      auto cuda = cuda::CudaBackend::Create({.device = std::max(local_rank, 0) % devices});
      if (!cuda.ok()) return cuda.status();
      return std::unique_ptr<Backend>(*std::move(cuda));
#else
      return absl::UnimplementedError("this build has no CUDA backend (configure with -DQ3VL_CUDA=ON)");
#endif
    }
  }
  return absl::InvalidArgumentError("unknown backend");
}

absl::StatusOr<BackendKind> ParseBackendKind(absl::string_view name) {
  if (name == "cpu") return BackendKind::kCpu;
  if (name == "cuda") return BackendKind::kCuda;
  return absl::InvalidArgumentError(absl::StrCat("unknown backend \"", name, "\" (cpu, cuda)"));
}

}  // namespace q3vl
