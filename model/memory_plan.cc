#include "model/memory_plan.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "core/status_macros.h"
#include "model/qwen3_vl.h"
#include "model/vision.h"
#include "nlohmann/json.hpp"

namespace q3vl::model {
namespace {

constexpr int64_t kF32 = 4;
constexpr int64_t kVideoTokens = 262144;  // the "256K" of the question

int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Bytes of `elems` GEMM weight elements stored as `dtype` (fp8: plus an f32 scale per 128x128
// block, as FP8 checkpoints store them).
int64_t MatrixBytes(int64_t elems, DType dtype) {
  if (dtype == DType::kF8E4M3) return elems + CeilDiv(elems, 128 * 128) * kF32;
  return elems * static_cast<int64_t>(DTypeSize(dtype));
}

// Every weight of the vision tower as loaded: the blocks' and mergers' GEMM matrices as the
// checkpoint stores them (`matrix_dtype`), the rest (patch embedding, position table, norms,
// biases) in f32.
int64_t VisionWeightBytes(const VisionConfig& v, DType matrix_dtype) {
  const int64_t dv = v.hidden_size, iv = v.intermediate_size, merged = dv * v.spatial_merge_size * v.spatial_merge_size;
  const int64_t ndeep = static_cast<int64_t>(v.deepstack_visual_indexes.size());
  const int64_t patch = dv * v.patch_dim() + dv + v.num_position_embeddings * dv;
  const int64_t block_f32 = 4 * dv + 3 * dv + dv + iv + dv, block_matrix = 3 * dv * dv + dv * dv + iv * dv + dv * iv;
  const int64_t merger_f32 = merged + v.out_hidden_size, merger_matrix = merged * merged + v.out_hidden_size * merged;
  const int64_t f32 = patch + v.depth * block_f32 + (2 * dv + merger_f32) + ndeep * (2 * merged + merger_f32);
  const int64_t matrix = v.depth * block_matrix + (1 + ndeep) * merger_matrix;
  return f32 * kF32 + MatrixBytes(matrix, matrix_dtype);
}

// Activations of one pass of the tower over `patches` patches: input patches, the residual
// stream, its norm, q/k/v, attention output, the MLP's hidden layer (an upper bound: the
// buffers of one block alive together).
int64_t VisionWorkspaceBytes(const VisionConfig& v, int64_t patches, int64_t act) {
  return patches * (v.patch_dim() + 6 * v.hidden_size + v.intermediate_size) * act;
}

static_assert(MemoryPlanOptions{}.vision_patches_per_pass == VisionTower::kMaxPatchesPerPass);

}  // namespace

int64_t KvBytesPerToken(int64_t layers, int64_t kv_heads, int64_t head_dim, DType kv_dtype, int64_t page_size) {
  const int64_t per_token = 2 * layers * kv_heads * head_dim * static_cast<int64_t>(DTypeSize(kv_dtype));
  if (kv_dtype != DType::kF8E4M3) return per_token;
  // One f32 scale per (page, layer, KV head) for k and for v, spread over the page's tokens.
  return per_token + CeilDiv(2 * layers * kv_heads * kF32, page_size);
}

absl::StatusOr<MemoryPlan> PlanMemory(const ModelConfig& config, const MemoryPlanOptions& o) {
  if (o.weight_dtype != DType::kBF16 && o.weight_dtype != DType::kF8E4M3) {
    return absl::InvalidArgumentError(absl::StrCat("weight dtype ", DTypeName(o.weight_dtype), " is not bf16 or fp8"));
  }
  if (o.kv_dtype != DType::kF32 && o.kv_dtype != DType::kBF16 && o.kv_dtype != DType::kF8E4M3) {
    return absl::InvalidArgumentError(absl::StrCat("KV dtype ", DTypeName(o.kv_dtype), " is not f32, bf16 or fp8"));
  }
  if (o.page_size < 1 || o.max_num_batched_tokens < 1 || o.max_num_seqs < 1 || o.vision_patches_per_pass < 1) {
    return absl::InvalidArgumentError("page size, max-num-batched-tokens, max-num-seqs and patches per pass must be >= 1");
  }
  if (o.device_memory_bytes <= 0 && o.kv_pool_bytes <= 0) {
    return absl::InvalidArgumentError("give the device memory per rank (GPU) or a KV pool budget (CPU)");
  }
  const parallel::ParallelConfig& mesh = o.mesh;
  Q3VL_ASSIGN_OR_RETURN(parallel::ShardPlan shards, PlanShards(config, mesh));
  const TextConfig& t = config.text;
  const VisionConfig& v = config.vision;
  const int64_t d = t.hidden_size, hd = t.head_dim, act = o.activation_bytes, tokens = o.max_num_batched_tokens;
  const int64_t lh = shards.local_heads, lkv = shards.local_kv_heads, le = shards.local_experts;
  const int64_t li = shards.local_moe_intermediate, tp = mesh.tp, attn_dp = mesh.attn_dp();
  const int64_t vocab_rows = CeilDiv(t.vocab_size, tp);
  const int64_t num_deepstack = static_cast<int64_t>(v.deepstack_visual_indexes.size());
  const int64_t feature_bytes_per_token = v.out_hidden_size * (1 + num_deepstack) * act;
  const int64_t vision_weights = VisionWeightBytes(v, o.weight_dtype);
  const int64_t vision_workspace =
      VisionWorkspaceBytes(v, std::max(o.vision_patches_per_pass, o.largest_image_patches), act);
  const int64_t usable = static_cast<int64_t>(static_cast<double>(o.device_memory_bytes) * o.memory_utilization);

  MemoryPlan plan;
  plan.attention_groups = attn_dp;
  plan.video_request_tokens = std::min(kVideoTokens, t.max_position_embeddings);
  plan.video_feature_bytes = plan.video_request_tokens * feature_bytes_per_token;
  auto check_room = [&](const RankMemory& r, int64_t needed) -> absl::Status {
    if (o.device_memory_bytes <= 0 || needed <= usable) return absl::OkStatus();
    return absl::InvalidArgumentError(absl::StrCat(
        "mesh ", mesh.ToString(), ": a ", r.role, " rank needs ", FormatBytes(needed), " for weights (",
        FormatBytes(r.weights_bytes), "), workspace (", FormatBytes(r.workspace_bytes), ") and vision features (",
        FormatBytes(r.vision_feature_bytes), ") but has ", FormatBytes(usable), " (", FormatBytes(o.device_memory_bytes),
        " x ", o.memory_utilization, "); use more ranks, fp8 weights or a smaller --max-num-batched-tokens"));
  };

  if (mesh.vision > 0) {
    RankMemory r{.role = "vision", .ranks = mesh.vision, .weights_bytes = vision_weights,
                 .workspace_bytes = vision_workspace};
    Q3VL_RETURN_IF_ERROR(check_room(r, r.weights_bytes + r.workspace_bytes));
    plan.ranks.push_back(r);
  }
  int64_t pool_tokens = -1;
  for (int stage = 0; stage < mesh.pp; ++stage) {
    const int64_t layers = shards.NumLayers(stage);
    int64_t f32 = d;  // the final norm (every stage declares it)
    int64_t matrix = 0;
    int64_t dense_layers = 0;
    for (int64_t l = shards.FirstLayer(stage); l < shards.FirstLayer(stage) + layers; ++l) {
      f32 += 2 * d + 2 * hd;                                  // layer norms, q/k norms
      matrix += (2 * lh * hd * d) + (2 * lkv * hd * d);       // q, o; k, v
      if (t.IsMoeLayer(l)) {
        f32 += t.num_experts * d;                             // the router, whole on every rank
        matrix += le * (d * 2 * li + li * d);                 // gate_up, down of the local experts
      } else {
        matrix += 3 * d * CeilDiv(t.intermediate_size, tp);  // a dense MLP's tp slice
        ++dense_layers;
      }
    }
    RankMemory r{.role = absl::StrCat("stage ", stage), .ranks = mesh.stage_size()};
    r.weights_bytes = f32 * kF32 + MatrixBytes(matrix, o.weight_dtype);
    // The embedding table (stage 0) and the LM head's vocab slice (last stage) stay bf16.
    if (stage == 0) r.weights_bytes += t.vocab_size * d * 2;
    if (stage == mesh.pp - 1) r.weights_bytes += vocab_rows * d * 2;
    // The largest step: residual, norm and attention output [T, D]; q, k, v, attention [T,
    // heads]; routed rows (every token of every attention group of the stage may pick this
    // rank's experts) through gate_up, activation, down and the all-to-all buffers; a dense
    // MLP's slice; the logits of every sampled row over this rank's vocab slice.
    const int64_t routed = tokens * attn_dp * std::min<int64_t>(t.top_k, std::max<int64_t>(le, 1));
    int64_t workspace = tokens * (3 * d + 2 * lh * hd + 2 * lkv * hd + t.num_experts);
    workspace += routed * (3 * d + 3 * li);
    if (dense_layers > 0) workspace += tokens * 3 * CeilDiv(t.intermediate_size, tp);
    workspace += o.max_num_seqs * vocab_rows;
    r.workspace_bytes = workspace * act;
    if (stage == 0 && mesh.vision == 0) {
      r.weights_bytes += vision_weights;
      r.workspace_bytes = std::max(r.workspace_bytes, vision_workspace);
    }
    if (stage == 0) r.vision_feature_bytes = o.encoder_cache_tokens * feature_bytes_per_token;
    r.kv_bytes_per_token = KvBytesPerToken(layers, lkv, hd, o.kv_dtype, o.page_size);
    const int64_t fixed = r.weights_bytes + r.workspace_bytes + r.vision_feature_bytes;
    Q3VL_RETURN_IF_ERROR(check_room(r, fixed + o.page_size * r.kv_bytes_per_token));
    r.kv_pool_bytes = o.device_memory_bytes > 0 ? usable - fixed : o.kv_pool_bytes;
    const int64_t tokens_here = r.kv_pool_bytes / r.kv_bytes_per_token / o.page_size * o.page_size;
    pool_tokens = pool_tokens < 0 ? tokens_here : std::min(pool_tokens, tokens_here);
    plan.ranks.push_back(r);
  }
  for (const RankMemory& r : plan.ranks) {
    plan.weights_bytes_per_rank = std::max(plan.weights_bytes_per_rank, r.weights_bytes);
    plan.workspace_bytes_per_rank = std::max(plan.workspace_bytes_per_rank, r.workspace_bytes);
    plan.kv_bytes_per_token_per_rank = std::max(plan.kv_bytes_per_token_per_rank, r.kv_bytes_per_token);
  }
  plan.kv_pool_tokens = pool_tokens;
  std::vector<int64_t> lengths = {32768, 131072, 262144};
  if (std::find(lengths.begin(), lengths.end(), t.max_position_embeddings) == lengths.end()) {
    lengths.push_back(t.max_position_embeddings);
  }
  for (int64_t length : lengths) {
    const int64_t per_group = pool_tokens / (CeilDiv(length, o.page_size) * o.page_size);
    plan.max_concurrent_sequences[length] = std::min(o.max_num_seqs, attn_dp * per_group);
  }
  // One whole-context video request: its KV in one group's pool on every stage, and on a
  // stage-0 rank its features beside the encoder cache (on the GPU's memory; on the CPU the
  // features are host memory outside the KV budget).
  const int64_t n = plan.video_request_tokens;
  const int64_t kv_needed = CeilDiv(n, o.page_size) * o.page_size;
  if (pool_tokens < kv_needed) {
    plan.video_shortfall = absl::StrCat("its KV (", kv_needed, " tokens) exceeds the pool (", pool_tokens, " tokens)");
  }
  for (const RankMemory& r : plan.ranks) {
    if (!plan.video_shortfall.empty() || r.role != "stage 0" || o.device_memory_bytes <= 0) continue;
    const int64_t left = r.kv_pool_bytes - plan.video_feature_bytes;
    if (left < kv_needed * r.kv_bytes_per_token) {
      plan.video_shortfall = absl::StrCat(
          "on a stage 0 rank its vision features (", FormatBytes(plan.video_feature_bytes), ") and KV (",
          FormatBytes(kv_needed * r.kv_bytes_per_token), ") exceed the ", FormatBytes(r.kv_pool_bytes),
          " left after weights and workspace");
    }
  }
  plan.fits_256k_video = plan.video_shortfall.empty();
  return plan;
}

std::string MemoryPlan::ToJson() const {
  nlohmann::ordered_json j;
  j["weights_bytes_per_rank"] = weights_bytes_per_rank;
  j["workspace_bytes_per_rank"] = workspace_bytes_per_rank;
  j["kv_bytes_per_token_per_rank"] = kv_bytes_per_token_per_rank;
  j["attention_groups"] = attention_groups;
  j["kv_pool_tokens"] = kv_pool_tokens;
  nlohmann::ordered_json seqs = nlohmann::ordered_json::object();
  for (const auto& [length, n] : max_concurrent_sequences) seqs[std::to_string(length)] = n;
  j["max_concurrent_sequences"] = seqs;
  j["fits_256k_video"] = fits_256k_video;
  j["video_request_tokens"] = video_request_tokens;
  j["video_feature_bytes"] = video_feature_bytes;
  if (!video_shortfall.empty()) j["video_shortfall"] = video_shortfall;
  nlohmann::ordered_json ranks_json = nlohmann::ordered_json::array();
  for (const RankMemory& r : ranks) {
    ranks_json.push_back({{"role", r.role}, {"ranks", r.ranks}, {"weights_bytes", r.weights_bytes},
                          {"workspace_bytes", r.workspace_bytes}, {"vision_feature_bytes", r.vision_feature_bytes},
                          {"kv_bytes_per_token", r.kv_bytes_per_token}, {"kv_pool_bytes", r.kv_pool_bytes}});
  }
  j["ranks"] = ranks_json;
  return j.dump(2);
}

std::string MemoryPlan::ToTable() const {
  std::string out = absl::StrFormat("%-9s %5s %12s %12s %12s %12s %12s\n", "rank", "count", "weights", "workspace",
                                    "vision feat", "KV/token", "KV pool");
  for (const RankMemory& r : ranks) {
    absl::StrAppendFormat(&out, "%-9s %5d %12s %12s %12s %12s %12s\n", r.role, r.ranks, FormatBytes(r.weights_bytes),
                          FormatBytes(r.workspace_bytes), FormatBytes(r.vision_feature_bytes),
                          r.kv_bytes_per_token > 0 ? FormatBytes(r.kv_bytes_per_token) : "-",
                          r.kv_bytes_per_token > 0 ? FormatBytes(r.kv_pool_bytes) : "-");
  }
  absl::StrAppendFormat(&out, "\nKV pool: %d tokens per attention group, %d group%s\n", kv_pool_tokens,
                        attention_groups, attention_groups == 1 ? "" : "s");
  for (const auto& [length, n] : max_concurrent_sequences) {
    absl::StrAppendFormat(&out, "concurrent sequences of %7d tokens: %d\n", length, n);
  }
  absl::StrAppendFormat(&out, "one %d-token video request (features %s): %s\n", video_request_tokens,
                        FormatBytes(video_feature_bytes),
                        fits_256k_video ? "fits" : absl::StrCat("does not fit: ", video_shortfall));
  return out;
}

absl::StatusOr<int64_t> ParseBytes(const std::string& text) {
  size_t end = 0;
  double value = 0;
  try {
    value = std::stod(text, &end);
  } catch (...) {
    end = 0;
  }
  std::string unit = text.substr(end);
  for (char& c : unit) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  if (!unit.empty() && unit.back() == 'b') unit.pop_back();
  static const std::map<std::string, double> kUnits = {
      {"", 1.0},   {"k", 1e3},  {"m", 1e6},  {"g", 1e9},  {"t", 1e12},
      {"ki", 1024.0}, {"mi", 1048576.0}, {"gi", 1073741824.0}, {"ti", 1099511627776.0}};
  const auto unit_it = kUnits.find(unit);
  if (end == 0 || unit_it == kUnits.end() || !(value >= 0) || value * unit_it->second > 9e18) {
    return absl::InvalidArgumentError(absl::StrCat("'", text, "' is not a size such as 80GiB, 141GB, 512MiB or 4096"));
  }
  return static_cast<int64_t>(std::llround(value * unit_it->second));
}

std::string FormatBytes(int64_t bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = static_cast<double>(bytes);
  int u = 0;
  while (std::abs(v) >= 1024.0 && u < 4) v /= 1024.0, ++u;
  return u == 0 ? absl::StrCat(bytes, " B") : absl::StrFormat("%.1f %s", v, units[u]);
}

}  // namespace q3vl::model
