// Each CPU backend op against a naive loop over parameterised shapes.
#include <algorithm>
#include <array>
#include <cmath>
#include <numeric>

#include "core/cpu/cpu_backend.h"
#include "gtest/gtest.h"
#include "tests/test_util.h"

namespace q3vl {
namespace {

using testing::MaxAbsDiff;
using testing::RandomTensor;

class CpuOpsTest : public ::testing::TestWithParam<int64_t> {
 protected:
  CpuBackend backend_;
};

TEST_P(CpuOpsTest, GemmMatchesNaive) {
  const int64_t m = GetParam(), k = 37, n = 19;
  const Tensor a = RandomTensor({m, k}, 1), w = RandomTensor({n, k}, 2), bias = RandomTensor({n}, 3);
  Tensor out = Tensor::Empty(DType::kF32, {m, n});
  out.Fill(NAN);  // beta 0: out's contents are ignored
  backend_.Gemm({.a = a, .b = w, .bias = bias, .out = out});
  Tensor ref = Tensor::Empty(DType::kF32, {m, n});
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < n; ++j) {
      double s = bias.data<float>()[j];
      for (int64_t x = 0; x < k; ++x) s += a.data<float>()[i * k + x] * w.data<float>()[j * k + x];
      ref.data<float>()[i * n + j] = static_cast<float>(s);
    }
  EXPECT_LE(MaxAbsDiff(out, ref), 1e-4f);
}

TEST_P(CpuOpsTest, GroupedGemmSkipsEmptyGroups) {
  const int64_t rows = GetParam(), k = 8, n = 5;
  const Tensor a = RandomTensor({rows, k}, 4), w = RandomTensor({3, k, n}, 5);
  const std::vector<int64_t> offsets = {0, rows / 2, rows / 2, rows};  // group 1 empty
  Tensor out = Tensor::Empty(DType::kF32, {rows, n});
  backend_.GroupedGemm({.a = a, .weights = w, .offsets = offsets, .out = out});
  for (int64_t g = 0; g < 3; ++g)
    for (int64_t r = offsets[g]; r < offsets[g + 1]; ++r)
      for (int64_t j = 0; j < n; ++j) {
        float s = 0;
        for (int64_t x = 0; x < k; ++x) s += a.data<float>()[r * k + x] * w.data<float>()[(g * k + x) * n + j];
        EXPECT_NEAR(out.data<float>()[r * n + j], s, 1e-4f);
      }
}

// Offsets in the backend's memory give the host offsets' result; rows past the last offset
// are not written.
TEST_P(CpuOpsTest, GroupedGemmTakesDeviceOffsets) {
  const int64_t rows = GetParam(), k = 8, n = 5;
  const Tensor a = RandomTensor({rows + 2, k}, 4), w = RandomTensor({3, n, k}, 5);
  const std::vector<int64_t> offsets = {0, rows / 3, rows / 3, rows};
  Tensor want = Tensor::Empty(DType::kF32, {rows, n});
  backend_.GroupedGemm({.a = a.Slice(0, 0, rows), .weights = w, .offsets = offsets, .out = want,
                        .weights_transposed = true});
  Tensor device_offsets = Tensor::Empty(DType::kI64, {4});
  std::copy(offsets.begin(), offsets.end(), device_offsets.data<int64_t>());
  Tensor got = Tensor::Empty(DType::kF32, {rows + 2, n});
  got.Fill(-7.0f);
  backend_.GroupedGemm({.a = a, .weights = w, .out = got, .weights_transposed = true,
                        .device_offsets = device_offsets});
  EXPECT_EQ(MaxAbsDiff(got.Slice(0, 0, rows), want), 0.0f);
  for (int64_t i = rows * n; i < (rows + 2) * n; ++i) EXPECT_EQ(got.data<float>()[i], -7.0f);
}

// GroupByExpert against a stable sort of the pairs by local expert: other ranks' experts and
// out-of-range ids are dropped and leave zero padding at the end.
TEST_P(CpuOpsTest, GroupByExpertIsAStableSortByLocalExpert) {
  const int64_t tokens = GetParam(), top_k = 3, first = 2, local = 5;
  Tensor ids = Tensor::Empty(DType::kI32, {tokens, top_k});
  const Tensor weights = RandomTensor({tokens, top_k}, 9);
  for (int64_t i = 0; i < tokens * top_k; ++i) ids.data<int32_t>()[i] = static_cast<int32_t>((i * 7 + i / 5) % 9) - 1;
  Tensor offsets = Tensor::Empty(DType::kI64, {local + 1});
  Tensor source = Tensor::Empty(DType::kI64, {tokens * top_k}), row_weight = Tensor::Empty(DType::kF32, {tokens * top_k});
  backend_.GroupByExpert({.expert_ids = ids, .weights = weights, .first_expert = first, .offsets = offsets,
                          .source_token = source, .row_weight = row_weight});
  std::vector<int64_t> pairs;
  for (int64_t i = 0; i < tokens * top_k; ++i) {
    const int64_t e = ids.data<int32_t>()[i] - first;
    if (e >= 0 && e < local) pairs.push_back(i);
  }
  std::stable_sort(pairs.begin(), pairs.end(),
                   [&](int64_t x, int64_t y) { return ids.data<int32_t>()[x] < ids.data<int32_t>()[y]; });
  int64_t row = 0;
  for (int64_t e = 0; e < local; ++e) {
    EXPECT_EQ(offsets.data<int64_t>()[e], row) << "expert " << e;
    while (row < static_cast<int64_t>(pairs.size()) && ids.data<int32_t>()[pairs[row]] - first == e) ++row;
  }
  EXPECT_EQ(offsets.data<int64_t>()[local], static_cast<int64_t>(pairs.size()));
  for (int64_t r = 0; r < tokens * top_k; ++r) {
    const bool used = r < static_cast<int64_t>(pairs.size());
    EXPECT_EQ(source.data<int64_t>()[r], used ? pairs[r] / top_k : 0) << "row " << r;
    EXPECT_EQ(row_weight.data<float>()[r], used ? weights.data<float>()[pairs[r]] : 0.0f) << "row " << r;
  }
}

// TopK against a full sort, on a column slice of rows with many ties (values on a coarse grid).
TEST_P(CpuOpsTest, TopKIsASortByValueThenColumn) {
  const int64_t rows = GetParam(), ld = 40, width = 37;
  Tensor x = RandomTensor({rows, ld}, 10);
  for (int64_t i = 0; i < x.numel(); ++i) x.data<float>()[i] = std::round(x.data<float>()[i] * 2.0f) / 2.0f;
  for (const int64_t k : {int64_t{1}, int64_t{5}, width}) {
    Tensor values = Tensor::Empty(DType::kF32, {rows, k}), ids = Tensor::Empty(DType::kI32, {rows, k});
    backend_.TopK({.x = x.Slice(1, 0, width), .k = k, .values = values, .ids = ids});
    for (int64_t r = 0; r < rows; ++r) {
      const float* row = x.data<float>() + r * ld;
      std::vector<int32_t> order(width);
      std::iota(order.begin(), order.end(), 0);
      std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return row[a] > row[b]; });
      for (int64_t j = 0; j < k; ++j) {
        ASSERT_EQ(ids.data<int32_t>()[r * k + j], order[j]) << "row " << r << " k " << k << " rank " << j;
        ASSERT_EQ(values.data<float>()[r * k + j], row[order[j]]);
      }
    }
  }
}

