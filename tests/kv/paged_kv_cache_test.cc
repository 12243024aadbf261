// The paged KV cache: page accounting (reserve, exhaustion, release) and the step plan's writes
// and block tables across page boundaries, on the CPU backend and on one whose memory the host may not
// touch (the cache must go through backend ops only).
#include "kv/paged_kv_cache.h"

#include <cmath>
#include <memory>
#include <string>
#include <tuple>

#include "core/cpu/cpu_backend.h"
#include "gtest/gtest.h"
#include "tests/device_sim_backend.h"

namespace q3vl::kv {
namespace {

constexpr int64_t kHeads = 2, kDim = 3, kPage = 4;

// Key/value rows whose every element names its (sequence, position, element).
Tensor Rows(int64_t seq, int64_t first_pos, int64_t n, float sign) {
  Tensor t = Tensor::Empty(DType::kF32, {n, kHeads, kDim});
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t e = 0; e < kHeads * kDim; ++e) {
      t.data<float>()[i * kHeads * kDim + e] = sign * (1000.0f * seq + 10.0f * (first_pos + i) + e);
    }
  }
  return t;
}

Tensor Stack(const std::vector<Tensor>& parts) {
  int64_t n = 0;
  for (const Tensor& p : parts) n += p.dim(0);
  Tensor out = Tensor::Empty(DType::kF32, {n, kHeads, kDim});
  int64_t at = 0;
  for (const Tensor& p : parts) {
    out.Slice(0, at, at + p.dim(0)).CopyFrom(p);
    at += p.dim(0);
  }
  return out;
}

// (simulated device, page dtype)
class PagedKvCacheTest : public ::testing::TestWithParam<std::tuple<bool, DType>> {
 protected:
  void SetUp() override {
    if (std::get<0>(GetParam())) {
      backend_ = std::make_unique<testing::DeviceSimBackend>();
    } else {
      backend_ = std::make_unique<CpuBackend>();
    }
  }
  std::unique_ptr<Backend> backend_;
};

TEST_P(PagedKvCacheTest, ReserveCountsPagesAndRefusesWhenFull) {
  const DType dtype = std::get<1>(GetParam());
  PagedKvCache cache({.num_layers = 1, .num_kv_heads = kHeads, .head_dim = kDim, .page_size = kPage, .num_pages = 3,
                      .dtype = dtype},
                     *backend_);
  EXPECT_EQ(cache.config().page_bytes(), 2 * kPage * kHeads * kDim * static_cast<int64_t>(DTypeSize(dtype)) +
                                             (dtype == DType::kF8E4M3 ? 2 * kHeads * 4 : 0));
  EXPECT_EQ(cache.keys(0).dtype(), dtype);
  ASSERT_TRUE(cache.Reserve(0, 5).ok());  // 2 pages
  EXPECT_EQ(cache.free_pages(), 1);
  const absl::Status full = cache.Reserve(1, 5);
  EXPECT_EQ(full.code(), absl::StatusCode::kResourceExhausted) << full;
  EXPECT_EQ(cache.free_pages(), 1);  // nothing taken
  EXPECT_EQ(cache.Length(1), 0);
  // Room is counted from the committed length (0 here), not added to earlier reservations.
  EXPECT_EQ(cache.Reserve(0, 13).code(), absl::StatusCode::kResourceExhausted);  // 4 pages
  EXPECT_EQ(cache.free_pages(), 1);
  ASSERT_TRUE(cache.Reserve(0, 12).ok());  // 3 pages
  EXPECT_EQ(cache.free_pages(), 0);
  cache.Release(0);
  EXPECT_EQ(cache.free_pages(), 3);
  EXPECT_TRUE(cache.Reserve(1, 12).ok());
}

