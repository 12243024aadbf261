// Memory plan: what one replica's ranks hold for a model on a mesh (weights, the activation
// workspace of the largest step, the vision features of the largest request, the KV pool) and
// what that lets it serve (tokens in the pool, concurrent sequences per context length, whether
// one 256K-token video request fits). Pure arithmetic on the config and the mesh, from the same
// shard plan the loader uses; `q3vl plan` prints it and a replica sizes its KV pool with it.
// Every figure is per rank and the replica's answer is its tightest rank (see kv/README.md,
// "What fits").
#ifndef Q3VL_MODEL_MEMORY_PLAN_H_
#define Q3VL_MODEL_MEMORY_PLAN_H_

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/dtype.h"
#include "model/config.h"
#include "parallel/topology.h"

namespace q3vl::model {

struct MemoryPlanOptions {
  parallel::ParallelConfig mesh;
  // GEMM weights as stored: bf16, or fp8 e4m3 with one f32 scale per 128x128 block (an FP8
  // checkpoint). Norms, biases, the router and the vision tower are held in f32 (as loaded).
  DType weight_dtype = DType::kBF16;
  // KV pages: f32, bf16, or fp8 e4m3 with one f32 scale per page and KV head (k and v).
  DType kv_dtype = DType::kBF16;
  int64_t page_size = 16;
  int64_t max_num_batched_tokens = 2048;
  int64_t max_num_seqs = 256;
  // Vision features kept across requests (EngineOptions::encoder_cache_tokens).
  int64_t encoder_cache_tokens = 16384;
  // Patches the vision tower runs in one pass (VisionTower::kMaxPatchesPerPass), and the
  // largest image (one segment, never cut: 16777216 pixels / 16^2 at the official processor's
  // longest_edge).
  int64_t vision_patches_per_pass = 16384;
  int64_t largest_image_patches = 65536;
  // Memory per rank: device memory x utilization (GPU), or 0 with kv_pool_bytes set (CPU).
  int64_t device_memory_bytes = 0;
  double memory_utilization = 0.9;
  // A fixed KV pool per rank (CPU's --kv-cache-memory); used when device_memory_bytes is 0.
  int64_t kv_pool_bytes = 0;
  // Bytes of one activation element (the decoder and vision tower compute in f32 today).
  int64_t activation_bytes = 4;
};

// One kind of rank of the replica (ranks of a kind hold the same amounts).
struct RankMemory {
  std::string role;  // "vision", "stage 0", "stage 1", ... ("stage 0" holds the embedding and,
                     // without vision ranks, the tower; the last stage holds the LM head)
  int ranks = 0;     // how many ranks of the replica are of this kind
  int64_t weights_bytes = 0;
  int64_t workspace_bytes = 0;        // the largest step's activations (decoder and tower)
  int64_t vision_feature_bytes = 0;   // encoder cache + the largest request's features held
  int64_t kv_bytes_per_token = 0;     // 0 on vision ranks
  int64_t kv_pool_bytes = 0;          // what is left for the KV pool
};

struct MemoryPlan {
  std::vector<RankMemory> ranks;
  // The replica's figures, from its tightest decoder rank.
  int64_t weights_bytes_per_rank = 0;       // max over ranks
  int64_t workspace_bytes_per_rank = 0;     // max over ranks
  int64_t kv_bytes_per_token_per_rank = 0;  // max over decoder ranks
  int64_t attention_groups = 1;             // data-parallel attention groups (each its own pool)
  int64_t kv_pool_tokens = 0;               // tokens one group's pool holds (a sequence's limit)
  // Sequences of `length` tokens (keys: 32768, 131072, 262144 and the model's context) that
  // run at once over all groups, capped by max_num_seqs.
  std::map<int64_t, int64_t> max_concurrent_sequences;
  // One request of the model's whole context (up to 262144 tokens) made of a video: its KV in
  // one group's pool and its vision features on stage 0 together with everything else.
  bool fits_256k_video = false;
  int64_t video_request_tokens = 0;   // the length checked (min(262144, context))
  int64_t video_feature_bytes = 0;    // its features on a stage-0 rank
  std::string video_shortfall;        // why it does not fit (empty when it does)

  // Pages of page_size tokens for one group's pool (what a ModelRunner allocates).
  int64_t KvPages(int64_t page_size) const { return kv_pool_tokens / page_size; }
  std::string ToJson() const;
  std::string ToTable() const;
};

// KV bytes of one token on one rank holding `layers` layers and `kv_heads` KV heads.
int64_t KvBytesPerToken(int64_t layers, int64_t kv_heads, int64_t head_dim, DType kv_dtype, int64_t page_size);

// InvalidArgument when the mesh does not fit the model (ComputeShardPlan's message), when the
// memory is too small for the weights and workspace, or for an unsupported dtype.
absl::StatusOr<MemoryPlan> PlanMemory(const ModelConfig& config, const MemoryPlanOptions& options);

// "80GiB", "141GB", "512MiB", "1e9", "4096" -> bytes (binary for Ki/Mi/Gi/Ti, decimal for
// K/M/G/T); InvalidArgument otherwise.
absl::StatusOr<int64_t> ParseBytes(const std::string& text);
// 1.5 GiB, 48.0 KiB, 12 B.
std::string FormatBytes(int64_t bytes);

}  // namespace q3vl::model

#endif  // Q3VL_MODEL_MEMORY_PLAN_H_