// The fused residual add equals Add then RmsNorm bit for bit, and leaves the sum in x.
TEST_P(CpuOpsTest, RmsNormFusesTheResidualAdd) {
  const int64_t rows = GetParam(), d = 24;
  const Tensor x = RandomTensor({rows, d}, 11), delta = RandomTensor({rows, d}, 12), w = RandomTensor({d}, 13);
  Tensor sum = x.Clone(), want = Tensor::Empty(DType::kF32, {rows, d});
  backend_.Add({.a = sum, .b = delta, .out = sum});
  backend_.RmsNorm({.x = sum, .weight = w, .out = want, .eps = 1e-6f});
  Tensor fused_x = x.Clone(), got = Tensor::Empty(DType::kF32, {rows, d});
  backend_.RmsNorm({.x = fused_x, .weight = w, .out = got, .eps = 1e-6f, .residual = delta});
  EXPECT_EQ(MaxAbsDiff(fused_x, sum), 0.0f);
  EXPECT_EQ(MaxAbsDiff(got, want), 0.0f);
}

TEST_P(CpuOpsTest, NormsMatchNaive) {
  const int64_t rows = GetParam(), d = 24;
  const Tensor x = RandomTensor({rows, d}, 6), w = RandomTensor({d}, 7), b = RandomTensor({d}, 8);
  Tensor rms = Tensor::Empty(DType::kF32, {rows, d}), ln = Tensor::Empty(DType::kF32, {rows, d});
  backend_.RmsNorm({.x = x, .weight = w, .out = rms, .eps = 1e-6f});
  backend_.LayerNorm({.x = x, .weight = w, .bias = b, .out = ln, .eps = 1e-6f});
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x.data<float>() + r * d;
    double ss = 0, mean = 0, var = 0;
    for (int64_t j = 0; j < d; ++j) ss += xr[j] * xr[j], mean += xr[j];
    mean /= d;
    for (int64_t j = 0; j < d; ++j) var += (xr[j] - mean) * (xr[j] - mean);
    for (int64_t j = 0; j < d; ++j) {
      EXPECT_NEAR(rms.data<float>()[r * d + j], xr[j] / std::sqrt(ss / d + 1e-6) * w.data<float>()[j], 1e-5);
      EXPECT_NEAR(ln.data<float>()[r * d + j],
                  (xr[j] - mean) / std::sqrt(var / d + 1e-6) * w.data<float>()[j] + b.data<float>()[j], 1e-4);
    }
  }
}

