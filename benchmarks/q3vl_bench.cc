// q3vl_bench: CPU throughput of the q3vl runtime, printed as one JSON object on stdout
// (progress goes to stderr). Measures the machine (threads, copy bandwidth, SGEMM peak), then,
// for the tiny demo config and one Qwen3-VL-235B-A22B layer at real width with random weights
// held in memory: decoder prefill and decode throughput, prefill GEMM FLOP/s against the SGEMM
// peak, decode weight bytes/s against the copy bandwidth, and vision patches/s; and
// --cpu-compute f32 against bf16 side by side. The machine's figures: bench_machine.h.
// See README.md.
#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <iostream>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "benchmarks/bench_machine.h"
#include "core/cpu/bf16_gemm.h"
#include "core/cpu/cpu_backend.h"
#include "kv/paged_kv_cache.h"
#include "model/config.h"
#include "model/decoder.h"
#include "model/demo_model.h"
#include "model/rope.h"
#include "model/safetensors.h"
#include "model/vision.h"
#include "model/weight_loader.h"
#include "nlohmann/json.hpp"

namespace q3vl::bench {
namespace {

using Json = nlohmann::json;

// Weight init from the shape alone: vectors (norm scales, biases) near 1; matrices with std
// 1/sqrt(fan_in), fan_in = dim 1 for [E, in, out] expert stacks, else the trailing dims.
void FillRandomWeight(const Tensor& t, uint64_t seed) {
  if (t.numel() == 0) return;
  if (t.rank() <= 1) return FillUniform(t, 1.0f, 0.05f, seed);
  const int64_t fan_in = t.rank() == 3 ? t.dim(1) : t.numel() / t.dim(0);
  FillUniform(t, 0.0f, std::sqrt(3.0f / static_cast<float>(fan_in)), seed);  // std = w / sqrt(3)
}

enum Op { kGemm, kGroupedGemm, kAttention, kAllocate, kGatherScatter, kElementwise, kNumOps };
constexpr std::array<const char*, kNumOps> kOpKeys = {
    "gemm_s", "grouped_gemm_s", "attention_s", "allocate_s", "gather_scatter_s", "elementwise_s"};

struct Counters {
  std::array<double, kNumOps> op_s{};  // seconds spent in each op class
  int64_t weight_bytes = 0;  // f32 weights read: Gemm b + bias, non-empty expert groups, norms
  int64_t experts_hit = 0;   // Σ over Router calls of the distinct experts picked
  double gemm_flop = 0;      // 2·m·n·k over Gemm and the non-empty groups of GroupedGemm
  int64_t router_calls = 0;

