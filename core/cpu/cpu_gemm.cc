// GEMM and grouped GEMM: OpenBLAS, except a few rows (decode) which go to SmallGemm.
#include <cblas.h>

#include <algorithm>
#include <cstring>
#include <memory>

#include "core/cpu/bf16_gemm.h"
#include "core/cpu/cpu_backend.h"
#include "core/cpu/small_gemm.h"
#include "core/cpu/vector_math.h"

namespace q3vl {
namespace {

// Leading dimension of a 2-D f32 matrix whose rows are contiguous.
int64_t RowStride(const Tensor& t, const char* what) {
  Q3VL_CHECK_EQ(t.rank(), 2) << what << " " << t.DebugString();
  Q3VL_CHECK(t.dtype() == DType::kF32) << what << " must be f32, got " << t.DebugString();
  Q3VL_CHECK(t.strides()[1] == 1 || t.dim(1) <= 1) << what << " rows must be contiguous";
  return std::max<int64_t>(t.strides()[0], std::max<int64_t>(t.dim(1), 1));
}

// dst = src widened to f32 (exact: a bf16 is the high half of an f32), vectorised.
Q3VL_ISA_CLONES void WidenBf16(const uint16_t* src, float* dst, int64_t n) {
  uint32_t* bits = reinterpret_cast<uint32_t*>(dst);
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) bits[i] = static_cast<uint32_t>(src[i]) << 16;
}

// out = beta * out + a @ bᵀ for bf16 b [n, k] (nn.Linear rows, contiguous). Up to
// kSplitSmallRows rows go to SmallGemm, which widens b in registers, in passes of at most
// kSmallGemmMaxRows rows; otherwise b is widened a block of rows at a time into an f32 buffer of
// about 8M floats and multiplied by OpenBLAS (widening is exact, so the results equal those of
// the f32 weights).
constexpr int64_t kSplitSmallRows = 4 * cpu::kSmallGemmMaxRows;

// `bf16_compute`: more rows than kSmallGemmMaxRows go to oneDNN in bf16 (core/cpu/bf16_gemm.h:
// from 16 rows on it beats the f32 small-row kernel on AVX512_BF16, 3x OpenBLAS from 64).
void SgemmBf16(const Tensor& a, const Tensor& b, float beta, Tensor& out, bool bf16_compute) {
  const int64_t m = a.dim(0), k = a.dim(1), n = out.dim(1);
  Q3VL_CHECK(b.rank() == 2 && b.is_contiguous()) << "bf16 weights must be contiguous [N, K]: " << b.DebugString();
  const uint16_t* w = b.data<uint16_t>();
  if (bf16_compute && m > cpu::kSmallGemmMaxRows) {
    return cpu::Bf16Gemm({.a = a.data<float>(), .lda = RowStride(a, "a"), .b = w, .beta = beta,
                          .out = out.data<float>(), .ldo = RowStride(out, "out"), .m = m, .n = n, .k = k});
  }
  if (m <= kSplitSmallRows) {
    // Up to a few small-row passes, each reading the bf16 weights once, cost less memory
    // traffic than widening them (2 bytes read, 4 written and 4 read again per element).
    const int64_t parts = (m + cpu::kSmallGemmMaxRows - 1) / cpu::kSmallGemmMaxRows;
    for (int64_t p = 0; p < parts; ++p) {
      const int64_t r0 = m * p / parts, r1 = m * (p + 1) / parts;
      cpu::SmallGemm({.a = a.data<float>() + r0 * RowStride(a, "a"), .lda = RowStride(a, "a"), .b_bf16 = w,
                      .ldb = k, .b_transposed = true, .beta = beta,
                      .out = out.data<float>() + r0 * RowStride(out, "out"), .ldo = RowStride(out, "out"),
                      .m = r1 - r0, .n = n, .k = k});
    }
    return;
  }
  const int64_t block = std::min(n, std::max<int64_t>(64, (int64_t{8} << 20) / std::max<int64_t>(k, 1)));
  // Reused across calls (a fresh buffer would be zero-filled and page-faulted every time).
  thread_local std::unique_ptr<float[]> buffer;
  thread_local int64_t capacity = 0;
  if (capacity < block * k) {
    buffer.reset(new float[static_cast<size_t>(block * k)]);
    capacity = block * k;
  }
  float* const widened = buffer.get();
  for (int64_t n0 = 0; n0 < n; n0 += block) {
    const int64_t rows = std::min(block, n - n0);
    const uint16_t* src = w + n0 * k;
    const int64_t count = rows * k, chunk = 1 << 16;
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < count; i += chunk) WidenBf16(src + i, widened + i, std::min(chunk, count - i));
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, rows, k, 1.0f, a.data<float>(), RowStride(a, "a"),
                widened, k, beta, out.data<float>() + n0, RowStride(out, "out"));
  }
}

