// perf_model: predicts the prefill and decode step times of Qwen3-VL-235B-A22B (or any config of
// the architecture) on meshes of H100s, from roofline per-kernel times (HBM bytes and FLOPs
// against measured or assumed device figures) and NCCL collective costs taken from public
// nccl-tests results. The mesh is validated and sharded by the same code the runtime uses
// (model::PlanShards), so the local heads, KV-head replication, local experts and layer split
// are q3vl's own. Prints one JSON object. Inputs and assumptions: README.md, "perf_model".
#include <algorithm>
#include <cmath>
#include <iostream>
#include <string>
#include <vector>

#include <utility>  // before Boost (C++20)
#include "boost/program_options.hpp"
#include "absl/status/statusor.h"
#include "model/config.h"
#include "model/demo_model.h"
#include "model/qwen3_vl.h"
#include "nlohmann/json.hpp"
#include "parallel/topology.h"

namespace q3vl {
namespace {

namespace po = boost::program_options;
using Json = nlohmann::ordered_json;

constexpr double kBf16 = 2.0;  // bytes per weight, activation and KV element

// Device and interconnect figures. Defaults: H100 SXM5 80 GB in 8-GPU NVSwitch nodes with
// 8x400 Gb/s InfiniBand per node (README.md lists the sources).
struct Hardware {
  double copy_gbps = 3000;            // device memory copy bandwidth (GB/s)
  double bandwidth_fraction = 0.80;   // memory-bound kernels: achieved / copy bandwidth
  double gemm_peak_tflops = 720;      // cuBLAS bf16 large-square GEMM
  double gemm_fraction = 0.70;        // dense and grouped GEMMs: achieved / peak
  double attention_fraction = 0.50;   // flash prefill attention: achieved / GEMM peak
  double kernel_gap_us = 1.5;         // per kernel launch inside a CUDA graph
  int kernels_per_layer = 24;         // decoder layer kernels (norms, GEMMs, rotary, router, ...)
  double memory_gb = 80;              // HBM per GPU
  double usable_memory_fraction = 0.90;
  int gpus_per_node = 8;
  double nvlink_allreduce_busbw = 480;  // GB/s, NVLS all-reduce, 8 GPUs
  double nvlink_busbw = 370;            // GB/s, ring/all-gather/all-to-all/p2p
  double nvlink_latency_us = 12;
  double ib_gbps_per_gpu = 45;          // GB/s: one 400 Gb/s NIC per GPU, after protocol overhead
  double ib_latency_us = 25;

  double bytes_per_us() const { return copy_gbps * bandwidth_fraction * 1e3; }
  double gemm_flops_per_us() const { return gemm_peak_tflops * gemm_fraction * 1e6; }
  double attention_flops_per_us() const { return gemm_peak_tflops * attention_fraction * 1e6; }
};

// ---------------------------------------------------------------------------------------------
// NCCL collective costs. `bytes` follows nccl-tests' size convention: the buffer of one rank
// (all-reduce), the gathered output (all-gather), one rank's send buffer (all-to-all).

struct Group {
  int n = 1;                  // ranks
  bool spans_nodes = false;   // members on more than one node
};

class Nccl {
 public:
  explicit Nccl(const Hardware& hw) : hw_(hw) {}

  double AllReduceUs(double bytes, Group g) const {
    if (g.n <= 1 || bytes <= 0) return 0;
    if (!g.spans_nodes) {
      return hw_.nvlink_latency_us + 2.0 * (g.n - 1) / g.n * bytes / Gbps(hw_.nvlink_allreduce_busbw);
    }
    // Hierarchical: reduce-scatter and all-gather in the node, all-reduce of 1/k over the nodes.
    const double k = hw_.gpus_per_node, nodes = g.n / k;
    return hw_.ib_latency_us + 2.0 * (k - 1) / k * bytes / Gbps(hw_.nvlink_busbw) +
           2.0 * (nodes - 1) / nodes * (bytes / k) / Gbps(hw_.ib_gbps_per_gpu);
  }
  double AllGatherUs(double bytes, Group g) const { return SpreadUs(bytes, g); }
  double AllToAllUs(double bytes, Group g) const { return SpreadUs(bytes, g); }
  double SendUs(double bytes, bool across_nodes) const {
    if (bytes <= 0) return 0;
    return across_nodes ? hw_.ib_latency_us + bytes / Gbps(hw_.ib_gbps_per_gpu)
                        : hw_.nvlink_latency_us + bytes / Gbps(hw_.nvlink_busbw);
  }

