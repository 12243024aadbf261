// The small-row GEMM kernels of every ISA this CPU runs, against a double-precision loop:
// rows 1..17 (every tile height and split), column and depth tails, strided operands, beta, f32
// weights and (nn.Linear layout) bf16 ones.
#include "core/cpu/small_gemm.h"

#include <cmath>
#include <string>
#include <tuple>
#include <vector>

#include "core/backend.h"
#include "core/dtype.h"
#include "gtest/gtest.h"
#include "tests/test_util.h"

namespace q3vl::cpu {
namespace {

struct Isa {
  const char* name;
  void (*kernel)(const SmallGemmArgs&);
  bool supported;
};

std::vector<Isa> Isas() {
  __builtin_cpu_init();
  return {{"avx512", SmallGemmAvx512,
           __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl")},
          {"avx2", SmallGemmAvx2, __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")},
          {"baseline", SmallGemmBaseline, true}};
}

// A bf16 copy of f32 `t` (rounded to nearest even).
Tensor ToBf16(const Tensor& t) {
  Tensor out = Tensor::Empty(DType::kBF16, t.shape());
  for (int64_t i = 0; i < t.numel(); ++i) out.data<uint16_t>()[i] = F32ToBF16(t.data<float>()[i]);
  return out;
}

// (m, n, k, b_transposed)
class SmallGemmTest : public ::testing::TestWithParam<std::tuple<int64_t, int64_t, int64_t, bool>> {};

TEST_P(SmallGemmTest, MatchesDoubleLoopOnEveryIsa) {
  const auto [m, n, k, transposed] = GetParam();
  // Padded row strides, so a kernel that assumes packed rows fails.
  const int64_t lda = k + 3, ldb = (transposed ? k : n) + 5, ldo = n + 2;
  const Tensor a = testing::RandomTensor({m, lda}, 1);
  const Tensor b32 = testing::RandomTensor({transposed ? n : k, ldb}, 2);
  const Tensor b16 = ToBf16(b32);
  const Tensor init = testing::RandomTensor({m, ldo}, 3);
  // bf16 weights come in the nn.Linear layout only.
  for (const bool bf16 : transposed ? std::vector<bool>{false, true} : std::vector<bool>{false}) {
    const Tensor b = bf16 ? b16.ToF32() : b32;  // the values the kernel multiplies by
    for (float beta : {0.0f, 0.5f}) {
      std::vector<double> ref(m * n);
      for (int64_t i = 0; i < m; ++i) {
        for (int64_t j = 0; j < n; ++j) {
          double s = beta == 0.0f ? 0.0 : beta * double{init.data<float>()[i * ldo + j]};
          for (int64_t x = 0; x < k; ++x) {
            const float bv = transposed ? b.data<float>()[j * ldb + x] : b.data<float>()[x * ldb + j];
            s += double{a.data<float>()[i * lda + x]} * bv;
          }
          ref[i * n + j] = s;
        }
      }
      for (const Isa& isa : Isas()) {
        if (!isa.supported) {
          std::printf("note: %s not supported by this CPU, not tested here\n", isa.name);
          continue;
        }
        Tensor out = init.Clone();
        if (beta == 0.0f) out.Fill(NAN);  // beta == 0 must ignore out's contents
        SmallGemmArgs args{.a = a.data<float>(), .lda = lda, .ldb = ldb, .b_transposed = transposed,
                           .beta = beta, .out = out.data<float>(), .ldo = ldo, .m = m, .n = n, .k = k};
        if (bf16) {
          args.b_bf16 = b16.data<uint16_t>();
        } else {
          args.b = b32.data<float>();
        }
        isa.kernel(args);
        double worst = 0;
        for (int64_t i = 0; i < m; ++i) {
          for (int64_t j = 0; j < n; ++j) {
            worst = std::max(worst, std::fabs(out.data<float>()[i * ldo + j] - ref[i * n + j]));
          }
          if (beta == 0.0f) {
            for (int64_t j = n; j < ldo; ++j) ASSERT_TRUE(std::isnan(out.data<float>()[i * ldo + j]));
          }
        }
        EXPECT_LE(worst, 1e-4 * std::sqrt(static_cast<double>(k) + 1))
            << isa.name << " beta " << beta << (bf16 ? " bf16" : " f32");
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, SmallGemmTest,
    ::testing::Combine(::testing::Values(1, 2, 3, 4, 5, 6, 7, 8, 11, 13, 16),
                       ::testing::Values(1, 5, 64, 131, 512),
                       ::testing::Values(0, 1, 17, 64, 300), ::testing::Bool()));

// bf16 weights [n, k] (rounded from random f32) against the f32 copy of the same values, on every
// ISA's kernel and through the backend's Gemm and GroupedGemm on both sides of the small-row
// threshold (OpenBLAS on blocks widened to f32). The products are the same; only the order of the
// sums differs (the kernels walk bf16 in even/odd pairs), so the results agree to rounding.
TEST(SmallGemmTest, Bf16WeightsMatchTheirF32Widening) {
  for (const auto& [n, k] : {std::pair<int64_t, int64_t>{5, 17}, {131, 300}, {64, 64}, {700, 33}}) {
    const Tensor b16 = ToBf16(testing::RandomTensor({n, k}, 7));
    const Tensor b32 = b16.ToF32();
    for (int64_t m : {1, 3, 4, 13, 16}) {
      const Tensor a = testing::RandomTensor({m, k}, 8);
      for (const Isa& isa : Isas()) {
        if (!isa.supported) continue;
        Tensor want = Tensor::Empty(DType::kF32, {m, n}), got = Tensor::Empty(DType::kF32, {m, n});
        isa.kernel({.a = a.data<float>(), .lda = k, .b = b32.data<float>(), .ldb = k, .b_transposed = true,
                    .out = want.data<float>(), .ldo = n, .m = m, .n = n, .k = k});
        isa.kernel({.a = a.data<float>(), .lda = k, .b_bf16 = b16.data<uint16_t>(), .ldb = k, .b_transposed = true,
                    .out = got.data<float>(), .ldo = n, .m = m, .n = n, .k = k});
        EXPECT_LE(testing::MaxAbsDiff(got, want), 1e-5f) << isa.name << " m " << m << " n " << n << " k " << k;
      }
    }
    auto backend = CreateBackend(BackendKind::kCpu);
    ASSERT_TRUE(backend.ok());
    for (int64_t m : {2, 16, 17, 200}) {
      const Tensor a = testing::RandomTensor({m, k}, 9);
      Tensor want = Tensor::Empty(DType::kF32, {m, n}), got = Tensor::Empty(DType::kF32, {m, n});
      (*backend)->Gemm({.a = a, .b = b32, .out = want});
      (*backend)->Gemm({.a = a, .b = b16, .out = got});
      EXPECT_LE(testing::MaxAbsDiff(got, want), 1e-5f) << "Gemm m " << m << " n " << n << " k " << k;
    }
  }
  auto backend = CreateBackend(BackendKind::kCpu);
  const Tensor w16 = ToBf16(testing::RandomTensor({3, 40, 24}, 10));
  const Tensor a = testing::RandomTensor({30, 24}, 11);
  const std::vector<int64_t> offsets = {0, 4, 4, 30};  // an empty group, and one past the small-row path
  Tensor want = Tensor::Empty(DType::kF32, {30, 40}), got = Tensor::Empty(DType::kF32, {30, 40});
  (*backend)->GroupedGemm({.a = a, .weights = w16.ToF32(), .offsets = offsets, .out = want, .weights_transposed = true});
  (*backend)->GroupedGemm({.a = a, .weights = w16, .offsets = offsets, .out = got, .weights_transposed = true});
  EXPECT_LE(testing::MaxAbsDiff(got, want), 1e-5f);
}

// A row's result must not depend on the rows batched with it (tile heights change with m): a
// sequence decodes the same tokens alone or in a batch. k spans several k blocks plus a tail.
TEST(SmallGemmTest, EachRowIsTheSameForEveryBatchSize) {
  const int64_t n = 37, k = 2 * 1024 + 77;
  const Tensor a = testing::RandomTensor({kSmallGemmMaxRows, k}, 12);
  const Tensor b32 = testing::RandomTensor({n, k}, 13);
  const Tensor b16 = ToBf16(b32);
  for (const bool bf16 : {false, true}) {
    // The weights of args for rows [row, row + m) of a into out.
    const auto args = [&](int64_t row, int64_t m, float* out) {
      SmallGemmArgs g{.a = a.data<float>() + row * k, .lda = k, .ldb = k, .b_transposed = true,
                      .out = out, .ldo = n, .m = m, .n = n, .k = k};
      if (bf16) {
        g.b_bf16 = b16.data<uint16_t>();
      } else {
        g.b = b32.data<float>();
      }
      return g;
    };
    for (const Isa& isa : Isas()) {
      if (!isa.supported) continue;
      Tensor alone = Tensor::Empty(DType::kF32, {kSmallGemmMaxRows, n});
      for (int64_t r = 0; r < kSmallGemmMaxRows; ++r) isa.kernel(args(r, 1, alone.data<float>() + r * n));
      for (int64_t m = 2; m <= kSmallGemmMaxRows; ++m) {
        Tensor batched = Tensor::Empty(DType::kF32, {m, n});
        isa.kernel(args(0, m, batched.data<float>()));
        EXPECT_EQ(testing::MaxAbsDiff(batched, alone.Slice(0, 0, m)), 0.0f)
            << isa.name << " m " << m << (bf16 ? " bf16" : " f32");
      }
    }
  }
}

TEST(SmallGemmTest, DispatchNamesAnIsa) {
  const std::string isa = SmallGemmIsa();
  EXPECT_TRUE(isa == "avx512" || isa == "avx2" || isa == "baseline") << isa;
}

}  // namespace
}  // namespace q3vl::cpu