void Sgemm(const Tensor& a, const Tensor& b, bool b_transposed, float beta, Tensor& out, bool bf16_compute) {
  const int64_t m = a.dim(0), k = a.dim(1), n = out.dim(1);
  Q3VL_CHECK_EQ(out.dim(0), m);
  Q3VL_CHECK_EQ(b_transposed ? b.dim(1) : b.dim(0), k) << a.DebugString() << " x " << b.DebugString();
  Q3VL_CHECK_EQ(b_transposed ? b.dim(0) : b.dim(1), n) << b.DebugString() << " -> " << out.DebugString();
  if (m == 0 || n == 0) return;
  if (b.dtype() == DType::kBF16) {
    Q3VL_CHECK(b_transposed) << "bf16 weights are supported as nn.Linear rows [N, K] only";
    return SgemmBf16(a, b, beta, out, bf16_compute);
  }
  if (m <= cpu::kSmallGemmMaxRows) {
    return cpu::SmallGemm({.a = a.data<float>(), .lda = RowStride(a, "a"), .b = b.data<float>(),
                           .ldb = RowStride(b, "b"), .b_transposed = b_transposed, .beta = beta,
                           .out = out.data<float>(), .ldo = RowStride(out, "out"), .m = m, .n = n,
                           .k = k});
  }
  cblas_sgemm(CblasRowMajor, CblasNoTrans, b_transposed ? CblasTrans : CblasNoTrans, m, n, k,
              1.0f, a.data<float>(), RowStride(a, "a"), b.data<float>(), RowStride(b, "b"), beta,
              out.data<float>(), RowStride(out, "out"));
}

}  // namespace

void CpuBackend::Gemm(const GemmParams& p) {
  Tensor out = p.out;
  float beta = p.beta;
  if (p.bias.defined()) {
    Q3VL_CHECK_EQ(p.bias.numel(), out.dim(1));
    const float* bias = p.bias.data<float>();
    const int64_t ld = RowStride(out, "out");
    float* o = out.data<float>();
#pragma omp parallel for if (out.dim(0) > 64)
    for (int64_t i = 0; i < out.dim(0); ++i) {
      float* row = o + i * ld;
      if (beta == 0.0f) {  // out's contents are ignored (they may be NaN)
        std::memcpy(row, bias, out.dim(1) * sizeof(float));
      } else {
        for (int64_t j = 0; j < out.dim(1); ++j) row[j] = beta * row[j] + bias[j];
      }
    }
    beta = 1.0f;
  }
  Sgemm(p.a, p.b, p.b_transposed, beta, out, bf16_);
}

void CpuBackend::GroupedGemm(const GroupedGemmParams& p) {
  Q3VL_CHECK_EQ(p.weights.rank(), 3) << p.weights.DebugString();
  const int64_t num_groups = p.weights.dim(0);
  // Host memory either way on this backend.
  const bool on_device = p.device_offsets.defined();
  Q3VL_CHECK(on_device != !p.offsets.empty()) << "GroupedGemm takes either offsets or device_offsets";
  const int64_t* offsets = on_device ? p.device_offsets.data<int64_t>() : p.offsets.data();
  if (on_device) {
    Q3VL_CHECK(p.device_offsets.dtype() == DType::kI64 && p.device_offsets.numel() == num_groups + 1)
        << p.device_offsets.DebugString() << " for " << num_groups << " groups";
    Q3VL_CHECK_LE(offsets[num_groups], p.a.dim(0));
  } else {
    Q3VL_CHECK_EQ(static_cast<int64_t>(p.offsets.size()), num_groups + 1);
    Q3VL_CHECK_EQ(p.offsets.back(), p.a.dim(0));
  }
  for (int64_t g = 0; g < num_groups; ++g) {
    const int64_t begin = offsets[g], end = offsets[g + 1];
    Q3VL_CHECK(begin >= 0 && begin <= end) << "group " << g << " rows [" << begin << ", " << end << ")";
    if (begin == end) continue;
    Tensor out = p.out.Slice(0, begin, end);
    Sgemm(p.a.Slice(0, begin, end), p.weights.Select(g), p.weights_transposed, 0.0f, out, bf16_);
  }
}

}  // namespace q3vl