 private:
  static double Gbps(double gbps) { return gbps * 1e3; }  // bytes per microsecond
  // Every rank receives (n-1)/n of `bytes`: over NVLink, or the off-node share over IB.
  double SpreadUs(double bytes, Group g) const {
    if (g.n <= 1 || bytes <= 0) return 0;
    if (!g.spans_nodes) return hw_.nvlink_latency_us + (g.n - 1.0) / g.n * bytes / Gbps(hw_.nvlink_busbw);
    const double k = hw_.gpus_per_node;
    const double off_node = (g.n - k) / g.n * bytes, on_node = (k - 1) / g.n * bytes;
    return hw_.ib_latency_us +
           std::max(off_node / Gbps(hw_.ib_gbps_per_gpu), on_node / Gbps(hw_.nvlink_busbw));
  }
  const Hardware& hw_;
};

// ---------------------------------------------------------------------------------------------
// One mesh as q3vl lays it out (parallel/topology.h): a replica is P stages of S = max(T, E)
// consecutive ranks; S/T attention groups of T; E expert groups of X = S/E ranks that split the
// expert width.

enum class AttentionMode {
  kDataParallel,   // what q3vl runs: each attention group takes its own sequences
  kReplicated,     // for comparison: every attention group runs every sequence
};

struct Mesh {
  std::string name;
  std::string spec;  // --mesh string
  AttentionMode attention = AttentionMode::kDataParallel;
  parallel::ParallelConfig config;
  parallel::ShardPlan plan;
  int S = 1, A = 1, X = 1;  // stage ranks, attention groups, ranks per expert group