TEST_P(CpuOpsTest, AttentionMatchesNaiveCausalGqa) {
  const int64_t nq = GetParam(), past = 3, heads = 4, kv_heads = 2, d = 8, nk = nq + past;
  const Tensor q = RandomTensor({nq, heads, d}, 9), k = RandomTensor({nk, kv_heads, d}, 10),
               v = RandomTensor({nk, kv_heads, d}, 11);
  Tensor out = Tensor::Empty(DType::kF32, {nq, heads, d});
  backend_.Attention({.q = q, .k = k, .v = v, .q_starts = {0, nq}, .k_starts = {0, nk}, .causal = true,
                      .scale = 0.5f, .out = out});
  for (int64_t i = 0; i < nq; ++i)
    for (int64_t h = 0; h < heads; ++h) {
      const int64_t g = h / (heads / kv_heads), visible = past + i + 1;
      std::vector<double> p(visible);
      double mx = -1e30, sum = 0;
      for (int64_t j = 0; j < visible; ++j) {
        double s = 0;
        for (int64_t x = 0; x < d; ++x) s += q.data<float>()[(i * heads + h) * d + x] * k.data<float>()[(j * kv_heads + g) * d + x];
        p[j] = 0.5 * s;
        mx = std::max(mx, p[j]);
      }
      for (auto& e : p) sum += e = std::exp(e - mx);
      for (int64_t x = 0; x < d; ++x) {
        double o = 0;
        for (int64_t j = 0; j < visible; ++j) o += p[j] / sum * v.data<float>()[(j * kv_heads + g) * d + x];
        EXPECT_NEAR(out.data<float>()[(i * heads + h) * d + x], o, 1e-5);
      }
    }
}

// A paged copy of packed keys and values (sequences at k_starts): a pool of `pool_pages` random
// pages, each sequence's pages taken from the end of the pool backwards, and its block tables.
struct PagedKv {
  Tensor k_pool, v_pool, tables;
};
PagedKv ScatterIntoPages(const Tensor& k, const Tensor& v, const std::vector<int64_t>& k_starts, int64_t page,
                         int64_t pool_pages, uint32_t seed) {
  const int64_t seqs = static_cast<int64_t>(k_starts.size()) - 1, kv_heads = k.dim(1), d = k.dim(2);
  int64_t max_pages = 0;
  for (int64_t s = 0; s < seqs; ++s) max_pages = std::max(max_pages, (k_starts[s + 1] - k_starts[s] + page - 1) / page);
  PagedKv p{.k_pool = RandomTensor({pool_pages * page, kv_heads, d}, seed),
            .v_pool = RandomTensor({pool_pages * page, kv_heads, d}, seed + 1),
            .tables = Tensor::Empty(DType::kI32, {seqs, max_pages})};
  int32_t next_page = static_cast<int32_t>(pool_pages) - 1;
  for (int64_t s = 0; s < seqs; ++s) {
    const int64_t nk = k_starts[s + 1] - k_starts[s];
    for (int64_t j = 0; j < (nk + page - 1) / page; ++j) p.tables.data<int32_t>()[s * max_pages + j] = next_page--;
    for (int64_t j = 0; j < nk; ++j) {
      const int64_t row = p.tables.data<int32_t>()[s * max_pages + j / page] * page + j % page;
      p.k_pool.Select(row).CopyFrom(k.Select(k_starts[s] + j));
      p.v_pool.Select(row).CopyFrom(v.Select(k_starts[s] + j));
    }
  }
  return p;
}

