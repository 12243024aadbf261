// The CPU backend's bf16 compute (--cpu-compute bf16): GEMMs of more than a few rows by bf16
// weights round the activations to bf16 and accumulate in f32 (oneDNN), so they equal an exact
// sum of the bf16 products to f32 rounding, and differ from the f32 path by the activations'
// rounding; few-row GEMMs (decode) stay f32. Skipped, visibly, on a processor without bf16
// instructions.
#include "core/cpu/bf16_gemm.h"

#include <cmath>
#include <cstring>
#include <vector>

#include "core/cpu/cpu_backend.h"
#include "gtest/gtest.h"
#include "tests/test_util.h"

namespace q3vl {
namespace {

using testing::MaxAbsDiff;
using testing::RandomTensor;

// `t` (f32) rounded to bf16.
Tensor Bf16Of(const Tensor& t) {
  Tensor out = Tensor::Empty(DType::kBF16, t.shape());
  cpu::RoundToBf16(t.data<float>(), t.dim(t.rank() - 1), t.numel() / t.dim(t.rank() - 1), t.dim(t.rank() - 1),
                   out.data<uint16_t>());
  return out;
}

float Widen(uint16_t b) {
  const uint32_t u = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

// sum_x round(a[i, x]) * w[j, x] (+ bias), in double: what bf16 compute approximates to f32
// rounding; with `round_a` false, the f32 path's exact value.
Tensor Reference(const Tensor& a, const Tensor& w16, const Tensor* bias, bool round_a) {
  const int64_t m = a.dim(0), k = a.dim(1), n = w16.dim(0);
  const Tensor a16 = Bf16Of(a);
  Tensor out = Tensor::Empty(DType::kF32, {m, n});
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t j = 0; j < n; ++j) {
      double s = bias ? bias->data<float>()[j] : 0.0;
      for (int64_t x = 0; x < k; ++x) {
        const double av = round_a ? Widen(a16.data<uint16_t>()[i * k + x]) : a.data<float>()[i * k + x];
        s += av * Widen(w16.data<uint16_t>()[j * k + x]);
      }
      out.data<float>()[i * n + j] = static_cast<float>(s);
    }
  }
  return out;
}

class Bf16ComputeTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!cpu::CpuBf16Support().native) {
      GTEST_SKIP() << "this processor has no bf16 instructions (oneDNN: " << cpu::CpuBf16Support().isa << ")";
    }
  }
  CpuBackend bf16_{CpuBackendOptions{.compute = CpuCompute::kBF16}};
  CpuBackend f32_{CpuBackendOptions{.compute = CpuCompute::kF32}};
};

TEST_F(Bf16ComputeTest, LargeGemmsRoundTheActivationsAndAccumulateInF32) {
  ASSERT_TRUE(bf16_.bf16_compute());
  ASSERT_FALSE(f32_.bf16_compute());
  const int64_t m = 130, k = 96, n = 70;
  const Tensor a = RandomTensor({m, k}, 1), w = Bf16Of(RandomTensor({n, k}, 2)), bias = RandomTensor({n}, 3);
  // Into a column slice of a wider tensor (rows ldo apart), with a bias (beta 1).
  Tensor wide = Tensor::Empty(DType::kF32, {m, n + 9});
  wide.Fill(NAN);
  Tensor out = wide.Slice(1, 4, 4 + n);
  bf16_.Gemm({.a = a, .b = w, .bias = bias, .out = out});
  Tensor got = Tensor::Empty(DType::kF32, {m, n});
  got.CopyFrom(out);
  const Tensor rounded = Reference(a, w, &bias, /*round_a=*/true);
  const Tensor exact = Reference(a, w, &bias, /*round_a=*/false);
  EXPECT_LE(MaxAbsDiff(got, rounded), 1e-4f) << "bf16 products summed in f32";
  EXPECT_GT(MaxAbsDiff(got, exact), 1e-3f) << "the activations were rounded to bf16";
  EXPECT_LE(MaxAbsDiff(got, exact), 0.1f);
  for (int64_t i = 0; i < m; ++i) {  // the slice's neighbours untouched
    EXPECT_TRUE(std::isnan(wide.data<float>()[i * (n + 9)]));
    EXPECT_TRUE(std::isnan(wide.data<float>()[i * (n + 9) + 4 + n]));
  }
  Tensor f32_out = Tensor::Empty(DType::kF32, {m, n});
  f32_.Gemm({.a = a, .b = w, .bias = bias, .out = f32_out});
  EXPECT_LE(MaxAbsDiff(f32_out, exact), 1e-4f) << "the f32 path widens the weights exactly";
}

TEST_F(Bf16ComputeTest, FewRowsStayF32AndGroupedGemmsUseBf16) {
  const int64_t k = 64, n = 48;
  // Decode-sized: the f32 small-row kernels, the same result in both modes.
  const Tensor few = RandomTensor({16, k}, 4), w = Bf16Of(RandomTensor({n, k}, 5));
  Tensor a_out = Tensor::Empty(DType::kF32, {16, n}), b_out = Tensor::Empty(DType::kF32, {16, n});
  bf16_.Gemm({.a = few, .b = w, .out = a_out});
  f32_.Gemm({.a = few, .b = w, .out = b_out});
  EXPECT_EQ(MaxAbsDiff(a_out, b_out), 0.0f);
  // Experts: each group's rows against its own bf16 weights, in bf16 when the group is large.
  const int64_t rows = 200;
  const Tensor a = RandomTensor({rows, k}, 6), experts = Bf16Of(RandomTensor({3, n, k}, 7));
  const std::vector<int64_t> offsets = {0, 120, 120, rows};  // 120 rows, none, 80 rows
  Tensor out = Tensor::Empty(DType::kF32, {rows, n});
  bf16_.GroupedGemm({.a = a, .weights = experts, .offsets = offsets, .out = out, .weights_transposed = true});
  for (int64_t g : {0, 2}) {
    const Tensor part = a.Slice(0, offsets[g], offsets[g + 1]);
    Tensor contiguous = Tensor::Empty(DType::kF32, part.shape());
    contiguous.CopyFrom(part);
    Tensor got = Tensor::Empty(DType::kF32, {offsets[g + 1] - offsets[g], n});
    got.CopyFrom(out.Slice(0, offsets[g], offsets[g + 1]));
    Tensor w_g = Tensor::Empty(DType::kBF16, {n, k});
    std::memcpy(w_g.data<uint16_t>(), experts.data<uint16_t>() + g * n * k, n * k * sizeof(uint16_t));
    EXPECT_LE(MaxAbsDiff(got, Reference(contiguous, w_g, nullptr, /*round_a=*/true)), 1e-4f) << "group " << g;
  }
}

}  // namespace
}  // namespace q3vl