  int ranks_per_replica() const { return config.pp * S; }
  int gpus() const { return config.dp * ranks_per_replica(); }
  // Groups of consecutive ranks inside a stage; stages start at multiples of S.
  Group StageGroup(int n, const Hardware& hw) const {
    return {.n = n, .spans_nodes = n > hw.gpus_per_node || (S > hw.gpus_per_node && n == S)};
  }
};

// What one step asks of the model.
struct Work {
  int64_t sequences = 1;  // in the replica
  int64_t new_tokens = 1; // per sequence this step (1 for decode, the chunk for prefill)
  int64_t context = 0;    // tokens already in each sequence's KV cache before this step
};

// Microseconds of one decoder layer on the busiest rank, by component.
struct LayerCost {
  double attention_gemm = 0, attention_core = 0, tp_all_reduce = 0;
  double router = 0, experts = 0, dispatch = 0, combine = 0, moe_gather = 0, etp_all_reduce = 0;
  double launch = 0;
  double total() const {
    return attention_gemm + attention_core + tp_all_reduce + router + experts + dispatch + combine +
           moe_gather + etp_all_reduce + launch;
  }
  Json ToJson() const {
    return {{"attention_gemm_us", attention_gemm}, {"attention_core_us", attention_core},
            {"tp_all_reduce_us", tp_all_reduce}, {"router_us", router}, {"experts_us", experts},
            {"dispatch_us", dispatch}, {"combine_us", combine}, {"moe_gather_us", moe_gather},
            {"etp_all_reduce_us", etp_all_reduce}, {"launch_us", launch}, {"total_us", total()}};
  }
};

double Roofline(double bytes, double flops, double bytes_per_us, double flops_per_us) {
  return std::max(bytes / bytes_per_us, flops / flops_per_us);
}

// Probability that none of `k` experts drawn without replacement from `total` falls in a set
// of `local` experts: C(total - local, k) / C(total, k).
double MissProbability(int total, int local, int k) {
  double p = 1.0;
  for (int i = 0; i < k; ++i) p *= static_cast<double>(total - local - i) / (total - i);
  return std::max(p, 0.0);
}

LayerCost Layer(const model::TextConfig& t, const Mesh& m, const Hardware& hw, const Nccl& nccl,
                const Work& w) {
  const parallel::ShardPlan& plan = m.plan;
  const double d = t.hidden_size, hd = t.head_dim, inter = plan.local_moe_intermediate;
  const double h = plan.local_heads, kv = plan.local_kv_heads;
  const int64_t tokens = w.sequences * w.new_tokens;  // the stage's tokens this step
  // Sequences (and tokens) one attention group runs.
  const int64_t group_seqs = m.attention == AttentionMode::kDataParallel
                                 ? (w.sequences + m.A - 1) / m.A
                                 : w.sequences;
  const double group_tokens = static_cast<double>(group_seqs * w.new_tokens);
  LayerCost c;

  // Attention: q/k/v/o projections (column-parallel in, row-parallel out), then the core.
  const double proj_cols = (2 * h + 2 * kv) * hd;
  c.attention_gemm = Roofline(proj_cols * d * kBf16 + group_tokens * (d + proj_cols) * kBf16,
                              2 * group_tokens * proj_cols * d, hw.bytes_per_us(), hw.gemm_flops_per_us());
  const double kv_tokens_read = group_seqs * static_cast<double>(w.context + w.new_tokens);
  const double kv_bytes = kv_tokens_read * kv * hd * 2 * kBf16;
  // Causal: query i of a chunk of n new tokens after c cached ones sees c + i + 1 keys.
  const double pairs = group_seqs * (static_cast<double>(w.new_tokens) * w.context +
                                     w.new_tokens * (w.new_tokens + 1) / 2.0);
  const double core_flops = 4 * pairs * h * hd;
  c.attention_core = w.new_tokens == 1
                         ? Roofline(kv_bytes, core_flops, hw.bytes_per_us(), hw.gemm_flops_per_us())
                         : Roofline(kv_bytes, core_flops, hw.bytes_per_us(), hw.attention_flops_per_us());
  c.tp_all_reduce = nccl.AllReduceUs(group_tokens * d * kBf16, m.StageGroup(m.config.tp, hw));

  // MoE. Router on every token the rank holds.
  const double experts = t.num_experts, k = t.top_k, local = plan.local_experts;
  c.router = Roofline(d * experts * kBf16 + group_tokens * d * kBf16, 2 * group_tokens * d * experts,
                      hw.bytes_per_us(), hw.gemm_flops_per_us());
  // Expert work: the stage's (token, expert) pairs spread uniformly over the E expert groups;
  // an expert's weights are read when at least one token picks it.
  const double pairs_here = tokens * k / m.config.ep;
  const double p_expert_hit = 1.0 - std::pow(1.0 - k / experts, static_cast<double>(tokens));
  const double expert_bytes = local * p_expert_hit * 3 * d * inter * kBf16;
  c.experts = Roofline(expert_bytes + pairs_here * (2 * d + 3 * inter) * kBf16,
                       2 * pairs_here * 3 * d * inter, hw.bytes_per_us(), hw.gemm_flops_per_us());
  if (m.config.ep > 1) {
    // Each token travels once to every expert group that holds one of its k experts.
    const double groups_per_token =
        m.config.ep * (1.0 - MissProbability(t.num_experts, plan.local_experts, t.top_k));
    // Replicated tokens: each of the E ranks of an ep group sends a 1/E share of the stage's
    // tokens and all-gathers the results. Data-parallel attention: each rank sends the tokens
    // of its attention group's share (1/T of the group's) and gathers inside its TP group.
    const double sent_tokens =
        m.attention == AttentionMode::kDataParallel ? group_tokens / m.config.tp
                                                    : static_cast<double>(tokens) / m.config.ep;
    const Group ep_group = m.StageGroup(m.config.ep, hw);
    // Row counts first (q3vl sizes the exchange before sending), then rows with their ids.
    c.dispatch = nccl.AllToAllUs(m.config.ep * 8.0, ep_group) +
                 nccl.AllToAllUs(sent_tokens * groups_per_token * (d * kBf16 + k * 8), ep_group);
    c.combine = nccl.AllToAllUs(sent_tokens * groups_per_token * d * kBf16, ep_group);
    c.moe_gather = m.attention == AttentionMode::kDataParallel
                       ? nccl.AllGatherUs(group_tokens * d * kBf16, m.StageGroup(m.config.tp, hw))
                       : nccl.AllGatherUs(static_cast<double>(tokens) * d * kBf16, ep_group);
  }
  c.etp_all_reduce = nccl.AllReduceUs(static_cast<double>(tokens) * d * kBf16, m.StageGroup(m.X, hw));
  c.launch = hw.kernels_per_layer * hw.kernel_gap_us;
  return c;
}

// Bytes of weights one rank of stage `stage` holds, and KV bytes per cached token.
struct Footprint {
  double weight_bytes = 0;
  double kv_bytes_per_token = 0;
};

Footprint RankFootprint(const model::TextConfig& t, const Mesh& m, int stage) {
  const parallel::ShardPlan& plan = m.plan;
  const double d = t.hidden_size, hd = t.head_dim;
  const double layers = plan.NumLayers(stage);
  const double attention = (2.0 * plan.local_heads + 2.0 * plan.local_kv_heads) * hd * d;
  const double experts = plan.local_experts * 3.0 * d * plan.local_moe_intermediate;
  const double router = d * t.num_experts;
  const double vocab_rows = std::ceil(static_cast<double>(t.vocab_size) / m.config.tp);
  double embed = 0;
  if (stage == 0) embed += vocab_rows * d;
  if (stage == m.config.pp - 1) embed += vocab_rows * d;  // LM head (untied)
  Footprint f;
  f.weight_bytes = (layers * (attention + experts + router + 4 * d) + embed) * kBf16;
  f.kv_bytes_per_token = layers * plan.local_kv_heads * hd * 2 * kBf16;
  return f;
}

struct StepResult {
  double step_us = 0;
  LayerCost layer;  // stage 0's layer
  double lm_head_us = 0, pipeline_us = 0;
};

// One step of the replica: stages run one after another (no micro-batching), the last applies
// the LM head and samples, and the tokens return to stage 0.
StepResult Step(const model::TextConfig& t, const Mesh& m, const Hardware& hw, const Nccl& nccl,
                const Work& w) {
  StepResult r;
  r.layer = Layer(t, m, hw, nccl, w);
  for (int s = 0; s < m.config.pp; ++s) r.step_us += m.plan.NumLayers(s) * r.layer.total();
  const double sampled = static_cast<double>(w.sequences);  // one row per sequence
  const double vocab_rows = std::ceil(static_cast<double>(t.vocab_size) / m.config.tp);
  r.lm_head_us = Roofline(vocab_rows * t.hidden_size * kBf16, 2 * sampled * vocab_rows * t.hidden_size,
                          hw.bytes_per_us(), hw.gemm_flops_per_us()) +
                 nccl.AllGatherUs(sampled * m.config.tp * 8, m.StageGroup(m.config.tp, hw));
  const double hidden = static_cast<double>(w.sequences * w.new_tokens) * t.hidden_size * kBf16;
  const bool across = m.S >= hw.gpus_per_node;  // stages on different nodes
  if (m.config.pp > 1) {
    r.pipeline_us = (m.config.pp - 1) * nccl.SendUs(hidden, across) + nccl.SendUs(sampled * 8, across);
  }
  r.step_us += r.lm_head_us + r.pipeline_us;
  return r;
}

absl::StatusOr<Mesh> MakeMesh(const model::ModelConfig& config, std::string name, std::string spec,
                              AttentionMode attention) {
  Mesh m;
  m.name = std::move(name);
  m.spec = std::move(spec);
  m.attention = attention;
  auto parsed = parallel::ParallelConfig::FromString(m.spec);
  if (!parsed.ok()) return parsed.status();
  m.config = *parsed;
  auto plan = model::PlanShards(config, m.config);
  if (!plan.ok()) return plan.status();
  m.plan = *plan;
  m.S = std::max(m.config.tp, m.config.ep);
  m.A = m.S / m.config.tp;
  m.X = m.S / m.config.ep;
  return m;
}

Json HardwareJson(const Hardware& hw) {
  return {{"copy_gbps", hw.copy_gbps}, {"bandwidth_fraction", hw.bandwidth_fraction},
          {"gemm_peak_tflops", hw.gemm_peak_tflops}, {"gemm_fraction", hw.gemm_fraction},
          {"attention_fraction", hw.attention_fraction}, {"kernel_gap_us", hw.kernel_gap_us},
          {"kernels_per_layer", hw.kernels_per_layer}, {"memory_gb", hw.memory_gb},
          {"usable_memory_fraction", hw.usable_memory_fraction}, {"gpus_per_node", hw.gpus_per_node},
          {"nvlink_allreduce_busbw_gbps", hw.nvlink_allreduce_busbw},
          {"nvlink_busbw_gbps", hw.nvlink_busbw}, {"nvlink_latency_us", hw.nvlink_latency_us},
          {"ib_gbps_per_gpu", hw.ib_gbps_per_gpu}, {"ib_latency_us", hw.ib_latency_us}};
}

Json MeshJson(const model::TextConfig& t, const Mesh& m, const Hardware& hw, const Nccl& nccl,
              const std::vector<int64_t>& batches, const std::vector<int64_t>& contexts,
              const std::vector<int64_t>& prefills) {
  Json out = {{"name", m.name}, {"mesh", m.spec}, {"gpus", m.gpus()},
              {"attention", m.A == 1 ? "one_group"
                            : m.attention == AttentionMode::kDataParallel ? "data_parallel" : "replicated"},
              {"implemented", m.attention == AttentionMode::kDataParallel || m.A == 1},
              {"shard", {{"local_heads", m.plan.local_heads}, {"local_kv_heads", m.plan.local_kv_heads},
                         {"local_experts", m.plan.local_experts},
                         {"local_moe_intermediate", m.plan.local_moe_intermediate},
                         {"layer_starts", m.plan.layer_starts}}}};
  // Memory: the fullest stage decides the KV capacity of the replica.
  double min_free = 1e30, max_weights = 0, kv_per_token = 0;
  for (int s = 0; s < m.config.pp; ++s) {
    const Footprint f = RankFootprint(t, m, s);
    const double free = hw.memory_gb * 1e9 * hw.usable_memory_fraction - f.weight_bytes;
    max_weights = std::max(max_weights, f.weight_bytes);
    if (free < min_free) {
      min_free = free;
      kv_per_token = f.kv_bytes_per_token;
    }
  }
  // A cached token lives on every rank of its attention group (all groups when replicated).
  const double capacity_per_group = min_free > 0 ? min_free / kv_per_token : 0;
  const double capacity = m.attention == AttentionMode::kDataParallel ? capacity_per_group * m.A
                                                                      : capacity_per_group;
  out["memory"] = {{"weights_gb_per_gpu", max_weights / 1e9},
                   {"free_gb_per_gpu", std::max(min_free, 0.0) / 1e9},
                   {"kv_bytes_per_token_per_gpu", kv_per_token},
                   {"kv_capacity_tokens_per_replica", std::floor(capacity)},
                   {"fits", min_free > 0}};
  Json prefill = Json::array();
  for (int64_t n : prefills) {
    const StepResult r = Step(t, m, hw, nccl, {.sequences = 1, .new_tokens = n, .context = 0});
    prefill.push_back({{"tokens", n}, {"step_ms", r.step_us / 1e3},
                       {"tokens_per_s", n / (r.step_us / 1e6)}, {"layer", r.layer.ToJson()},
                       {"lm_head_us", r.lm_head_us}, {"pipeline_us", r.pipeline_us},
                       {"fits_kv", n <= capacity_per_group}});
  }
  Json decode = Json::array();
  for (int64_t ctx : contexts) {
    for (int64_t b : batches) {
      const StepResult r = Step(t, m, hw, nccl, {.sequences = b, .new_tokens = 1, .context = ctx});
      const int64_t group_seqs = m.attention == AttentionMode::kDataParallel ? (b + m.A - 1) / m.A : b;
      const double tps = b / (r.step_us / 1e6);
      decode.push_back({{"batch", b}, {"context", ctx}, {"step_ms", r.step_us / 1e3},
                        {"tokens_per_s", tps}, {"tokens_per_s_per_gpu", tps * m.config.dp / m.gpus()},
                        {"layer", r.layer.ToJson()}, {"lm_head_us", r.lm_head_us},
                        {"pipeline_us", r.pipeline_us},
                        {"fits_kv", static_cast<double>(group_seqs) * (ctx + 1) <= capacity_per_group}});
    }
  }
  out["prefill"] = std::move(prefill);
  out["decode"] = std::move(decode);
  return out;
}

std::vector<int64_t> ParseList(const std::string& s) {
  std::vector<int64_t> out;
  size_t pos = 0;
  while (pos < s.size()) {
    size_t comma = s.find(',', pos);
    if (comma == std::string::npos) comma = s.size();
    out.push_back(std::stoll(s.substr(pos, comma - pos)));
    pos = comma + 1;
  }
  return out;
}

int Main(int argc, char** argv) {
  Hardware hw;
  std::string preset, config_path, batches_arg, contexts_arg, prefills_arg;
  std::vector<std::string> extra_meshes;
  po::options_description options(
      "perf_model: predicted prefill and decode step times of a Qwen3-VL MoE model on H100 meshes "
      "(one JSON object on stdout; assumptions in benchmarks/README.md)\noptions");
  options.add_options()
      ("help", "this text")
      ("model", po::value(&preset)->default_value("235b"), "preset: 235b or 30b (Qwen3-VL-*-A*B shapes)")
      ("config", po::value(&config_path), "a model's config.json instead of a preset")
      ("mesh", po::value(&extra_meshes)->composing(),
       "extra mesh to predict, NAME:MESH[:replicated], e.g. mine:tp=4,ep=8 (repeatable); :replicated "
       "models attention groups that all run every sequence instead of their own (comparison only)")
      ("batches", po::value(&batches_arg)->default_value("1,16,64,256"), "decode batch sizes")
      ("contexts", po::value(&contexts_arg)->default_value("8192,65536"), "decode context lengths")
      ("prefill", po::value(&prefills_arg)->default_value("8192,32768"), "prefill lengths (one sequence)")
      ("copy-gbps", po::value(&hw.copy_gbps)->default_value(hw.copy_gbps), "measured device copy bandwidth, GB/s")
      ("bandwidth-fraction", po::value(&hw.bandwidth_fraction)->default_value(hw.bandwidth_fraction), "memory-bound kernels: achieved / copy bandwidth")
      ("gemm-tflops", po::value(&hw.gemm_peak_tflops)->default_value(hw.gemm_peak_tflops), "measured bf16 large-square GEMM peak, TFLOP/s")
      ("gemm-fraction", po::value(&hw.gemm_fraction)->default_value(hw.gemm_fraction), "GEMMs and grouped GEMMs: achieved / peak")
      ("attention-fraction", po::value(&hw.attention_fraction)->default_value(hw.attention_fraction), "prefill attention: achieved / GEMM peak")
      ("kernel-gap-us", po::value(&hw.kernel_gap_us)->default_value(hw.kernel_gap_us), "launch gap per kernel, us")
      ("kernels-per-layer", po::value(&hw.kernels_per_layer)->default_value(hw.kernels_per_layer), "kernels per decoder layer")
      ("memory-gb", po::value(&hw.memory_gb)->default_value(hw.memory_gb), "device memory per GPU, GB")
      ("gpus-per-node", po::value(&hw.gpus_per_node)->default_value(hw.gpus_per_node), "GPUs per NVLink domain")
      ("nvlink-allreduce-busbw", po::value(&hw.nvlink_allreduce_busbw)->default_value(hw.nvlink_allreduce_busbw), "NCCL all-reduce bus bandwidth in a node, GB/s")
      ("nvlink-busbw", po::value(&hw.nvlink_busbw)->default_value(hw.nvlink_busbw), "NCCL all-gather / all-to-all / p2p bus bandwidth in a node, GB/s")
      ("nvlink-latency-us", po::value(&hw.nvlink_latency_us)->default_value(hw.nvlink_latency_us), "NCCL small-message latency in a node, us")
      ("ib-gbps", po::value(&hw.ib_gbps_per_gpu)->default_value(hw.ib_gbps_per_gpu), "inter-node bandwidth per GPU, GB/s")
      ("ib-latency-us", po::value(&hw.ib_latency_us)->default_value(hw.ib_latency_us), "inter-node collective latency, us");
  po::variables_map vm;
  try {
    po::store(po::parse_command_line(argc, argv, options), vm);
    po::notify(vm);
  } catch (const po::error& e) {
    std::cerr << "perf_model: " << e.what() << "\n" << options;
    return 2;
  }
  if (vm.count("help")) {
    std::cout << options;
    return 0;
  }
  model::ModelConfig config;
  if (!config_path.empty()) {
    auto loaded = model::ModelConfig::FromFile(config_path);
    if (!loaded.ok()) {
      std::cerr << "perf_model: " << loaded.status() << "\n";
      return 1;
    }
    config = *loaded;
  } else if (auto published = model::PublishedConfig(preset); published.ok()) {
    config = *std::move(published);
  } else {
    std::cerr << "perf_model: --model must be 235b or 30b (or pass --config)\n";
    return 2;
  }
  std::vector<int64_t> batches, contexts, prefills;
  try {
    batches = ParseList(batches_arg);
    contexts = ParseList(contexts_arg);
    prefills = ParseList(prefills_arg);
  } catch (const std::exception&) {
    std::cerr << "perf_model: --batches, --contexts and --prefill take comma-separated integers\n";
    return 2;
  }
  struct Candidate {
    std::string name, spec;
    AttentionMode attention;
  };
  const auto R = AttentionMode::kReplicated, DP = AttentionMode::kDataParallel;
  std::vector<Candidate> candidates = {
      {"8gpu_tp8_ep8", "tp=8,ep=8", DP},           {"8gpu_tp8", "tp=8", DP},
      {"8gpu_dp_attention_ep8", "ep=8", DP},        {"8gpu_dp_attention_tp2_ep8", "tp=2,ep=8", DP},
      {"16gpu_tp8_ep8_pp2", "pp=2,tp=8,ep=8", DP},  {"16gpu_tp8_ep8_dp2", "tp=8,ep=8,dp=2", DP},
      {"16gpu_dp_attention_tp8_ep16", "tp=8,ep=16", DP},
      {"16gpu_tp8_ep16_replicated_attention", "tp=8,ep=16", R},
      {"16gpu_dp_attention_ep16", "ep=16", DP},
  };
  for (const std::string& arg : extra_meshes) {
    const size_t a = arg.find(':');
    if (a == std::string::npos) {
      std::cerr << "perf_model: --mesh wants NAME:MESH[:replicated], got '" << arg << "'\n";
      return 2;
    }
    std::string spec = arg.substr(a + 1);
    AttentionMode mode = DP;
    if (const size_t b = spec.find(':'); b != std::string::npos) {
      if (spec.substr(b + 1) != "replicated") {
        std::cerr << "perf_model: the third part of --mesh may only be replicated\n";
        return 2;
      }
      mode = R;
      spec.resize(b);
    }
    candidates.push_back({arg.substr(0, a), spec, mode});
  }
  const Nccl nccl(hw);
  Json meshes = Json::array(), rejected = Json::array();
  for (const Candidate& c : candidates) {
    auto mesh = MakeMesh(config, c.name, c.spec, c.attention);
    if (!mesh.ok()) {
      rejected.push_back({{"name", c.name}, {"mesh", c.spec}, {"error", std::string(mesh.status().message())}});
      continue;
    }
    meshes.push_back(MeshJson(config.text, *mesh, hw, nccl, batches, contexts, prefills));
  }
  const model::TextConfig& t = config.text;
  Json out = {{"benchmark", "perf_model"},
              {"model", {{"hidden", t.hidden_size}, {"layers", t.num_layers}, {"heads", t.num_heads},
                         {"kv_heads", t.num_kv_heads}, {"head_dim", t.head_dim},
                         {"experts", t.num_experts}, {"top_k", t.top_k},
                         {"moe_intermediate", t.moe_intermediate_size}, {"vocab", t.vocab_size}}},
              {"hardware", HardwareJson(hw)},
              {"meshes", std::move(meshes)},
              {"rejected", std::move(rejected)}};
  std::cout << out.dump(2) << std::endl;
  return 0;
}

}  // namespace
}  // namespace q3vl

int main(int argc, char** argv) { return q3vl::Main(argc, argv); }
