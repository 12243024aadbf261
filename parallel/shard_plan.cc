#include "parallel/shard_plan.h"

#include <algorithm>
#include <functional>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/status_macros.h"

namespace q3vl::parallel {
namespace {

// "1, 2, 4, 8" : the values in [1, limit] accepted by `ok`.
std::string ValidSizes(int limit, const std::function<bool(int)>& ok) {
  std::vector<int> sizes;
  for (int v = 1; v <= limit; ++v) {
    if (ok(v)) sizes.push_back(v);
  }
  return absl::StrJoin(sizes, ", ");
}

bool TpFits(int tp, const ModelDims& dims) {
  if (dims.num_heads % tp != 0) return false;
  return dims.num_kv_heads % tp == 0 || tp % dims.num_kv_heads == 0;
}

absl::Status CheckDims(const ModelDims& dims) {
  if (dims.num_heads <= 0 || dims.num_kv_heads <= 0 || dims.num_layers <= 0 ||
      dims.num_experts < 0 || dims.moe_intermediate < 0 || dims.num_deepstack < 0 ||
      dims.num_heads % dims.num_kv_heads != 0 || dims.num_deepstack > dims.num_layers ||
      (dims.num_experts > 0 && dims.moe_intermediate <= 0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("model sizes are inconsistent: num_heads=", dims.num_heads,
                     " num_kv_heads=", dims.num_kv_heads, " num_experts=", dims.num_experts,
                     " moe_intermediate=", dims.moe_intermediate, " num_layers=", dims.num_layers,
                     " num_deepstack=", dims.num_deepstack));
  }
  return absl::OkStatus();
}

absl::Status CheckAttention(const ParallelConfig& config, const ModelDims& dims) {
  if (TpFits(config.tp, dims)) return absl::OkStatus();
  const std::string why = dims.num_heads % config.tp != 0
                              ? absl::StrCat("does not divide num_heads=", dims.num_heads)
                              : absl::StrCat("neither divides num_kv_heads=", dims.num_kv_heads,
                                             " nor is a multiple of it");
  return absl::InvalidArgumentError(
      absl::StrCat("tp=", config.tp, " ", why, " (valid tp for this model: ",
                   ValidSizes(dims.num_heads, [&](int t) { return TpFits(t, dims); }), ")"));
}

absl::Status CheckExperts(const ParallelConfig& config, const ModelDims& dims) {
  if (dims.num_experts == 0) {
    if (config.ep == 1) return absl::OkStatus();
    return absl::InvalidArgumentError(
        absl::StrCat("ep=", config.ep, " but the model has no experts (valid ep: 1)"));
  }
  if (dims.num_experts % config.ep != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "ep=", config.ep, " does not divide num_experts=", dims.num_experts, " (valid ep: ",
        ValidSizes(dims.num_experts, [&](int e) { return dims.num_experts % e == 0; }), ")"));
  }
  const int x = config.expert_tp();
  if (dims.moe_intermediate % x != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tp=", config.tp, ",ep=", config.ep, " splits each expert over max(tp, ep) / ep = ", x,
        " ranks, which does not divide moe_intermediate=", dims.moe_intermediate,
        " (valid ranks per expert: ",
        ValidSizes(std::min(dims.moe_intermediate, 1 << 12),
                   [&](int v) { return dims.moe_intermediate % v == 0; }),
        ")"));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<int>> SplitLayers(const ParallelConfig& config, const ModelDims& dims) {
  const int num_stages = config.pp;
  const int first_min = std::max(1, dims.num_deepstack);
  const int max_pp = dims.num_layers - first_min + 1;
  if (num_stages > max_pp) {
    return absl::InvalidArgumentError(
        absl::StrCat("pp=", num_stages, " needs at least ", first_min + num_stages - 1,
                     " decoder layers (stage 0 owns the ", first_min,
                     " DeepStack layer(s), every other stage at least one) but the model has ",
                     dims.num_layers, " (valid pp: 1..", max_pp, ")"));
  }
  std::vector<int> counts(num_stages, dims.num_layers / num_stages);
  for (int p = 0; p < dims.num_layers % num_stages; ++p) ++counts[p];
  if (counts[0] < first_min) {
    counts[0] = first_min;
    const int rest = dims.num_layers - first_min, others = num_stages - 1;
    for (int p = 1; p < num_stages; ++p)
      counts[p] = rest / others + (p - 1 < rest % others ? 1 : 0);
  }
  std::vector<int> starts(num_stages + 1, 0);
  for (int p = 0; p < num_stages; ++p) starts[p + 1] = starts[p] + counts[p];
  return starts;
}

}  // namespace

absl::StatusOr<ShardPlan> ComputeShardPlan(const ParallelConfig& config, const ModelDims& dims) {
  Q3VL_RETURN_IF_ERROR(config.Validate());
  Q3VL_RETURN_IF_ERROR(CheckDims(dims));
  Q3VL_RETURN_IF_ERROR(CheckAttention(config, dims));
  Q3VL_RETURN_IF_ERROR(CheckExperts(config, dims));
  ShardPlan plan;
  plan.tp = config.tp;
  plan.local_heads = dims.num_heads / config.tp;
  if (config.tp > dims.num_kv_heads) {
    plan.local_kv_heads = 1;
    plan.kv_replication = config.tp / dims.num_kv_heads;
  } else {
    plan.local_kv_heads = dims.num_kv_heads / config.tp;
    plan.kv_replication = 1;
  }
  plan.local_experts = dims.num_experts / config.ep;
  plan.local_moe_intermediate = dims.moe_intermediate / config.expert_tp();
  Q3VL_ASSIGN_OR_RETURN(plan.layer_starts, SplitLayers(config, dims));
  return plan;
}

}  // namespace q3vl::parallel