// A prefill of two sequences (6 and 3 tokens) then a decode step of one token each: walking the
// block tables over the pools finds every sequence's tokens in order, across pages that are not
// contiguous.
TEST_P(PagedKvCacheTest, PlannedWritesFollowTheBlockTables) {
  Backend& b = *backend_;
  const DType dtype = std::get<1>(GetParam());
  PagedKvCache cache({.num_layers = 2, .num_kv_heads = kHeads, .head_dim = kDim, .page_size = kPage, .num_pages = 6,
                      .dtype = dtype},
                     b);
  // What a page holds of value x: x itself in f32, x rounded to nearest even in bf16.
  // fp8: the page's scale of the element's head times its code (layer scales downloaded below).
  Tensor scales;
  auto stored = [&](const Tensor& pool, int64_t i) {
    if (dtype == DType::kF8E4M3) {
      const int64_t row = i / (kHeads * kDim), head = i % (kHeads * kDim) / kDim;
      return F8E4M3ToF32(pool.data<uint8_t>()[i]) * scales.data<float>()[(row / kPage) * kHeads + head];
    }
    return dtype == DType::kF32 ? pool.data<float>()[i] : BF16ToF32(pool.data<uint16_t>()[i]);
  };
  auto rounded = [&](float x) { return dtype == DType::kF32 ? x : BF16ToF32(F32ToBF16(x)); };
  // Within rounding: exact for f32 and bf16 (round to nearest even); fp8 keeps 3 mantissa bits
  // and may round twice when a page's scale grows (values here are 1000s apart from 0).
  auto expect_stored = [&](float got, float want, const std::string& where) {
    if (dtype == DType::kF8E4M3) {
      ASSERT_NEAR(got, want, std::fabs(want) * 0.13f) << where;
    } else {
      ASSERT_EQ(got, rounded(want)) << where;
    }
  };
  // Interleave the reservations so that each sequence's pages are not adjacent.
  ASSERT_TRUE(cache.Reserve(0, 3).ok());
  ASSERT_TRUE(cache.Reserve(1, 3).ok());
  ASSERT_TRUE(cache.Reserve(0, 6).ok());  // counts from the committed length (0): one more page
  const BlockTableCsr tables = cache.BlockTables({0, 1});
  ASSERT_EQ(tables.offsets, (std::vector<int64_t>{0, 2, 3}));
  EXPECT_NE(tables.pages[1], tables.pages[0] + 1);

  const std::vector<int64_t> seqs = {0, 1};
  auto step = [&](const std::vector<int64_t>& counts) {
    std::vector<int64_t> q_starts = {0};
    std::vector<Tensor> k, v;
    for (size_t i = 0; i < seqs.size(); ++i) {
      const int64_t first = cache.Length(seqs[i]);
      k.push_back(Rows(seqs[i], first, counts[i], 1.0f));
      v.push_back(Rows(seqs[i], first, counts[i], -1.0f));
      q_starts.push_back(q_starts.back() + counts[i]);
    }
    const KvStepPlan plan = cache.Plan(seqs, q_starts);
    for (int64_t layer = 0; layer < 2; ++layer) {
      const float scale = layer == 0 ? 1.0f : 2.0f;  // tell the layers apart
      Tensor ks = Stack(k), vs = Stack(v);
      for (int64_t i = 0; i < ks.numel(); ++i) ks.data<float>()[i] *= scale, vs.data<float>()[i] *= scale;
      cache.Write(layer, plan, Upload(b, ks), Upload(b, vs));
    }
    return plan;
  };
  // Walks each sequence's block table over the downloaded pools, as a paged attention does.
  auto check = [&](const KvStepPlan& plan, const std::vector<int64_t>& lengths) {
    ASSERT_EQ(plan.k_starts, (std::vector<int64_t>{0, lengths[0], lengths[0] + lengths[1]}));
    const Tensor tables = Download(b, plan.block_tables);  // [2, max_pages] i32
    ASSERT_EQ(tables.dim(0), 2);
    for (int64_t layer = 0; layer < 2; ++layer) {
      const float scale = layer == 0 ? 1.0f : 2.0f;
      const Tensor kh = Download(b, cache.keys(layer)), vh = Download(b, cache.values(layer));
      const Tensor k_scales = dtype == DType::kF8E4M3 ? Download(b, cache.key_scales(layer)) : Tensor();
      const Tensor v_scales = dtype == DType::kF8E4M3 ? Download(b, cache.value_scales(layer)) : Tensor();
      ASSERT_EQ(kh.shape(), Shape({6 * kPage, kHeads, kDim}));
      for (size_t s = 0; s < seqs.size(); ++s) {
        const Tensor want_k = Rows(seqs[s], 0, lengths[s], scale), want_v = Rows(seqs[s], 0, lengths[s], -scale);
        for (int64_t pos = 0; pos < lengths[s]; ++pos) {
          const int64_t row = tables.data<int32_t>()[s * tables.dim(1) + pos / kPage] * kPage + pos % kPage;
          for (int64_t e = 0; e < kHeads * kDim; ++e) {
            const std::string where = "layer " + std::to_string(layer) + " seq " + std::to_string(s) + " pos " +
                                      std::to_string(pos);
            scales = k_scales;
            expect_stored(stored(kh, row * kHeads * kDim + e), want_k.data<float>()[pos * kHeads * kDim + e], where);
            scales = v_scales;
            expect_stored(stored(vh, row * kHeads * kDim + e), want_v.data<float>()[pos * kHeads * kDim + e], where);
          }
        }
      }
    }
  };
  const KvStepPlan prefill = step({6, 3});
  check(prefill, {6, 3});  // the new tokens are readable before Commit
  cache.Commit(0, 6);
  cache.Commit(1, 3);
  ASSERT_TRUE(cache.Reserve(0, 1).ok());
  ASSERT_TRUE(cache.Reserve(1, 1).ok());
  const KvStepPlan decode = step({1, 1});
  check(decode, {7, 4});
  EXPECT_EQ(Download(b, decode.write_rows).numel(), 2);
}

INSTANTIATE_TEST_SUITE_P(Backends, PagedKvCacheTest,
                         ::testing::Combine(::testing::Values(false, true), ::testing::Values(DType::kF32, DType::kBF16, DType::kF8E4M3)),
                         [](const auto& info) {
                           return std::string(std::get<0>(info.param) ? "DeviceSim_" : "Cpu_") +
                                  std::string(DTypeName(std::get<1>(info.param)));
                         });

TEST(KvDtypeTest, ParsesTheStoredDtypesAndNamesTheChoices) {
  EXPECT_EQ(*ParseKvDtype("bf16"), DType::kBF16);
  EXPECT_EQ(*ParseKvDtype("f32"), DType::kF32);
  EXPECT_EQ(*ParseKvDtype("fp8"), DType::kF8E4M3);
  const absl::Status bad = ParseKvDtype("fp16").status();
  EXPECT_EQ(bad.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(bad.message().find("bf16, f32, fp8"), std::string::npos) << bad;
}

}  // namespace
}  // namespace q3vl::kv
