// The CUDA backend op by op against the CPU reference (ggml's test-backend-ops is the model):
// every op over parameterised shapes, in f32 and bf16, with the same inputs on both sides (bf16
// inputs are rounded on the host first, so differences come from the arithmetic alone). Labelled
// gpu; without a device every test skips with the reason, and ctest reports it as skipped.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "core/cpu/cpu_backend.h"
#include "core/cuda/cuda_backend.h"
#include "gtest/gtest.h"

namespace q3vl::cuda {
namespace {

#define Q3VL_REQUIRE_GPU()                                                            \
  do {                                                                                \
    if (DeviceCount() == 0) GTEST_SKIP() << "no CUDA device visible: GPU tests skipped"; \
  } while (0)

Tensor Random(Shape shape, uint32_t seed, float scale = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, scale);
  Tensor t = Tensor::Empty(DType::kF32, shape);
  for (int64_t i = 0; i < t.numel(); ++i) t.data<float>()[i] = dist(rng);
  return t;
}

// `t` (host f32) rounded to `dtype` and back: what both backends see.
Tensor Rounded(const Tensor& t, DType dtype) {
  if (dtype == DType::kF32) return t;
  Tensor out = Tensor::Empty(DType::kF32, t.shape());
  for (int64_t i = 0; i < t.numel(); ++i) out.data<float>()[i] = BF16ToF32(F32ToBF16(t.data<float>()[i]));
  return out;
}

Tensor AsDType(const Tensor& t, DType dtype) {
  if (dtype == DType::kF32) return t;
  Tensor out = Tensor::Empty(DType::kBF16, t.shape());
  for (int64_t i = 0; i < t.numel(); ++i) out.data<uint16_t>()[i] = F32ToBF16(t.data<float>()[i]);
  return out;
}

class CudaOpsTest : public ::testing::TestWithParam<DType> {
 protected:
  void SetUp() override {
    Q3VL_REQUIRE_GPU();
    auto created = CudaBackend::Create();
    ASSERT_TRUE(created.ok()) << created.status();
    gpu_ = *std::move(created);
  }
  DType dtype() const { return GetParam(); }
  // Host f32 -> device tensor of the test's dtype.
  Tensor Up(const Tensor& host_f32) { return gpu_->ToDevice(AsDType(host_f32, dtype())); }
  Tensor UpF32(const Tensor& host_f32) { return gpu_->ToDevice(host_f32); }
  Tensor Down(const Tensor& device) {
    gpu_->Synchronize();
    return gpu_->ToHost(device).ToF32();
  }
  // max |got - want| <= rel * max |want| + abs.
  void ExpectClose(const Tensor& got, const Tensor& want, double rel, double abs = 1e-6) {
    ASSERT_EQ(got.shape(), want.shape());
    double max_want = 0.0, max_diff = 0.0;
    int64_t worst = 0;
    for (int64_t i = 0; i < want.numel(); ++i) {
      max_want = std::max(max_want, std::fabs(static_cast<double>(want.data<float>()[i])));
      const double diff = std::fabs(static_cast<double>(got.data<float>()[i]) - want.data<float>()[i]);
      if (diff > max_diff || std::isnan(diff)) {
        max_diff = std::isnan(diff) ? INFINITY : diff;
        worst = i;
      }
    }
    EXPECT_LE(max_diff, rel * max_want + abs) << "at element " << worst << ": got " << got.data<float>()[worst]
                                               << ", want " << want.data<float>()[worst];
  }
  // Tolerance of an op whose output is stored in the test's dtype.
  double OutputTolerance() const { return dtype() == DType::kF32 ? 1e-5 : 1.6e-2; }