// Paged keys and values (a page pool and block tables) give exactly the packed result: three
// sequences (a prefill chunk after cached context, a decode token, an empty one), pages
// scattered over the pool, lengths that do not fill their last page.
TEST_P(CpuOpsTest, PagedAttentionEqualsPacked) {
  const int64_t extra = GetParam(), heads = 4, kv_heads = 2, d = 8, page = 4;
  const std::vector<int64_t> nq = {extra, 1, 0}, nk = {extra + 5, 9, 0};
  const int64_t max_pages = (std::max<int64_t>(extra + 5, 9) + page - 1) / page, pool_pages = 2 * max_pages + 3;
  std::vector<int64_t> q_starts = {0}, k_starts = {0};
  for (size_t s = 0; s < nq.size(); ++s) {
    q_starts.push_back(q_starts.back() + nq[s]);
    k_starts.push_back(k_starts.back() + nk[s]);
  }
  const Tensor q = RandomTensor({q_starts.back(), heads, d}, 30);
  const Tensor k = RandomTensor({k_starts.back(), kv_heads, d}, 31), v = RandomTensor({k_starts.back(), kv_heads, d}, 32);
  const PagedKv paged_kv = ScatterIntoPages(k, v, k_starts, page, pool_pages, 33);
  Tensor packed = Tensor::Empty(DType::kF32, {q_starts.back(), heads, d});
  Tensor paged = Tensor::Empty(DType::kF32, {q_starts.back(), heads, d});
  backend_.Attention({.q = q, .k = k, .v = v, .q_starts = q_starts, .k_starts = k_starts, .causal = true,
                      .scale = 0.3f, .out = packed});
  backend_.Attention({.q = q, .k = paged_kv.k_pool, .v = paged_kv.v_pool, .q_starts = q_starts, .k_starts = k_starts,
                      .causal = true, .scale = 0.3f, .out = paged, .block_tables = paged_kv.tables, .page_size = page});
  EXPECT_EQ(MaxAbsDiff(paged, packed), 0.0f);
}

// bf16 pages (a bf16 KV cache) are widened exactly: the result equals f32 pages holding the same
// bf16-rounded values, bit for bit. The pages are written by ScatterAddRows' bf16 store.
TEST_P(CpuOpsTest, Bf16PagedAttentionEqualsF32PagesOfTheRoundedValues) {
  const int64_t extra = GetParam(), heads = 4, kv_heads = 2, d = 8, page = 4;
  const std::vector<int64_t> q_starts = {0, extra, extra + 1}, k_starts = {0, extra + 5, extra + 14};
  const int64_t pool_pages = (extra + 5 + page - 1) / page + 3 + 2;
  const Tensor q = RandomTensor({q_starts.back(), heads, d}, 40);
  Tensor k = RandomTensor({k_starts.back(), kv_heads, d}, 41), v = RandomTensor({k_starts.back(), kv_heads, d}, 42);
  for (Tensor* t : {&k, &v}) {  // the values a bf16 page can hold
    for (int64_t i = 0; i < t->numel(); ++i) t->data<float>()[i] = BF16ToF32(F32ToBF16(t->data<float>()[i]));
  }
  const PagedKv f32 = ScatterIntoPages(k, v, k_starts, page, pool_pages, 43);
  // The same pages in bf16: every row of the f32 pools stored through ScatterAddRows.
  const int64_t pool_rows = pool_pages * page, width = kv_heads * d;
  std::vector<int64_t> all_rows(pool_rows);
  for (int64_t i = 0; i < pool_rows; ++i) all_rows[i] = i;
  const Tensor ids = Tensor::FromVectorI64(all_rows, {pool_rows});
  Tensor k16 = Tensor::Empty(DType::kBF16, {pool_rows, kv_heads, d}), v16 = Tensor::Empty(DType::kBF16, {pool_rows, kv_heads, d});
  backend_.ScatterAddRows({.src = f32.k_pool.Reshape({pool_rows, width}), .ids = ids, .out = k16.Reshape({pool_rows, width}),
                           .accumulate = false});
  backend_.ScatterAddRows({.src = f32.v_pool.Reshape({pool_rows, width}), .ids = ids, .out = v16.Reshape({pool_rows, width}),
                           .accumulate = false});
  Tensor from_f32 = Tensor::Empty(DType::kF32, {q_starts.back(), heads, d});
  Tensor from_bf16 = Tensor::Empty(DType::kF32, {q_starts.back(), heads, d});
  backend_.Attention({.q = q, .k = f32.k_pool, .v = f32.v_pool, .q_starts = q_starts, .k_starts = k_starts,
                      .causal = true, .scale = 0.3f, .out = from_f32, .block_tables = f32.tables, .page_size = page});
  backend_.Attention({.q = q, .k = k16, .v = v16, .q_starts = q_starts, .k_starts = k_starts, .causal = true,
                      .scale = 0.3f, .out = from_bf16, .block_tables = f32.tables, .page_size = page});
  EXPECT_EQ(MaxAbsDiff(from_bf16, from_f32), 0.0f);
  EXPECT_NE(from_bf16.data<float>()[0], 0.0f);
  // A bf16 store rounds to nearest even and refuses to accumulate.
  Tensor one = Tensor::Empty(DType::kBF16, {1, 1});
  const float x = 1.0f + 3.0f / 256.0f;  // between bf16 neighbours 1 + 2/256 and 1 + 4/256: ties to even
  backend_.ScatterAddRows({.src = Tensor::FromVector(std::vector<float>{x}, {1, 1}),
                           .ids = Tensor::FromVectorI64({0}, {1}), .out = one, .accumulate = false});
  EXPECT_EQ(BF16ToF32(one.data<uint16_t>()[0]), 1.0f + 4.0f / 256.0f);
  EXPECT_DEATH(backend_.ScatterAddRows({.src = Tensor::FromVector(std::vector<float>{x}, {1, 1}),
                                        .ids = Tensor::FromVectorI64({0}, {1}), .out = one}),
               "accumulates into f32 only");
}

