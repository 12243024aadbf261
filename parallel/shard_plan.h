// ShardPlan: the derived per-rank sizes of a mesh for one model (local heads, KV-head
// replication, local experts, expert width, layer ranges per stage). ComputeShardPlan is the one
// place they are computed and divisibility-checked, before any weight is read; its errors say
// which sizes would be valid. Plain values: immutable once built, thread-safe.
#ifndef Q3VL_PARALLEL_SHARD_PLAN_H_
#define Q3VL_PARALLEL_SHARD_PLAN_H_

#include <vector>

#include "absl/status/statusor.h"
#include "parallel/topology.h"

namespace q3vl::parallel {

// The model sizes the mesh must divide (from the decoder config).
struct ModelDims {
  int num_heads = 0;         // query heads
  int num_kv_heads = 0;      // KV heads
  int num_experts = 0;       // 0: dense MLP (then ep must be 1)
  int moe_intermediate = 0;  // expert intermediate width (0 with no experts)
  int num_layers = 0;        // decoder layers
  int num_deepstack = 0;     // layers [0, num_deepstack) get DeepStack features: stage 0 owns them
};

struct ShardPlan {
  int tp = 1;                      // attention TP size T
  int local_heads = 0;             // num_heads / T
  int local_kv_heads = 0;          // num_kv_heads / T, or 1 when T > num_kv_heads
  int kv_replication = 1;          // TP ranks holding the same KV head: T / num_kv_heads, or 1
  int local_experts = 0;           // num_experts / E
  int local_moe_intermediate = 0;  // moe_intermediate / X (X = S / E ranks per expert group)
  std::vector<int> layer_starts;   // [P + 1]: stage p owns layers [starts[p], starts[p + 1])

  // First query head / KV head of `tp_rank`.
  int FirstHead(int tp_rank) const { return tp_rank * local_heads; }
  int FirstKvHead(int tp_rank) const { return tp_rank / kv_replication * local_kv_heads; }
  // Global id of local expert 0 of `ep_rank`.
  int FirstExpert(int ep_rank) const { return ep_rank * local_experts; }
  // Column offset of `etp_rank`'s slice of the expert intermediate dim.
  int FirstIntermediate(int etp_rank) const { return etp_rank * local_moe_intermediate; }
  int FirstLayer(int stage) const { return layer_starts[stage]; }
  int NumLayers(int stage) const { return layer_starts[stage + 1] - layer_starts[stage]; }
};

// Checks that `config` fits `dims` and derives the shard sizes:
//   tp divides num_heads; tp divides num_kv_heads or is a multiple of it (KV heads replicated);
//   ep divides num_experts; X = max(tp, ep) / ep divides moe_intermediate;
//   every stage gets >= 1 layer and stage 0 gets >= num_deepstack layers.
// Layers are split as evenly as possible (earlier stages take the remainder), then stage 0 is
// grown to num_deepstack layers when it is short and the rest are split over stages 1..P-1.
absl::StatusOr<ShardPlan> ComputeShardPlan(const ParallelConfig& config, const ModelDims& dims);

}  // namespace q3vl::parallel

#endif  // Q3VL_PARALLEL_SHARD_PLAN_H_