  Counters& operator+=(const Counters& o) {
    for (int i = 0; i < kNumOps; ++i) op_s[i] += o.op_s[i];
    weight_bytes += o.weight_bytes;
    experts_hit += o.experts_hit;
    gemm_flop += o.gemm_flop;
    router_calls += o.router_calls;
    return *this;
  }
};

// Delegates every op to a CpuBackend, timing each op class and counting the weight bytes the
// ops read. With randomize on, Allocate returns random f32 tensors instead of zeros: the
// WeightLoader allocates every weight of an empty checkpoint through it.
class MeteredBackend final : public Backend {
 public:
  explicit MeteredBackend(const CpuBackendOptions& options = {}) : cpu_(options) {}
  absl::string_view name() const override { return "metered_cpu"; }
  Device device() const override { return Device::kCpu; }
  Tensor Allocate(DType dtype, Shape shape) override {
    const Clock::time_point start = Clock::now();
    Tensor t = cpu_.Allocate(dtype, std::move(shape));
    if (randomize_ && dtype == DType::kF32) FillRandomWeight(t, ++seed_);
    if (randomize_ && dtype == DType::kBF16) {  // the same init, rounded to bf16
      Tensor f = cpu_.Allocate(DType::kF32, t.shape());
      FillRandomWeight(f, ++seed_);
      uint16_t* dst = t.data<uint16_t>();
      const float* src = f.data<float>();
#pragma omp parallel for schedule(static)
      for (int64_t i = 0; i < t.numel(); ++i) dst[i] = F32ToBF16(src[i]);
    }
    counters_.op_s[kAllocate] += SecondsSince(start);
    return t;
  }
  Tensor AllocateUninitialized(DType dtype, Shape shape) override {
    const Clock::time_point start = Clock::now();
    Tensor t = cpu_.AllocateUninitialized(dtype, std::move(shape));
    counters_.op_s[kAllocate] += SecondsSince(start);
    return t;
  }
  void Copy(const Tensor& src, Tensor& dst) override { Timed(kElementwise, [&] { cpu_.Copy(src, dst); }); }
  void Synchronize() override {}
  void Zero(Tensor& t) override { Timed(kElementwise, [&] { cpu_.Zero(t); }); }
  void Gemm(const GemmParams& p) override {
    counters_.weight_bytes += p.b.size_bytes() + (p.bias.defined() ? p.bias.size_bytes() : 0);
    counters_.gemm_flop += 2.0 * static_cast<double>(p.out.numel()) * static_cast<double>(p.a.dim(1));
    Timed(kGemm, [&] { cpu_.Gemm(p); });
  }
  void GroupedGemm(const GroupedGemmParams& p) override {
    const int64_t group_bytes = p.weights.size_bytes() / std::max<int64_t>(p.weights.dim(0), 1);
    const int64_t* offsets = p.device_offsets.defined() ? p.device_offsets.data<int64_t>() : p.offsets.data();
    for (int64_t g = 0; g < p.weights.dim(0); ++g) {
      if (offsets[g + 1] > offsets[g]) counters_.weight_bytes += group_bytes;
    }
    counters_.gemm_flop += 2.0 * static_cast<double>(offsets[p.weights.dim(0)] - offsets[0]) *
                           static_cast<double>(p.a.dim(1)) * static_cast<double>(p.out.dim(1));
    Timed(kGroupedGemm, [&] { cpu_.GroupedGemm(p); });
  }
  void RmsNorm(const RmsNormParams& p) override {
    counters_.weight_bytes += p.weight.size_bytes();
    Timed(kElementwise, [&] { cpu_.RmsNorm(p); });
  }
  void LayerNorm(const LayerNormParams& p) override {
    counters_.weight_bytes += p.weight.size_bytes() + p.bias.size_bytes();
    Timed(kElementwise, [&] { cpu_.LayerNorm(p); });
  }
  void Rope(const RopeParams& p) override { Timed(kElementwise, [&] { cpu_.Rope(p); }); }
  void Activation(const ActivationParams& p) override { Timed(kElementwise, [&] { cpu_.Activation(p); }); }
  void Attention(const AttentionParams& p) override { Timed(kAttention, [&] { cpu_.Attention(p); }); }
  void Router(const RouterParams& p) override {
    Timed(kElementwise, [&] { cpu_.Router(p); });
    std::vector<bool> seen(p.logits.dim(1), false);
    const int32_t* ids = p.expert_ids.data<int32_t>();
    for (int64_t i = 0; i < p.expert_ids.numel(); ++i) {
      if (!seen[ids[i]]) ++counters_.experts_hit;
      seen[ids[i]] = true;
    }
    ++counters_.router_calls;
  }
  void GroupByExpert(const GroupByExpertParams& p) override {
    Timed(kGatherScatter, [&] { cpu_.GroupByExpert(p); });
  }
  void TopK(const TopKParams& p) override { Timed(kElementwise, [&] { cpu_.TopK(p); }); }
  void GatherRows(const GatherRowsParams& p) override { Timed(kGatherScatter, [&] { cpu_.GatherRows(p); }); }
  void ScatterAddRows(const ScatterAddRowsParams& p) override {
    Timed(kGatherScatter, [&] { cpu_.ScatterAddRows(p); });
  }
  void Add(const AddParams& p) override { Timed(kElementwise, [&] { cpu_.Add(p); }); }

  void set_randomize(bool on) { randomize_ = on; }
  void ResetCounters() { counters_ = Counters(); }
  const Counters& counters() const { return counters_; }

 private:
  template <typename F>
  void Timed(Op op, F&& run) {
    const Clock::time_point start = Clock::now();
    run();
    counters_.op_s[op] += SecondsSince(start);
  }