// fp8 pages written by WriteKvFp8 (a scale per page and KV head, grown as larger rows arrive)
// read back as code x scale: attention over them equals attention over f32 pages holding those
// values, bit for bit; and they stay within e4m3's rounding of what was written.
TEST_P(CpuOpsTest, Fp8PagedAttentionEqualsF32PagesOfTheDequantisedValues) {
  const int64_t extra = GetParam(), heads = 4, kv_heads = 2, d = 8, page = 4;
  const std::vector<int64_t> q_starts = {0, extra, extra + 1}, k_starts = {0, extra + 5, extra + 14};
  const int64_t pool_pages = (extra + 5 + page - 1) / page + 3 + 2, pool_rows = pool_pages * page, width = kv_heads * d;
  const Tensor q = RandomTensor({q_starts.back(), heads, d}, 50);
  Tensor k = RandomTensor({k_starts.back(), kv_heads, d}, 51), v = RandomTensor({k_starts.back(), kv_heads, d}, 52);
  for (int64_t i = 0; i < k.numel(); i += 7) k.data<float>()[i] *= 9.0f;  // rows that grow a page's scale
  const PagedKv f32 = ScatterIntoPages(k, v, k_starts, page, pool_pages, 53);
  // Every pool row through WriteKvFp8, in order (pages are filled from offset 0).
  std::vector<int64_t> all_rows(pool_rows);
  for (int64_t i = 0; i < pool_rows; ++i) all_rows[i] = i;
  const Tensor ids = Tensor::FromVectorI64(all_rows, {pool_rows});
  Tensor k8 = Tensor::Empty(DType::kF8E4M3, {pool_rows, kv_heads, d}), v8 = Tensor::Empty(DType::kF8E4M3, {pool_rows, kv_heads, d});
  Tensor ks = Tensor::Empty(DType::kF32, {pool_pages, kv_heads}), vs = Tensor::Empty(DType::kF32, {pool_pages, kv_heads});
  backend_.WriteKvFp8({.src = f32.k_pool.Reshape({pool_rows, width}), .rows = ids, .pool = k8.Reshape({pool_rows, width}),
                       .scale = ks, .page_size = page});
  backend_.WriteKvFp8({.src = f32.v_pool.Reshape({pool_rows, width}), .rows = ids, .pool = v8.Reshape({pool_rows, width}),
                       .scale = vs, .page_size = page});
  auto dequantised = [&](const Tensor& codes, const Tensor& scales) {
    Tensor out = Tensor::Empty(DType::kF32, {pool_rows, kv_heads, d});
    for (int64_t i = 0; i < out.numel(); ++i) {
      const int64_t row = i / width, head = i % width / d;
      out.data<float>()[i] = F8E4M3ToF32(codes.data<uint8_t>()[i]) * scales.data<float>()[(row / page) * kv_heads + head];
    }
    return out;
  };
  const Tensor kd = dequantised(k8, ks), vd = dequantised(v8, vs);
  for (int64_t i = 0; i < kd.numel(); ++i) {
    const float want = f32.k_pool.data<float>()[i];
    ASSERT_NEAR(kd.data<float>()[i], want, std::fabs(want) * 0.13f + 1e-6f) << i;
  }
  Tensor from_f32 = Tensor::Empty(DType::kF32, {q_starts.back(), heads, d});
  Tensor from_fp8 = Tensor::Empty(DType::kF32, {q_starts.back(), heads, d});
  backend_.Attention({.q = q, .k = kd, .v = vd, .q_starts = q_starts, .k_starts = k_starts, .causal = true,
                      .scale = 0.3f, .out = from_f32, .block_tables = f32.tables, .page_size = page});
  backend_.Attention({.q = q, .k = k8, .v = v8, .q_starts = q_starts, .k_starts = k_starts, .causal = true,
                      .scale = 0.3f, .out = from_fp8, .block_tables = f32.tables, .page_size = page, .k_scale = ks,
                      .v_scale = vs});
  EXPECT_EQ(MaxAbsDiff(from_fp8, from_f32), 0.0f);
}