  CpuBackend cpu_;
  std::unique_ptr<CudaBackend> gpu_;
};

struct GemmShape {
  int64_t m, n, k;
};

TEST_P(CudaOpsTest, GemmMatchesCpu) {
  for (const GemmShape s : {GemmShape{1, 64, 128}, GemmShape{7, 96, 64}, GemmShape{33, 257, 130},
                            GemmShape{256, 512, 384}, GemmShape{1, 4096, 512}}) {
    for (const bool transposed : {true, false}) {
      for (const bool with_bias : {false, true}) {
        SCOPED_TRACE(testing::Message() << s.m << "x" << s.n << "x" << s.k << " transposed " << transposed
                                        << " bias " << with_bias);
        const Tensor a = Rounded(Random({s.m, s.k}, 1), dtype());
        const Tensor b = Rounded(transposed ? Random({s.n, s.k}, 2, 0.1f) : Random({s.k, s.n}, 2, 0.1f), dtype());
        const Tensor bias = Random({s.n}, 3);
        const Tensor init = Random({s.m, s.n}, 4);
        Tensor want = init.Clone();
        cpu_.Gemm({.a = a, .b = b, .bias = with_bias ? bias : Tensor(), .out = want, .b_transposed = transposed,
                   .beta = 0.5f});
        Tensor out = UpF32(init);  // f32 output: the comparison sees the accumulation only
        gpu_->Gemm({.a = Up(a), .b = Up(b), .bias = with_bias ? UpF32(bias) : Tensor(), .out = out,
                    .b_transposed = transposed, .beta = 0.5f});
        ExpectClose(Down(out), want, dtype() == DType::kF32 ? 1e-5 : 1e-4, 1e-5);
      }
    }
  }
}

TEST_P(CudaOpsTest, GemmWritesIntoAColumnSlice) {
  // [gate | up] halves written by two GEMMs, as the dense MLP does.
  const int64_t m = 5, k = 64, inter = 48;
  const Tensor x = Rounded(Random({m, k}, 5), dtype());
  const Tensor w1 = Rounded(Random({inter, k}, 6, 0.1f), dtype()), w2 = Rounded(Random({inter, k}, 7, 0.1f), dtype());
  Tensor want = Tensor::Empty(DType::kF32, {m, 2 * inter});
  Tensor left = want.Slice(1, 0, inter), right = want.Slice(1, inter, 2 * inter);
  cpu_.Gemm({.a = x, .b = w1, .out = left});
  cpu_.Gemm({.a = x, .b = w2, .out = right});
  Tensor out = gpu_->Allocate(DType::kF32, {m, 2 * inter});
  const Tensor dx = Up(x);
  gpu_->Gemm({.a = dx, .b = Up(w1), .out = out.Slice(1, 0, inter)});
  gpu_->Gemm({.a = dx, .b = Up(w2), .out = out.Slice(1, inter, 2 * inter)});
  ExpectClose(Down(out), want, 1e-4, 1e-5);
}

TEST_P(CudaOpsTest, GroupedGemmSkipsEmptyGroups) {
  const int64_t k = 96, n = 80;
  const std::vector<int64_t> offsets = {0, 3, 3, 10, 10, 11};  // groups 1 and 3 are empty
  for (const bool transposed : {false, true}) {
    const Tensor a = Rounded(Random({11, k}, 8), dtype());
    const Tensor w = Rounded(transposed ? Random({5, n, k}, 9, 0.1f) : Random({5, k, n}, 9, 0.1f), dtype());
    Tensor want = Tensor::Empty(DType::kF32, {11, n});
    cpu_.GroupedGemm({.a = a, .weights = w, .offsets = offsets, .out = want, .weights_transposed = transposed});
    Tensor out = gpu_->Allocate(DType::kF32, {11, n});
    gpu_->GroupedGemm({.a = Up(a), .weights = Up(w), .offsets = offsets, .out = out, .weights_transposed = transposed});
    ExpectClose(Down(out), want, 1e-4, 1e-5);
  }
}

// Offsets in device memory, as the MoE layer passes them: few rows per group go through the
// GEMV kernel, many through one sync and cuBLASLt. Activations stay f32 (the decoder's), weights
// take the test's dtype; rows past the last offset are not written.
TEST_P(CudaOpsTest, GroupedGemmTakesDeviceOffsets) {
  struct Case {
    int64_t n, k;
    std::vector<int64_t> counts;  // rows per group
  };
  const std::vector<Case> cases = {
      {70, 264, {1, 0, 5, 9, 0, 4, 2}},                 // ragged n and k; a group of 9 takes 3 passes
      {1536, 4096, {1, 0, 0, 2, 1, 0, 3, 0, 1, 0, 0, 0, 1, 0, 0, 1}},  // the EP8 shard's gate_up at decode
      {96, 64, {40, 0, 33}},                            // more than 8 rows per group: the cuBLASLt path
  };
  for (const Case& c : cases) {
    std::vector<int64_t> offsets = {0};
    for (int64_t count : c.counts) offsets.push_back(offsets.back() + count);
    const int64_t groups = static_cast<int64_t>(c.counts.size()), rows = offsets.back();
    const Tensor a = Rounded(Random({rows + 3, c.k}, 30), dtype());
    const Tensor w = Rounded(Random({groups, c.n, c.k}, 31, 0.05f), dtype());
    Tensor want = Tensor::Empty(DType::kF32, {rows + 3, c.n});  // zeros: rows past the groups stay so
    Tensor head = want.Slice(0, 0, rows);
    cpu_.GroupedGemm({.a = a.Slice(0, 0, rows), .weights = w, .offsets = offsets, .out = head,
                      .weights_transposed = true});
    Tensor device_offsets = Tensor::FromVectorI64(offsets, {groups + 1});
    Tensor out = gpu_->Allocate(DType::kF32, {rows + 3, c.n});
    gpu_->GroupedGemm({.a = UpF32(a), .weights = Up(w), .out = out, .weights_transposed = true,
                       .device_offsets = gpu_->ToDevice(device_offsets)});
    SCOPED_TRACE(testing::Message() << "n " << c.n << " k " << c.k << " rows " << rows);
    ExpectClose(Down(out), want, 1e-4, 1e-5);
  }
}

// The routing grouped on the device equals the CPU's counting sort exactly: decode's handful
// of pairs, and a prefill chunk whose pairs mostly belong to other ranks' experts.
TEST_P(CudaOpsTest, GroupByExpertMatchesCpu) {
  struct Case {
    int64_t tokens, top_k, first_expert, experts, id_range;
  };
  for (const Case& c : {Case{16, 8, 0, 128, 128}, Case{1, 8, 0, 128, 128}, Case{5000, 8, 32, 16, 130},
                        Case{3, 2, 0, 1024, 1024}, Case{0, 8, 0, 128, 128}}) {
    std::mt19937 rng(static_cast<uint32_t>(c.tokens + c.experts));
    Tensor ids = Tensor::Empty(DType::kI32, {c.tokens, c.top_k});
    for (int64_t i = 0; i < ids.numel(); ++i) ids.data<int32_t>()[i] = static_cast<int32_t>(rng() % c.id_range) - 1;
    const Tensor weights = Random({c.tokens, c.top_k}, 32);
    const int64_t pairs = c.tokens * c.top_k;
    Tensor offsets = Tensor::Empty(DType::kI64, {c.experts + 1});
    Tensor source = Tensor::Empty(DType::kI64, {pairs}), row_weight = Tensor::Empty(DType::kF32, {pairs});
    cpu_.GroupByExpert({.expert_ids = ids, .weights = weights, .first_expert = c.first_expert, .offsets = offsets,
                        .source_token = source, .row_weight = row_weight});
    Tensor d_offsets = gpu_->Allocate(DType::kI64, {c.experts + 1});
    Tensor d_source = gpu_->Allocate(DType::kI64, {pairs}), d_weight = gpu_->Allocate(DType::kF32, {pairs});
    gpu_->GroupByExpert({.expert_ids = gpu_->ToDevice(ids), .weights = UpF32(weights),
                         .first_expert = c.first_expert, .offsets = d_offsets, .source_token = d_source,
                         .row_weight = d_weight});
    gpu_->Synchronize();
    SCOPED_TRACE(testing::Message() << "tokens " << c.tokens << " experts " << c.experts);
    const Tensor got_offsets = gpu_->ToHost(d_offsets), got_source = gpu_->ToHost(d_source);
    for (int64_t e = 0; e <= c.experts; ++e) {
      ASSERT_EQ(got_offsets.data<int64_t>()[e], offsets.data<int64_t>()[e]) << "expert " << e;
    }
    for (int64_t r = 0; r < pairs; ++r) ASSERT_EQ(got_source.data<int64_t>()[r], source.data<int64_t>()[r]) << "row " << r;
    ExpectClose(Down(d_weight), row_weight, 0.0, 0.0);
  }
}

// TopK equals the CPU's exactly at the vocabulary's width, on a column slice, with heavy ties
// (values on a coarse grid), -0 next to +0, a constant row and an all -inf row.
TEST_P(CudaOpsTest, TopKMatchesCpu) {
  const int64_t rows = 6, ld = 151936, width = 151700;
  Tensor x = Random({rows, ld}, 33, 3.0f);
  for (int64_t i = 0; i < x.numel(); ++i) x.data<float>()[i] = std::round(x.data<float>()[i] * 4.0f) / 4.0f;
  for (int64_t j = 0; j < ld; ++j) {
    x.data<float>()[3 * ld + j] = 1.5f;
    x.data<float>()[4 * ld + j] = -INFINITY;
  }
  x.data<float>()[5 * ld + 7] = -0.0f;
  const Tensor dx = UpF32(x);
  for (const int64_t k : {int64_t{1}, int64_t{2}, int64_t{20}, int64_t{50}, int64_t{1000}, int64_t{1024}}) {
    Tensor values = Tensor::Empty(DType::kF32, {rows, k}), ids = Tensor::Empty(DType::kI32, {rows, k});
    cpu_.TopK({.x = x.Slice(1, 0, width), .k = k, .values = values, .ids = ids});
    Tensor d_values = gpu_->Allocate(DType::kF32, {rows, k}), d_ids = gpu_->Allocate(DType::kI32, {rows, k});
    gpu_->TopK({.x = dx.Slice(1, 0, width), .k = k, .values = d_values, .ids = d_ids});
    gpu_->Synchronize();
    const Tensor got_ids = gpu_->ToHost(d_ids), got_values = gpu_->ToHost(d_values);
    for (int64_t i = 0; i < rows * k; ++i) {
      ASSERT_EQ(got_ids.data<int32_t>()[i], ids.data<int32_t>()[i]) << "k " << k << " row " << i / k << " rank " << i % k;
      ASSERT_EQ(std::memcmp(got_values.data<float>() + i, values.data<float>() + i, 4), 0) << "k " << k << " at " << i;
    }
  }
}

TEST_P(CudaOpsTest, NormsMatchCpu) {
  for (const int64_t width : {64, 1152, 4096}) {
    const Tensor x = Rounded(Random({9, width}, 10), dtype());
    const Tensor w = Rounded(Random({width}, 11), dtype()), b = Rounded(Random({width}, 12), dtype());
    Tensor want = Tensor::Empty(DType::kF32, {9, width});
    cpu_.RmsNorm({.x = x, .weight = w, .out = want, .eps = 1e-6f});
    Tensor out = Up(x);  // in place, as the decoder does
    gpu_->RmsNorm({.x = out, .weight = Up(w), .out = out, .eps = 1e-6f});
    ExpectClose(Down(out), want, OutputTolerance(), 1e-5);
    // The fused residual add: x += delta (kept in x), out = RMSNorm(x).
    const Tensor delta = Rounded(Random({9, width}, 34), dtype());
    Tensor sum = x.Clone(), fused_want = Tensor::Empty(DType::kF32, {9, width});
    cpu_.Add({.a = sum, .b = delta, .out = sum});
    cpu_.RmsNorm({.x = sum, .weight = w, .out = fused_want, .eps = 1e-6f});
    Tensor fused_x = Up(x), fused = gpu_->Allocate(DType::kF32, {9, width});
    gpu_->RmsNorm({.x = fused_x, .weight = Up(w), .out = fused, .eps = 1e-6f, .residual = Up(delta)});
    ExpectClose(Down(fused), fused_want, OutputTolerance(), 1e-5);
    ExpectClose(Down(fused_x), sum, OutputTolerance(), 1e-6);
    cpu_.LayerNorm({.x = x, .weight = w, .bias = b, .out = want, .eps = 1e-6f});
    out = gpu_->Allocate(dtype(), {9, width});
    gpu_->LayerNorm({.x = Up(x), .weight = Up(w), .bias = Up(b), .out = out, .eps = 1e-6f});
    ExpectClose(Down(out), want, OutputTolerance(), 1e-5);
  }
}

TEST_P(CudaOpsTest, RopeMatchesCpu) {
  const int64_t tokens = 13, heads = 4, d = 128;
  const Tensor x = Rounded(Random({tokens, heads, d}, 13), dtype());
  Tensor cos = Random({tokens, d}, 14), sin = Random({tokens, d}, 15);
  Tensor want = x.Clone();
  cpu_.Rope({.x = want, .cos = cos, .sin = sin});
  Tensor out = Up(x);
  gpu_->Rope({.x = out, .cos = UpF32(cos), .sin = UpF32(sin)});
  ExpectClose(Down(out), want, OutputTolerance(), 1e-5);
}

TEST_P(CudaOpsTest, ActivationsMatchCpu) {
  const Tensor x = Rounded(Random({6, 2 * 200}, 16, 2.0f), dtype());
  Tensor want = Tensor::Empty(DType::kF32, {6, 200});
  cpu_.Activation({.kind = ActivationKind::kSiluMul, .x = x, .out = want});
  Tensor out = gpu_->Allocate(dtype(), {6, 200});
  gpu_->Activation({.kind = ActivationKind::kSiluMul, .x = Up(x), .out = out});
  ExpectClose(Down(out), want, OutputTolerance(), 1e-5);
  for (const ActivationKind kind : {ActivationKind::kGeluTanh, ActivationKind::kGeluErf}) {
    Tensor gelu_want = Tensor::Empty(DType::kF32, x.shape());
    cpu_.Activation({.kind = kind, .x = x, .out = gelu_want});
    Tensor gelu = Up(x);
    gpu_->Activation({.kind = kind, .x = gelu, .out = gelu});
    ExpectClose(Down(gelu), gelu_want, OutputTolerance(), 1e-5);
  }
}

TEST_P(CudaOpsTest, RouterPicksTheSameExperts) {
  for (const int top_k : {1, 8}) {
    const int64_t tokens = 300, experts = 128;
    Tensor logits = Rounded(Random({tokens, experts}, 17, 3.0f), dtype());
    logits.data<float>()[5] = logits.data<float>()[6];  // a tie: the lower index must win
    Tensor ids_want = Tensor::Empty(DType::kI32, {tokens, top_k});
    Tensor w_want = Tensor::Empty(DType::kF32, {tokens, top_k});
    cpu_.Router({.logits = logits, .top_k = top_k, .expert_ids = ids_want, .weights = w_want});
    Tensor ids = gpu_->Allocate(DType::kI32, {tokens, top_k});
    Tensor w = gpu_->Allocate(DType::kF32, {tokens, top_k});
    gpu_->Router({.logits = Up(logits), .top_k = top_k, .expert_ids = ids, .weights = w});
    gpu_->Synchronize();
    const Tensor got_ids = gpu_->ToHost(ids);
    for (int64_t i = 0; i < ids_want.numel(); ++i) {
      ASSERT_EQ(got_ids.data<int32_t>()[i], ids_want.data<int32_t>()[i]) << "token " << i / top_k;
    }
    ExpectClose(Down(w), w_want, 1e-5, 1e-6);
  }
}

TEST_P(CudaOpsTest, GatherAndScatterRowsMatchCpu) {
  const Tensor table = Rounded(Random({50, 96}, 18), dtype());
  const Tensor ids = Tensor::FromVectorI64({3, 0, 49, 3, 17}, {5});
  Tensor want = Tensor::Empty(DType::kF32, {5, 96});
  cpu_.GatherRows({.table = table, .ids = ids, .out = want});
  Tensor out = gpu_->Allocate(DType::kF32, {5, 96});
  const Tensor dids = gpu_->ToDevice(ids);
  gpu_->GatherRows({.table = Up(table), .ids = dids, .out = out});
  ExpectClose(Down(out), want, 0.0, 0.0);  // a copy: exact

  // Repeated ids accumulate; scale per source row.
  const Tensor src = Random({5, 96}, 19);
  const Tensor scale = Tensor::FromVector({0.5f, 1.0f, -2.0f, 0.25f, 3.0f}, {5});
  Tensor base = Random({50, 96}, 20);
  Tensor scatter_want = base.Clone();
  cpu_.ScatterAddRows({.src = src, .ids = ids, .scale = scale, .out = scatter_want});
  Tensor scattered = UpF32(base);
  gpu_->ScatterAddRows({.src = UpF32(src), .ids = dids, .scale = UpF32(scale), .out = scattered});
  ExpectClose(Down(scattered), scatter_want, 1e-6, 1e-6);
}

TEST_P(CudaOpsTest, AddMatchesCpu) {
  const Tensor a = Rounded(Random({7, 300}, 21), dtype()), b = Rounded(Random({7, 300}, 22), dtype());
  Tensor want = Tensor::Empty(DType::kF32, {7, 300});
  cpu_.Add({.a = a, .b = b, .out = want});
  Tensor out = Up(a);
  gpu_->Add({.a = out, .b = Up(b), .out = out});
  ExpectClose(Down(out), want, OutputTolerance(), 1e-6);
}

struct AttentionCase {
  std::string name;
  std::vector<int64_t> q_lens, k_lens;
  int heads, kv_heads, head_dim;
  bool causal;
};

TEST_P(CudaOpsTest, AttentionMatchesCpu) {
  const std::vector<AttentionCase> cases = {
      {"prefill_gqa", {17, 40}, {17, 40}, 8, 2, 128, true},
      {"decode_long", {1, 1, 1}, {1000, 3, 300}, 8, 1, 128, true},
      {"chunk_after_cache", {5}, {260}, 4, 4, 64, true},
      {"vision_full", {64, 0, 30}, {64, 0, 30}, 4, 4, 72, false},
      {"wide_head", {3}, {3}, 2, 1, 256, true},
      {"decode_group16", {1, 1, 1, 1}, {5, 129, 1, 2000}, 64, 4, 128, true},  // the 235B's heads
      {"decode_hd64_empty", {1, 1}, {0, 77}, 8, 2, 64, true},
      {"decode_70k", {1}, {70000}, 16, 1, 128, true},  // many splits
  };
  for (const AttentionCase& c : cases) {
    SCOPED_TRACE(c.name);
    std::vector<int64_t> qs = {0}, ks = {0};
    for (size_t s = 0; s < c.q_lens.size(); ++s) {
      qs.push_back(qs.back() + c.q_lens[s]);
      ks.push_back(ks.back() + c.k_lens[s]);
    }
    const Tensor q = Rounded(Random({qs.back(), c.heads, c.head_dim}, 23), dtype());
    const Tensor k = Rounded(Random({ks.back(), c.kv_heads, c.head_dim}, 24), dtype());
    const Tensor v = Rounded(Random({ks.back(), c.kv_heads, c.head_dim}, 25), dtype());
    const float scale = 1.0f / std::sqrt(static_cast<float>(c.head_dim));
    Tensor want = Tensor::Empty(DType::kF32, q.shape());
    cpu_.Attention({.q = q, .k = k, .v = v, .q_starts = qs, .k_starts = ks, .causal = c.causal, .scale = scale,
                    .out = want});
    Tensor out = gpu_->Allocate(dtype(), q.shape());
    gpu_->Attention({.q = Up(q), .k = Up(k), .v = Up(v), .q_starts = qs, .k_starts = ks, .causal = c.causal,
                     .scale = scale, .out = out});
    ExpectClose(Down(out), want, dtype() == DType::kF32 ? 1e-5 : 1.6e-2, 1e-5);

    // The same keys in a page pool, scattered backwards, read through block tables.
    if (!c.causal) continue;
    constexpr int64_t kPage = 16;
    int64_t max_pages = 1, total_pages = 0;
    for (int64_t n : c.k_lens) max_pages = std::max(max_pages, (n + kPage - 1) / kPage), total_pages += (n + kPage - 1) / kPage;
    const int64_t seqs = static_cast<int64_t>(c.k_lens.size()), pool_rows = (total_pages + 2) * kPage;
    Tensor k_pool = Tensor::Empty(DType::kF32, {pool_rows, c.kv_heads, c.head_dim});
    Tensor v_pool = Tensor::Empty(DType::kF32, {pool_rows, c.kv_heads, c.head_dim});
    Tensor tables = Tensor::Empty(DType::kI32, {seqs, max_pages});
    int32_t next = static_cast<int32_t>(total_pages + 1);
    for (int64_t s = 0; s < seqs; ++s) {
      for (int64_t j = 0; j < (c.k_lens[s] + kPage - 1) / kPage; ++j) tables.data<int32_t>()[s * max_pages + j] = next--;
      for (int64_t j = 0; j < c.k_lens[s]; ++j) {
        const int64_t row = tables.data<int32_t>()[s * max_pages + j / kPage] * kPage + j % kPage;
        k_pool.Select(row).CopyFrom(k.Select(ks[s] + j));
        v_pool.Select(row).CopyFrom(v.Select(ks[s] + j));
      }
    }
    Tensor paged = gpu_->Allocate(dtype(), q.shape());
    gpu_->Attention({.q = Up(q), .k = Up(k_pool), .v = Up(v_pool), .q_starts = qs, .k_starts = ks, .causal = true,
                     .scale = scale, .out = paged, .block_tables = gpu_->ToDevice(tables), .page_size = kPage});
    ExpectClose(Down(paged), want, dtype() == DType::kF32 ? 1e-5 : 1.6e-2, 1e-5);

    // f32 queries over bf16 pages (a bf16 KV cache): the CPU's answer on the same rounded keys.
    if (dtype() != DType::kF32) continue;
    const Tensor k16 = Rounded(k_pool, DType::kBF16), v16 = Rounded(v_pool, DType::kBF16);
    Tensor want16 = Tensor::Empty(DType::kF32, q.shape());
    cpu_.Attention({.q = q, .k = k16, .v = v16, .q_starts = qs, .k_starts = ks, .causal = true, .scale = scale,
                    .out = want16, .block_tables = tables, .page_size = kPage});
    Tensor mixed = gpu_->Allocate(DType::kF32, q.shape());
    gpu_->Attention({.q = UpF32(q), .k = gpu_->ToDevice(AsDType(k16, DType::kBF16)),
                     .v = gpu_->ToDevice(AsDType(v16, DType::kBF16)), .q_starts = qs, .k_starts = ks, .causal = true,
                     .scale = scale, .out = mixed, .block_tables = gpu_->ToDevice(tables), .page_size = kPage});
    ExpectClose(Down(mixed), want16, 1e-5, 1e-5);
  }
}

INSTANTIATE_TEST_SUITE_P(Dtypes, CudaOpsTest, ::testing::Values(DType::kF32, DType::kBF16),
                         [](const ::testing::TestParamInfo<DType>& info) {
                           return std::string(DTypeName(info.param));
                         });

TEST(CudaBackendTest, CopiesRoundTripIncludingRowStridedViews) {
  Q3VL_REQUIRE_GPU();
  auto gpu = CudaBackend::Create();
  ASSERT_TRUE(gpu.ok()) << gpu.status();
  const Tensor host = Random({6, 10}, 26);
  Tensor device = (*gpu)->ToDevice(host);
  EXPECT_EQ(device.device(), Device::kCuda);
  const Tensor back = (*gpu)->ToHost(device);
  for (int64_t i = 0; i < host.numel(); ++i) ASSERT_EQ(back.data<float>()[i], host.data<float>()[i]);
  // Columns [2, 7) of the device tensor into a host [6, 5].
  Tensor cols = Tensor::Empty(DType::kF32, {6, 5});
  (*gpu)->Copy(device.Slice(1, 2, 7), cols);
  for (int64_t r = 0; r < 6; ++r) {
    for (int64_t c = 0; c < 5; ++c) ASSERT_EQ(cols.data<float>()[r * 5 + c], host.data<float>()[r * 10 + c + 2]);
  }
  // One of q, k, v out of a fused [n, 3, heads, hv] projection (the vision tower's split): a
  // rank-4 view that is rows of one stride, device to device and device to host.
  const Tensor fused = Random({5, 3, 4, 8}, 28);
  const Tensor fused_device = (*gpu)->ToDevice(fused);
  for (int64_t part = 0; part < 3; ++part) {
    Tensor one = (*gpu)->Allocate(DType::kF32, {5, 1, 4, 8});
    (*gpu)->Copy(fused_device.Slice(1, part, part + 1), one);
    Tensor direct = Tensor::Empty(DType::kF32, {5, 1, 4, 8});
    (*gpu)->Copy(fused_device.Slice(1, part, part + 1), direct);
    const Tensor want = fused.Slice(1, part, part + 1).Clone();
    EXPECT_EQ(std::memcmp((*gpu)->ToHost(one).raw_data(), want.raw_data(), want.size_bytes()), 0) << part;
    EXPECT_EQ(std::memcmp(direct.raw_data(), want.raw_data(), want.size_bytes()), 0) << part;
  }
  // Allocate zero-fills.
  const Tensor zeros = (*gpu)->ToHost((*gpu)->Allocate(DType::kF32, {1000}));
  for (int64_t i = 0; i < 1000; ++i) ASSERT_EQ(zeros.data<float>()[i], 0.0f);
}

// Copies through the pinned staging ring: one larger than the whole ring (segments of 1 MiB,
// 4 of them, so 40 MiB laps it ten times) both ways, and thousands of small uploads from one
// host buffer that is rewritten right after each upload, each summed on the device while the
// host runs ahead: every upload must carry the values of its own moment. The same without the
// ring (staging_segments 0: the driver's pageable path).
TEST(CudaBackendTest, StagedCopiesKeepEveryUploadsValues) {
  Q3VL_REQUIRE_GPU();
  for (int segments : {4, 0}) {
    auto gpu = CudaBackend::Create({.staging_segment_bytes = size_t{1} << 20, .staging_segments = segments});
    ASSERT_TRUE(gpu.ok()) << gpu.status();
    const Tensor big = Random({10 << 20}, 27);
    const Tensor back = (*gpu)->ToHost((*gpu)->ToDevice(big));
    ASSERT_EQ(std::memcmp(back.raw_data(), big.raw_data(), big.size_bytes()), 0) << "segments " << segments;

    constexpr int kUploads = 3000;
    constexpr int64_t kWidth = 1000;
    Tensor host = Tensor::Empty(DType::kF32, {kWidth});
    Tensor sum = (*gpu)->Allocate(DType::kF32, {kWidth});
    for (int i = 0; i < kUploads; ++i) {
      for (int64_t j = 0; j < kWidth; ++j) host.data<float>()[j] = static_cast<float>(i % 7 + j);
      const Tensor up = (*gpu)->ToDevice(host);
      (*gpu)->Add({.a = sum, .b = up, .out = sum});
    }
    const Tensor got = (*gpu)->ToHost(sum);
    double base = 0;
    for (int i = 0; i < kUploads; ++i) base += i % 7;
    for (int64_t j = 0; j < kWidth; ++j) {
      ASSERT_EQ(got.data<float>()[j], static_cast<float>(base + kUploads * static_cast<double>(j)))
          << "segments " << segments << " column " << j;
    }
  }
}

TEST(CudaBackendTest, PoolReusesReleasedBlocks) {
  Q3VL_REQUIRE_GPU();
  auto gpu = CudaBackend::Create();
  ASSERT_TRUE(gpu.ok()) << gpu.status();
  const DevicePoolStats before = (*gpu)->pool().stats();
  { Tensor t = (*gpu)->Allocate(DType::kF32, {1 << 20}); }
  { Tensor t = (*gpu)->Allocate(DType::kF32, {1 << 20}); }
  const DevicePoolStats after = (*gpu)->pool().stats();
  EXPECT_EQ(after.cuda_mallocs, before.cuda_mallocs + 1);
  EXPECT_EQ(after.reuses, before.reuses + 1);
  EXPECT_EQ(after.in_use_bytes, before.in_use_bytes);
}

TEST(CudaBackendDeathTest, BadGatherIdStopsAtSynchronizeWithTheReason) {
  Q3VL_REQUIRE_GPU();
  GTEST_FLAG_SET(death_test_style, "threadsafe");  // a fresh process, fresh CUDA context
  EXPECT_DEATH(
      {
        auto gpu = CudaBackend::Create();
        Tensor table = (*gpu)->Allocate(DType::kF32, {4, 8});
        Tensor ids = (*gpu)->ToDevice(Tensor::FromVectorI64({1, 9}, {2}));
        Tensor out = (*gpu)->Allocate(DType::kF32, {2, 8});
        (*gpu)->GatherRows({.table = table, .ids = ids, .out = out});
        (*gpu)->Synchronize();
      },
      "GatherRows: a row id outside the table");
}

TEST(CudaBackendTest, CreateFailsCleanlyForAMissingDevice) {
  auto gpu = CudaBackend::Create({.device = 1000});
  EXPECT_FALSE(gpu.ok());
  EXPECT_NE(gpu.status().message(), "");
}

}  // namespace
}  // namespace q3vl::cuda