  CpuBackend cpu_;
  bool randomize_ = false;
  uint64_t seed_ = 0;
  Counters counters_;
};

// Per-op-class seconds of `c` divided by `divisor`, plus the time of `total_s` spent outside
// backend ops (KV cache writes and gathers, MoE dispatch bookkeeping, host-side fills).
Json BreakdownJson(const Counters& c, double total_s, double divisor) {
  Json out;
  double in_ops = 0;
  for (int i = 0; i < kNumOps; ++i) {
    out[kOpKeys[i]] = c.op_s[i] / divisor;
    in_ops += c.op_s[i];
  }
  out["outside_backend_s"] = (total_s - in_ops) / divisor;
  return out;
}

// ---------------------------------------------------------------------------------------------
// Models

struct Model {
  model::ModelConfig config;
  std::unique_ptr<model::VisionTower> vision;
  std::unique_ptr<model::TextDecoder> decoder;
  int64_t weight_bytes = 0;  // every declared weight, f32
};

// Builds the model against an empty checkpoint; the backend fills every weight at random.
Model BuildModel(MeteredBackend& backend, const model::ModelConfig& config, DType matrices) {
  Q3VL_CHECK_OK(config.Validate());
  std::unique_ptr<model::Checkpoint> empty = model::Checkpoint::Empty();
  model::WeightLoader loader(*empty, backend, matrices);
  Model m;
  m.config = config;
  backend.set_randomize(true);
  m.vision = std::make_unique<model::VisionTower>(config.vision, loader);
  m.decoder = std::make_unique<model::TextDecoder>(config.text, loader, config.tie_word_embeddings);
  backend.set_randomize(false);
  for (const auto& [name, shape] : loader.declarations()) m.weight_bytes += NumElements(shape) * 4;
  return m;
}

// One decoder layer and one vision block of Qwen3-VL-235B-A22B at real width. The 16 experts
// are one rank's share of an 8-way expert split (128 experts); routing picks top-8 among them.
model::ModelConfig Layer235bConfig() {
  model::ModelConfig c = *model::PublishedConfig("235b");
  model::TextConfig& t = c.text;
  t.num_layers = 1;
  t.vocab_size = 1024;  // small, so the embedding and LM head stay out of the way
  t.num_experts = 16;
  model::VisionConfig& v = c.vision;
  v.depth = 1;
  v.deepstack_visual_indexes = {};
  return c;
}

Json ModelJson(const Model& m) {
  const model::TextConfig& t = m.config.text;
  const model::VisionConfig& v = m.config.vision;
  return {{"hidden", t.hidden_size}, {"layers", t.num_layers}, {"heads", t.num_heads},
          {"kv_heads", t.num_kv_heads}, {"head_dim", t.head_dim}, {"experts", t.num_experts},
          {"top_k", t.top_k}, {"moe_intermediate", t.moe_intermediate_size},
          {"vocab", t.vocab_size}, {"vision_depth", v.depth}, {"vision_hidden", v.hidden_size},
          {"vision_heads", v.num_heads}, {"vision_intermediate", v.intermediate_size},
          {"weight_bytes", m.weight_bytes}};
}

// GEMM FLOPs of one decoder Forward over a single sequence of `s` new tokens and no cache:
// projections, router, experts (rows = s * top_k) or dense MLP, causal attention (QKᵀ and PV).
double PrefillFlops(const model::TextConfig& t, int64_t s) {
  const double d = t.hidden_size, q = t.num_heads * t.head_dim, kv = t.num_kv_heads * t.head_dim;
  const double projections = 2 * d * q + 2 * 2 * d * kv + 2 * q * d;
  const double inter = t.moe_intermediate_size;
  const double moe = 2 * d * t.num_experts + t.top_k * (2 * d * 2 * inter + 2 * inter * d);
  const double dense = 3 * 2 * d * t.intermediate_size;
  const double attention = 4.0 * s * s * q / 2;
  double total = 0;
  for (int64_t l = 0; l < t.num_layers; ++l) {
    total += s * (projections + (t.IsMoeLayer(l) ? moe : dense)) + attention;
  }
  return total;
}

// ---------------------------------------------------------------------------------------------
// Decoder

// A batch of `seqs` sequences (ids 0..seqs-1) with `tokens_each` new random tokens each, the
// first at text position `first_position` (all three M-RoPE axes equal). Reserves the cache.
model::DecoderBatch MakeBatch(Backend& backend, const Model& m, kv::PagedKvCache& cache,
                              int64_t seqs, int64_t tokens_each, int64_t first_position,
                              std::mt19937_64& rng) {
  const model::TextConfig& t = m.config.text;
  const int64_t total = seqs * tokens_each;
  model::DecoderBatch batch;
  batch.q_starts = {0};
  batch.kv = &cache;
  std::vector<int64_t> ids(total), positions(3 * total);  // positions [3, T]
  std::uniform_int_distribution<int64_t> token(0, t.vocab_size - 1);
  for (int64_t s = 0; s < seqs; ++s) {
    Q3VL_CHECK_OK(cache.Reserve(s, tokens_each));
    batch.seq_ids.push_back(s);
    batch.q_starts.push_back((s + 1) * tokens_each);
    for (int64_t i = 0; i < tokens_each; ++i) {
      const int64_t row = s * tokens_each + i;
      ids[row] = token(rng);
      for (int a = 0; a < 3; ++a) positions[a * total + row] = first_position + i;
    }
  }
  batch.rope = model::MropeTables(t, positions, total);
  batch.hidden = backend.Allocate(DType::kF32, {total, t.hidden_size});  // [T, D]
  m.decoder->Embed(backend, ids, batch.hidden);
  return batch;
}

kv::PagedKvCache MakeCache(Backend& backend, const Model& m, int64_t seqs, int64_t tokens_each) {
  constexpr int64_t kPageSize = 16;
  const model::TextConfig& t = m.config.text;
  return kv::PagedKvCache({.num_layers = t.num_layers, .num_kv_heads = t.num_kv_heads,
                           .head_dim = t.head_dim, .page_size = kPageSize,
                           .num_pages = seqs * ((tokens_each + kPageSize - 1) / kPageSize)},
                          backend);
}

struct PrefillCase {
  int64_t tokens = 0;
  int iterations = 1;
};

// Best-of-iterations time of TextDecoder::Forward over one fresh sequence of c.tokens tokens.
Json BenchPrefill(MeteredBackend& backend, const Model& m, const PrefillCase& c, const Machine& machine) {
  std::mt19937_64 rng(c.tokens);
  double best_s = 1e30;
  Counters best;
  for (int i = 0; i < c.iterations; ++i) {
    kv::PagedKvCache cache = MakeCache(backend, m, 1, c.tokens);
    model::DecoderBatch batch = MakeBatch(backend, m, cache, 1, c.tokens, 0, rng);
    backend.ResetCounters();
    const Clock::time_point start = Clock::now();
    m.decoder->Forward(backend, batch);
    const double seconds = SecondsSince(start);
    if (seconds < best_s) best_s = seconds, best = backend.counters();
  }
  const double flops = PrefillFlops(m.config.text, c.tokens);
  const double in_gemm_s = best.op_s[kGemm] + best.op_s[kGroupedGemm] + best.op_s[kAttention];
  return {{"tokens", c.tokens}, {"iterations", c.iterations}, {"forward_s", best_s},
          {"tokens_per_s", c.tokens / best_s}, {"gemm_flop", flops},
          {"gemm_flop_per_s", flops / best_s},
          {"gemm_fraction_of_sgemm_peak", flops / best_s / machine.sgemm_flop_per_s},
          {"gemm_ops_only_flop_per_s", flops / in_gemm_s},
          {"gemm_ops_only_fraction_of_sgemm_peak", flops / in_gemm_s / machine.sgemm_flop_per_s},
          {"breakdown", BreakdownJson(best, best_s, 1.0)}};
}

// Puts `prefix` random tokens of keys and values into every layer for sequences 0..seqs-1.
void FillPrefix(kv::PagedKvCache& cache, int64_t seqs, int64_t prefix) {
  const kv::KvCacheConfig& c = cache.config();
  Tensor k = Tensor::Empty(DType::kF32, {prefix, c.num_kv_heads, c.head_dim});  // [P, KV, hd]
  Tensor v = Tensor::Empty(DType::kF32, {prefix, c.num_kv_heads, c.head_dim});  // [P, KV, hd]
  FillUniform(k, 0.0f, 1.0f, 101);
  FillUniform(v, 0.0f, 1.0f, 102);
  for (int64_t s = 0; s < seqs; ++s) {
    Q3VL_CHECK_OK(cache.Reserve(s, prefix));
    const kv::KvStepPlan plan = cache.Plan({s}, {0, prefix});
    for (int64_t l = 0; l < c.num_layers; ++l) cache.Write(l, plan, k, v);
    cache.Commit(s, prefix);
  }
}

struct DecodeCase {
  int64_t batch = 1;
  int64_t prefix = 128;
  int steps = 1;
};

// Decode steps of one token per sequence after a prefix already in the cache; one untimed
// warm-up step, then c.steps timed Forward calls.
Json BenchDecode(MeteredBackend& backend, const Model& m, const DecodeCase& c, const Machine& machine) {
  kv::PagedKvCache cache = MakeCache(backend, m, c.batch, c.prefix + c.steps + 1);
  FillPrefix(cache, c.batch, c.prefix);
  std::mt19937_64 rng(c.batch);
  Counters total;
  double total_s = 0;
  std::vector<double> step_fractions;  // weight bytes / s / copy bandwidth, per timed step
  for (int step = 0; step <= c.steps; ++step) {
    model::DecoderBatch batch = MakeBatch(backend, m, cache, c.batch, 1, cache.Length(0), rng);
    backend.ResetCounters();
    const Clock::time_point start = Clock::now();
    m.decoder->Forward(backend, batch);
    const double seconds = SecondsSince(start);
    if (step == 0) continue;  // warm-up
    total_s += seconds;
    total += backend.counters();
    step_fractions.push_back(static_cast<double>(backend.counters().weight_bytes) / seconds /
                             machine.copy_bytes_per_s);
  }
  std::sort(step_fractions.begin(), step_fractions.end());
  const double step_s = total_s / c.steps;
  const double bytes_per_step = static_cast<double>(total.weight_bytes) / c.steps;
  return {{"batch", c.batch}, {"prefix_tokens", c.prefix}, {"steps", c.steps},
          {"step_s", step_s}, {"tokens_per_s", c.batch / step_s},
          {"experts_hit_per_layer",
           static_cast<double>(total.experts_hit) / std::max<int64_t>(total.router_calls, 1)},
          {"weight_bytes_per_step", bytes_per_step},
          {"weight_bytes_per_s", bytes_per_step / step_s},
          {"weight_fraction_of_copy_bandwidth", bytes_per_step / step_s / machine.copy_bytes_per_s},
          {"weight_fraction_of_copy_bandwidth_per_step",
           {{"min", step_fractions.front()},
            {"median", step_fractions[step_fractions.size() / 2]},
            {"max", step_fractions.back()}}},
          {"gemm_flop_per_step", total.gemm_flop / c.steps},
          {"gemm_flop_per_s", total.gemm_flop / total_s},
          {"gemm_fraction_of_sgemm_peak", total.gemm_flop / total_s / machine.sgemm_flop_per_s},
          {"breakdown_per_step", BreakdownJson(total, total_s, c.steps)}};
}

// ---------------------------------------------------------------------------------------------
// Vision

struct VisionCase {
  model::GridThw grid;
  int iterations = 1;
};

// Best-of-iterations time of VisionTower::Forward on random pixel values for one image grid.
Json BenchVision(MeteredBackend& backend, const Model& m, const VisionCase& c) {
  const model::VisionConfig& v = m.config.vision;
  const int64_t patches = c.grid[0] * c.grid[1] * c.grid[2];
  model::VisionInput input{.pixel_values = Tensor::Empty(DType::kF32, {patches, v.patch_dim()}),
                           .grids = {c.grid}};  // pixel_values [N, C tp ps ps]
  FillUniform(input.pixel_values, 0.0f, 1.0f, 103);
  Q3VL_CHECK_OK(m.vision->CheckInput(input));
  double best_s = 1e30;
  Counters best;
  for (int i = 0; i < c.iterations; ++i) {
    backend.ResetCounters();
    const Clock::time_point start = Clock::now();
    const model::VisionOutput out = m.vision->Forward(backend, input);
    const double seconds = SecondsSince(start);
    if (seconds < best_s) best_s = seconds, best = backend.counters();
  }
  return {{"grid_thw", c.grid}, {"patches", patches}, {"iterations", c.iterations},
          {"forward_s", best_s}, {"patches_per_s", patches / best_s},
          {"breakdown", BreakdownJson(best, best_s, 1.0)}};
}

// ---------------------------------------------------------------------------------------------
// Driver

struct Plan {
  std::string name;
  model::ModelConfig config;
  DType matrices = DType::kF32;  // decoder GEMM weights (the vision tower stays f32)
  std::vector<PrefillCase> prefill;
  std::vector<DecodeCase> decode;
  std::vector<VisionCase> vision;
};

std::vector<Plan> MakePlans(bool quick) {
  const int f = quick ? 1 : 0;  // index 1: --quick
  const int tiny_decode_steps[] = {32, 8};
  const int layer_decode_steps[] = {16, 5};
  Plan tiny{
      .name = "tiny",
      .config = model::DemoConfig(),
      .prefill = {{.tokens = 512, .iterations = quick ? 2 : 5}, {.tokens = 4096, .iterations = quick ? 1 : 3}},
      .decode = {{.batch = 1, .prefix = 128, .steps = tiny_decode_steps[f]},
                 {.batch = 16, .prefix = 128, .steps = tiny_decode_steps[f]}},
      .vision = {{.grid = {1, 32, 32}, .iterations = quick ? 1 : 3},
                 {.grid = {1, 64, 64}, .iterations = quick ? 1 : 3}},
  };
  Plan layer{
      .name = "235b_layer",
      .config = Layer235bConfig(),
      .prefill = {{.tokens = 512, .iterations = quick ? 1 : 3}},
      .decode = {{.batch = 1, .prefix = 128, .steps = layer_decode_steps[f]},
                 {.batch = 16, .prefix = 128, .steps = layer_decode_steps[f]}},
      .vision = {{.grid = {1, 32, 32}, .iterations = quick ? 1 : 3},
                 {.grid = {1, 64, 64}, .iterations = quick ? 1 : 2}},
  };
  if (!quick) layer.prefill.push_back({.tokens = 4096, .iterations = 2});  // 1st: cold pages
  // The same layer with its GEMM weights in bf16, as checkpoints store them and the loader keeps
  // them: half the bytes per decode step, widened exactly in the kernels.
  Plan layer_bf16{
      .name = "235b_layer_bf16",
      .config = Layer235bConfig(),
      .matrices = DType::kBF16,
      .prefill = {{.tokens = 512, .iterations = quick ? 1 : 3}},
      .decode = {{.batch = 1, .prefix = 128, .steps = layer_decode_steps[f]},
                 {.batch = 16, .prefix = 128, .steps = layer_decode_steps[f]}},
  };
  return {tiny, layer, layer_bf16};
}

Json RunPlan(MeteredBackend& backend, const Plan& plan, const Machine& machine) {
  const Clock::time_point build_start = Clock::now();
  const Model m = BuildModel(backend, plan.config, plan.matrices);
  Json out = {{"model", ModelJson(m)}, {"gemm_weight_dtype", std::string(DTypeName(plan.matrices))},
              {"build_s", SecondsSince(build_start)}};
  for (const PrefillCase& c : plan.prefill) {
    std::cerr << "q3vl_bench: " << plan.name << " prefill " << c.tokens << " tokens\n";
    out["prefill"].push_back(BenchPrefill(backend, m, c, machine));
  }
  for (const DecodeCase& c : plan.decode) {
    std::cerr << "q3vl_bench: " << plan.name << " decode batch " << c.batch << "\n";
    out["decode"].push_back(BenchDecode(backend, m, c, machine));
  }
  for (const VisionCase& c : plan.vision) {
    std::cerr << "q3vl_bench: " << plan.name << " vision " << c.grid[1] << "x" << c.grid[2] << "\n";
    out["vision"].push_back(BenchVision(backend, m, c));
  }
  return out;
}

// Decode-shaped GEMMs alone: m activation rows against 8 expert-sized weights [3072, 4096]
// (nn.Linear rows, 400 MB: far past the caches), through the backend's Gemm (m <= 16 takes the
// small-row kernels). Weight bytes/s against copy bandwidth shows where a decode step turns
// from memory-bound to compute-bound on this machine; FLOP/s against the sgemm peak shows how
// much compute is left.
Json BenchDecodeGemm(Backend& backend, const Machine& machine, bool quick) {
  constexpr int64_t kN = 3072, kK = 4096, kMatrices = 8;
  Tensor weights = Tensor::Empty(DType::kF32, {kMatrices, kN, kK});
  FillUniform(weights, 0.0f, 0.02f, 3);
  Tensor a = Tensor::Empty(DType::kF32, {16, kK});
  FillUniform(a, 0.0f, 1.0f, 4);
  Tensor out = Tensor::Empty(DType::kF32, {16, kN});
  Json rows = Json::array();
  for (int64_t m : {1, 2, 4, 8, 12, 16}) {
    double best = 1e30;
    for (int r = 0; r <= (quick ? 2 : 5); ++r) {
      const Clock::time_point start = Clock::now();
      for (int64_t e = 0; e < kMatrices; ++e) {
        Tensor o = out.Slice(0, 0, m);
        backend.Gemm({.a = a.Slice(0, 0, m), .b = weights.Select(e), .out = o});
      }
      if (r > 0) best = std::min(best, SecondsSince(start));
    }
    const double bytes = 4.0 * kMatrices * kN * kK, flop = 2.0 * m * kMatrices * kN * kK;
    rows.push_back({{"rows", m}, {"seconds", best}, {"weight_bytes_per_s", bytes / best},
                    {"weight_fraction_of_copy_bandwidth", bytes / best / machine.copy_bytes_per_s},
                    {"flop_per_s", flop / best},
                    {"fraction_of_sgemm_peak", flop / best / machine.sgemm_flop_per_s}});
  }
  return {{"weight_shape", {kN, kK}}, {"matrices", kMatrices}, {"cases", rows}};
}

// Decode attention over a long bf16 KV cache, the 235B's shapes on one rank of tp=8 (8 query
// heads, 1 KV head, head_dim 128): one query per sequence read through block tables of 16-token
// pages spread over the pool. KV bytes read per second against the copy bandwidth: decode at
// long context is a stream over the cache.
Json BenchDecodeAttention(Backend& backend, const Machine& machine, bool quick) {
  constexpr int64_t kHeads = 8, kKvHeads = 1, kDim = 128, kPage = 16;
  Json cases = Json::array();
  for (const auto& [context, seqs] : {std::pair<int64_t, int64_t>{8192, 1}, {8192, 8}, {65536, 1}, {262144, 1}}) {
    const int64_t pages_per_seq = context / kPage, pages = pages_per_seq * seqs;
    Tensor k = Tensor::Empty(DType::kBF16, {pages * kPage, kKvHeads, kDim});
    Tensor v = Tensor::Empty(DType::kBF16, {pages * kPage, kKvHeads, kDim});
    for (Tensor* t : {&k, &v}) {
      uint16_t* d = t->data<uint16_t>();
      for (int64_t i = 0; i < t->numel(); ++i) d[i] = F32ToBF16(0.01f * static_cast<float>((i * 7919) % 201 - 100));
    }
    Tensor tables = Tensor::Empty(DType::kI32, {seqs, pages_per_seq});
    for (int64_t i = 0; i < pages; ++i) tables.data<int32_t>()[i] = static_cast<int32_t>((i * 40503) % pages);  // scattered
    Tensor q = Tensor::Empty(DType::kF32, {seqs, kHeads, kDim});
    FillUniform(q, 0.0f, 1.0f, 5);
    Tensor out = Tensor::Empty(DType::kF32, {seqs, kHeads, kDim});
    std::vector<int64_t> q_starts(seqs + 1), k_starts(seqs + 1);
    for (int64_t i = 0; i <= seqs; ++i) q_starts[i] = i, k_starts[i] = i * context;
    double best = 1e30;
    for (int r = 0; r <= (quick ? 2 : 5); ++r) {
      const Clock::time_point start = Clock::now();
      backend.Attention({.q = q, .k = k, .v = v, .q_starts = q_starts, .k_starts = k_starts, .causal = true,
                         .scale = 0.088f, .out = out, .block_tables = tables, .page_size = kPage});
      if (r > 0) best = std::min(best, SecondsSince(start));
    }
    const double bytes = 2.0 * seqs * context * kKvHeads * kDim * 2;  // k and v, bf16
    cases.push_back({{"context_tokens", context}, {"sequences", seqs}, {"seconds", best},
                     {"kv_bytes_per_s", bytes / best},
                     {"kv_fraction_of_copy_bandwidth", bytes / best / machine.copy_bytes_per_s}});
  }
  return {{"heads", kHeads}, {"kv_heads", kKvHeads}, {"head_dim", kDim}, {"kv_dtype", "bf16"}, {"cases", cases}};
}

constexpr char kUsage[] =
    "usage: q3vl_bench [--quick] [--only decode_gemm|decode_attention|cpu_compute|configs] [--help]\n"
    "Prints one JSON object of CPU throughput figures to stdout (see benchmarks/README.md).\n"
    "  --quick  fewer iterations; skips the 4096-token prefill of the 235B layer\n"
    "  --only   one section (the machine is always measured)\n";

// --cpu-compute f32 against bf16 on the same weights: one Qwen3-VL-235B-A22B layer and vision
// block at real width, GEMM weights in bf16 as checkpoints store them; prefill at 512 and 4096
// tokens, decode at batch 1 and 16, one ~1-megapixel image's encode, the two modes alternating
// round by round so both see the same machine. Per case: each round's tokens/s (visual tokens
// for the image), the median per mode and bf16 / f32; prefill GEMM FLOP/s against the bf16
// GEMM peak. On a processor without bf16 instructions, only the ISA.
Json BenchCpuCompute(const Machine& machine, bool quick) {
  const cpu::Bf16Support& support = cpu::CpuBf16Support();
  Json out = {{"cpu_model", CpuModelName()}, {"onednn_isa", support.isa}, {"native_bf16", support.native}};
  if (!support.native) return out;
  const int64_t peak_n = quick ? 2048 : 4096;
  out["bf16_gemm_size"] = peak_n;
  out["bf16_gemm_peak_flop_per_s"] = Bf16GemmPeak(peak_n, 3);
  MeteredBackend f32(CpuBackendOptions{.compute = CpuCompute::kF32});
  MeteredBackend bf16(CpuBackendOptions{.compute = CpuCompute::kBF16});
  const Model m = BuildModel(f32, Layer235bConfig(), DType::kBF16);
  const int rounds = quick ? 1 : 3;
  const std::vector<PrefillCase> prefill = {{.tokens = 512, .iterations = 1}, {.tokens = 4096, .iterations = 1}};
  // Decode runs the same f32 small-row kernels in both modes; its first steps after a large
  // prefill are slower (caches and TLBs refill), so enough steps for that to wash out.
  const std::vector<DecodeCase> decode = {{.batch = 1, .prefix = 128, .steps = quick ? 3 : 20},
                                          {.batch = 16, .prefix = 128, .steps = quick ? 3 : 20}};
  std::map<std::string, std::map<std::string, std::vector<double>>> rates;  // case -> mode -> tokens/s
  std::map<std::string, std::vector<double>> bf16_gemm_rates;              // prefill case -> GEMM FLOP/s
  for (int round = 0; round < rounds; ++round) {
    for (auto [mode, backend] : {std::pair<const char*, MeteredBackend*>{"f32", &f32}, {"bf16", &bf16}}) {
      for (const PrefillCase& c : prefill) {
        std::cerr << "q3vl_bench: cpu compute " << mode << " round " << round + 1 << " prefill " << c.tokens << "\n";
        const Json r = BenchPrefill(*backend, m, c, machine);
        const std::string name = absl::StrCat("prefill_", c.tokens);
        rates[name][mode].push_back(r["tokens_per_s"].get<double>());
        if (std::string(mode) == "bf16") bf16_gemm_rates[name].push_back(r["gemm_flop_per_s"].get<double>());
      }
      for (const DecodeCase& c : decode) {
        std::cerr << "q3vl_bench: cpu compute " << mode << " round " << round + 1 << " decode batch " << c.batch << "\n";
        const Json r = BenchDecode(*backend, m, c, machine);
        rates[absl::StrCat("decode_batch_", c.batch)][mode].push_back(r["tokens_per_s"].get<double>());
      }
      // One 1024 x 1024 image (64 x 64 patches, 1,024 visual tokens) through the vision block
      // and mergers: visual tokens per second.
      std::cerr << "q3vl_bench: cpu compute " << mode << " round " << round + 1 << " vision 1024x1024\n";
      const Json v = BenchVision(*backend, m, {.grid = {1, 64, 64}, .iterations = 1});
      rates["vision_image_1mp"][mode].push_back(v["patches_per_s"].get<double>() / 4.0);
    }
  }
  auto median = [](std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
  };
  for (const auto& [name, by_mode] : rates) {
    const double f = median(by_mode.at("f32")), b = median(by_mode.at("bf16"));
    Json c = {{"f32_tokens_per_s", by_mode.at("f32")}, {"bf16_tokens_per_s", by_mode.at("bf16")},
              {"f32_median", f}, {"bf16_median", b}, {"bf16_over_f32", b / f}};
    if (bf16_gemm_rates.contains(name)) {
      const double g = median(bf16_gemm_rates[name]);
      c["bf16_gemm_flop_per_s"] = g;
      c["bf16_gemm_fraction_of_bf16_peak"] = g / out["bf16_gemm_peak_flop_per_s"].get<double>();
    }
    out["cases"][name] = c;
  }
  out["rounds"] = rounds;
  return out;
}

int Main(int argc, char** argv) {
  bool quick = false;
  std::string only;  // empty: every section
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--quick") {
      quick = true;
    } else if (arg == "--only" && i + 1 < argc) {
      only = argv[++i];
      if (only != "decode_gemm" && only != "decode_attention" && only != "cpu_compute" && only != "configs") {
        std::cerr << "q3vl_bench: --only takes decode_gemm, decode_attention, cpu_compute or configs, not " << only
                  << "\n";
        return 2;
      }
    } else if (arg == "--help" || arg == "-h") {
      std::cout << kUsage;
      return 0;
    } else {
      std::cerr << "q3vl_bench: unknown argument " << arg << "\n" << kUsage;
      return 2;
    }
  }
  const Clock::time_point start = Clock::now();
  std::cerr << "q3vl_bench: measuring the machine\n";
  const Machine machine = MeasureMachine(quick);
  Json out = {{"benchmark", "q3vl_bench"}, {"mode", quick ? "quick" : "full"},
              {"machine", MachineJson(machine)}};
  MeteredBackend backend;
  auto wanted = [&](const char* section) { return only.empty() || only == section; };
  if (wanted("decode_gemm")) {
    std::cerr << "q3vl_bench: decode-shaped GEMMs\n";
    out["decode_gemm"] = BenchDecodeGemm(backend, machine, quick);
  }
  if (wanted("decode_attention")) {
    std::cerr << "q3vl_bench: decode attention over 8K-256K tokens of bf16 KV\n";
    out["decode_attention"] = BenchDecodeAttention(backend, machine, quick);
  }
  if (wanted("cpu_compute")) {
    std::cerr << "q3vl_bench: --cpu-compute f32 against bf16, alternating\n";
    out["cpu_compute"] = BenchCpuCompute(machine, quick);
  }
  if (wanted("configs")) {
    for (const Plan& plan : MakePlans(quick)) out["configs"][plan.name] = RunPlan(backend, plan, machine);
  }
  out["total_s"] = SecondsSince(start);
  std::cout << out.dump(2) << std::endl;
  return 0;
}

}  // namespace
}  // namespace q3vl::bench

int main(int argc, char** argv) { return q3vl::bench::Main(argc, argv); }