TEST_P(CpuOpsTest, RouterPicksTopKWithLowerIndexOnTies) {
  const int64_t tokens = GetParam(), experts = 6;
  Tensor logits = RandomTensor({tokens, experts}, 12);
  logits.data<float>()[1] = logits.data<float>()[2] = 5.0f;  // tie in row 0
  Tensor ids = Tensor::Empty(DType::kI32, {tokens, 2}), w = Tensor::Empty(DType::kF32, {tokens, 2});
  backend_.Router({.logits = logits, .top_k = 2, .renormalize = true, .expert_ids = ids, .weights = w});
  EXPECT_EQ(ids.data<int32_t>()[0], 1);
  EXPECT_EQ(ids.data<int32_t>()[1], 2);
  for (int64_t t = 0; t < tokens; ++t) EXPECT_NEAR(w.data<float>()[2 * t] + w.data<float>()[2 * t + 1], 1.0f, 1e-6f);
}

TEST_P(CpuOpsTest, RopeRotatesPairsHalfApart) {
  const int64_t t = GetParam(), heads = 2, d = 6;
  Tensor x = RandomTensor({t, heads, d}, 13);
  const Tensor orig = x.Clone();
  const Tensor cos = RandomTensor({t, d}, 14), sin = RandomTensor({t, d}, 15);
  backend_.Rope({.x = x, .cos = cos, .sin = sin});
  for (int64_t i = 0; i < t; ++i)
    for (int64_t h = 0; h < heads; ++h)
      for (int64_t j = 0; j < d; ++j) {
        const float* o = orig.data<float>() + (i * heads + h) * d;
        const float rot = j < d / 2 ? -o[j + d / 2] : o[j - d / 2];
        EXPECT_NEAR(x.data<float>()[(i * heads + h) * d + j],
                    o[j] * cos.data<float>()[i * d + j] + rot * sin.data<float>()[i * d + j], 1e-5);
      }
}

TEST_P(CpuOpsTest, ActivationsMatchFormulas) {
  const int64_t rows = GetParam();
  const Tensor x = RandomTensor({rows, 8}, 16, 3.0f);
  Tensor silu = Tensor::Empty(DType::kF32, {rows, 4}), tanh_out = Tensor::Empty(DType::kF32, {rows, 8}),
         erf_out = Tensor::Empty(DType::kF32, {rows, 8});
  backend_.Activation({.kind = ActivationKind::kSiluMul, .x = x, .out = silu});
  backend_.Activation({.kind = ActivationKind::kGeluTanh, .x = x, .out = tanh_out});
  backend_.Activation({.kind = ActivationKind::kGeluErf, .x = x, .out = erf_out});
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t j = 0; j < 8; ++j) {
      const double u = x.data<float>()[r * 8 + j];
      EXPECT_NEAR(erf_out.data<float>()[r * 8 + j], 0.5 * u * (1 + std::erf(u / std::sqrt(2.0))), 1e-5);
      EXPECT_NEAR(tanh_out.data<float>()[r * 8 + j],
                  0.5 * u * (1 + std::tanh(std::sqrt(2 / M_PI) * (u + 0.044715 * u * u * u))), 1e-5);
      if (j < 4) {
        const double g = u, up = x.data<float>()[r * 8 + j + 4];
        EXPECT_NEAR(silu.data<float>()[r * 4 + j], g / (1 + std::exp(-g)) * up, 1e-5);
      }
    }
}

// Rows wide enough for the vectorised loops (AVX-512, AVX2 or SSE variants of libmvec's expf,
// tanhf and erff) with tails, over [-12, 12] plus zeros and values where exp overflows.
TEST(CpuActivationTest, WideRowsMatchFormulas) {
  CpuBackend backend;
  const int64_t rows = 3, width = 2 * 1003;
  Tensor x = RandomTensor({rows, width}, 18, 12.0f);
  for (const int64_t i : {0, 1, 2, 3}) x.data<float>()[i * 517] = std::array<float, 4>{0.0f, -0.0f, 95.0f, -95.0f}[i];
  Tensor silu = Tensor::Empty(DType::kF32, {rows, width / 2}), tanh_out = Tensor::Empty(DType::kF32, {rows, width}),
         erf_out = Tensor::Empty(DType::kF32, {rows, width});
  backend.Activation({.kind = ActivationKind::kSiluMul, .x = x, .out = silu});
  backend.Activation({.kind = ActivationKind::kGeluTanh, .x = x, .out = tanh_out});
  backend.Activation({.kind = ActivationKind::kGeluErf, .x = x, .out = erf_out});
  const auto close = [](double got, double want) { return std::fabs(got - want) <= 1e-6 + 2e-6 * std::fabs(want); };
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t j = 0; j < width; ++j) {
      const double u = x.data<float>()[r * width + j];
      const double erf_want = 0.5 * u * (1 + std::erf(u / std::sqrt(2.0)));
      const double tanh_want = 0.5 * u * (1 + std::tanh(std::sqrt(2 / M_PI) * (u + 0.044715 * u * u * u)));
      ASSERT_TRUE(close(erf_out.data<float>()[r * width + j], erf_want)) << "erf at " << u;
      ASSERT_TRUE(close(tanh_out.data<float>()[r * width + j], tanh_want)) << "tanh at " << u;
      if (j < width / 2) {
        const double up = x.data<float>()[r * width + j + width / 2];
        ASSERT_TRUE(close(silu.data<float>()[r * width / 2 + j], u / (1 + std::exp(-u)) * up)) << "silu at " << u;
      }
    }
  }
}

TEST_P(CpuOpsTest, GatherAndScatterRows) {
  const int64_t n = GetParam();
  const Tensor table = RandomTensor({5, 3}, 17);
  std::vector<int64_t> idv(n);
  for (int64_t i = 0; i < n; ++i) idv[i] = (i * 3) % 5;
  const Tensor ids = Tensor::FromVectorI64(idv, {n});
  Tensor rows = Tensor::Empty(DType::kF32, {n, 3});
  backend_.GatherRows({.table = table, .ids = ids, .out = rows});
  Tensor acc = Tensor::Empty(DType::kF32, {5, 3});
  backend_.ScatterAddRows({.src = rows, .ids = ids, .out = acc});
  for (int64_t r = 0; r < 5; ++r) {
    const int64_t count = std::count(idv.begin(), idv.end(), r);
    for (int64_t j = 0; j < 3; ++j) EXPECT_NEAR(acc.data<float>()[r * 3 + j], count * table.data<float>()[r * 3 + j], 1e-5);
  }
}

INSTANTIATE_TEST_SUITE_P(Sizes, CpuOpsTest, ::testing::Values(1, 7, 130));

// Non-causal queries with no keys at all get zero rows (the output is not left as it was).
TEST(CpuAttentionTest, QueriesWithoutKeysGetZeros) {
  CpuBackend backend;
  const Tensor q = RandomTensor({3, 4, 8}, 50), k = RandomTensor({1, 2, 8}, 51), v = RandomTensor({1, 2, 8}, 52);
  Tensor out = Tensor::Empty(DType::kF32, {3, 4, 8});
  out.Fill(NAN);
  // Sequence 0: two queries, no keys; sequence 1: one query, one key.
  backend.Attention({.q = q, .k = k, .v = v, .q_starts = {0, 2, 3}, .k_starts = {0, 0, 1}, .causal = false,
                     .scale = 0.5f, .out = out});
  for (int64_t i = 0; i < 2 * 4 * 8; ++i) ASSERT_EQ(out.data<float>()[i], 0.0f) << i;
  for (int64_t h = 0; h < 4; ++h) {  // one key: the output is its value
    for (int64_t x = 0; x < 8; ++x) {
      EXPECT_NEAR(out.data<float>()[(2 * 4 + h) * 8 + x], v.data<float>()[(h / 2) * 8 + x], 1e-6);
    }
  }
}

// Contexts longer than one key tile (the online softmax's 1024 keys), with keys whose scale
// grows along the sequence so that later tiles raise the running max: a prefill chunk after
// 2500 cached keys, a decode token over 1030, and (non-causal, as in the vision tower) 1100
// queries over their own 1100 keys; packed, and paged over scattered pages.
TEST(CpuAttentionTest, ManyKeyTilesMatchNaive) {
  CpuBackend backend;
  const int64_t heads = 4, kv_heads = 2, d = 16, page = 16;
  for (const bool causal : {true, false}) {
    const std::vector<int64_t> nq = causal ? std::vector<int64_t>{5, 1} : std::vector<int64_t>{1100};
    const std::vector<int64_t> nk = causal ? std::vector<int64_t>{2505, 1030} : std::vector<int64_t>{1100};
    std::vector<int64_t> q_starts = {0}, k_starts = {0};
    for (size_t s = 0; s < nq.size(); ++s) {
      q_starts.push_back(q_starts.back() + nq[s]);
      k_starts.push_back(k_starts.back() + nk[s]);
    }
    const Tensor q = RandomTensor({q_starts.back(), heads, d}, 40);
    Tensor k = RandomTensor({k_starts.back(), kv_heads, d}, 41);
    const Tensor v = RandomTensor({k_starts.back(), kv_heads, d}, 42);
    for (int64_t s = 0; s < static_cast<int64_t>(nk.size()); ++s) {
      for (int64_t j = 0; j < nk[s]; ++j) {
        float* row = k.data<float>() + (k_starts[s] + j) * kv_heads * d;
        for (int64_t x = 0; x < kv_heads * d; ++x) row[x] *= 1.0f + static_cast<float>(j) / 400.0f;
      }
    }
    const float scale = 0.25f;
    int64_t pool_pages = 0;
    for (int64_t n : nk) pool_pages += (n + page - 1) / page;
    const PagedKv paged_kv = ScatterIntoPages(k, v, k_starts, page, pool_pages, 43);
    Tensor packed = Tensor::Empty(DType::kF32, {q_starts.back(), heads, d});
    Tensor paged = Tensor::Empty(DType::kF32, {q_starts.back(), heads, d});
    backend.Attention({.q = q, .k = k, .v = v, .q_starts = q_starts, .k_starts = k_starts, .causal = causal,
                       .scale = scale, .out = packed});
    backend.Attention({.q = q, .k = paged_kv.k_pool, .v = paged_kv.v_pool, .q_starts = q_starts, .k_starts = k_starts,
                       .causal = causal, .scale = scale, .out = paged, .block_tables = paged_kv.tables,
                       .page_size = page});
    EXPECT_EQ(MaxAbsDiff(paged, packed), 0.0f) << (causal ? "causal" : "non-causal");
    double worst = 0;
    for (int64_t s = 0; s < static_cast<int64_t>(nq.size()); ++s) {
      for (int64_t i = 0; i < nq[s]; ++i) {
        const int64_t visible = causal ? nk[s] - nq[s] + i + 1 : nk[s];
        for (int64_t h = 0; h < heads; ++h) {
          const int64_t g = h / (heads / kv_heads);
          const float* qi = q.data<float>() + ((q_starts[s] + i) * heads + h) * d;
          std::vector<double> p(visible);
          double mx = -1e300, sum = 0;
          for (int64_t j = 0; j < visible; ++j) {
            const float* kj = k.data<float>() + ((k_starts[s] + j) * kv_heads + g) * d;
            double dot = 0;
            for (int64_t x = 0; x < d; ++x) dot += double{qi[x]} * kj[x];
            p[j] = scale * dot;
            mx = std::max(mx, p[j]);
          }
          for (double& e : p) sum += e = std::exp(e - mx);
          for (int64_t x = 0; x < d; ++x) {
            double o = 0;
            for (int64_t j = 0; j < visible; ++j) o += p[j] / sum * v.data<float>()[((k_starts[s] + j) * kv_heads + g) * d + x];
            worst = std::max(worst, std::fabs(packed.data<float>()[((q_starts[s] + i) * heads + h) * d + x] - o));
          }
        }
      }
    }
    EXPECT_LE(worst, 2e-5) << (causal ? "causal" : "non-causal");
  }
}

}  // namespace
}  // namespace q3vl
