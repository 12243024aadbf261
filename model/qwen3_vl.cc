#include "model/qwen3_vl.h"

#include <filesystem>

#include "absl/strings/str_cat.h"
#include "core/check.h"
#include "core/status_macros.h"

namespace q3vl::model {

namespace {

parallel::Communicator* DataPlane(const parallel::CommGroups& groups, const char* name) {
  const parallel::CommGroup& g = groups.group(name);
  return g.size() > 1 ? g.device.get() : nullptr;
}

parallel::Communicator* ControlPlane(const parallel::CommGroups& groups, const char* name) {
  const parallel::CommGroup& g = groups.group(name);
  return g.size() > 1 ? g.host.get() : nullptr;
}

DecoderShard ShardFor(const parallel::ShardPlan& plan, const parallel::Topology& topology,
                      const parallel::CommGroups& groups) {
  const parallel::RankCoords& c = topology.coords();
  return {.first_head = plan.FirstHead(c.tp_rank), .num_heads = plan.local_heads,
          .first_kv_head = plan.FirstKvHead(c.tp_rank), .num_kv_heads = plan.local_kv_heads,
          .first_expert = plan.FirstExpert(c.ep_rank), .num_experts = plan.local_experts,
          .first_inter = plan.FirstIntermediate(c.etp_rank), .num_inter = plan.local_moe_intermediate,
          .first_layer = plan.FirstLayer(c.stage), .num_layers = plan.NumLayers(c.stage),
          .tp = DataPlane(groups, "tp"), .ep = DataPlane(groups, "ep"), .etp = DataPlane(groups, "etp"),
          .pp = DataPlane(groups, "pp"), .tp_host = ControlPlane(groups, "tp"),
          .ep_host = ControlPlane(groups, "ep"), .pp_host = ControlPlane(groups, "pp"), .attn_groups = topology.config().attn_dp(),
          .attn_group = c.attn_dp_rank, .stage = groups.group("stage").host.get()};
}

}  // namespace

absl::StatusOr<parallel::ShardPlan> PlanShards(const ModelConfig& config,
                                               const parallel::ParallelConfig& mesh) {
  const TextConfig& t = config.text;
  Q3VL_ASSIGN_OR_RETURN(
      parallel::ShardPlan plan,
      parallel::ComputeShardPlan(mesh, {.num_heads = static_cast<int>(t.num_heads),
                                        .num_kv_heads = static_cast<int>(t.num_kv_heads),
                                        .num_experts = static_cast<int>(t.num_experts),
                                        .moe_intermediate = static_cast<int>(t.moe_intermediate_size),
                                        .num_layers = static_cast<int>(t.num_layers),
                                        .num_deepstack = static_cast<int>(config.vision.deepstack_visual_indexes.size())}));
  return plan;
}

absl::StatusOr<std::unique_ptr<Qwen3VL>> Qwen3VL::Load(const std::string& dir, Backend& backend,
                                                       const ModelParallel& parallel) {
  const std::string config_path = (std::filesystem::path(dir) / "config.json").string();
  Q3VL_ASSIGN_OR_RETURN(ModelConfig config, ModelConfig::FromFile(config_path));
  DecoderShard shard;
  Role role = Role::kLocal;
  VisionStageGroups vision_groups;
  if (parallel.topology != nullptr) {
    const parallel::Topology& topology = *parallel.topology;
    Q3VL_ASSIGN_OR_RETURN(parallel::ShardPlan plan, PlanShards(config, topology.config()));
    const bool has_vision_stage = topology.config().vision > 0;
    vision_groups = {.vision = parallel.groups->group("vision").device.get(),
                     .bcast = parallel.groups->group("vision_bcast").device.get()};
    if (topology.is_vision()) {
      role = Role::kVision;
    } else {
      shard = ShardFor(plan, topology, *parallel.groups);
      if (topology.coords().stage > 0) {
        role = Role::kPlaceholder;
      } else if (has_vision_stage) {
        role = Role::kReceive;
      }
    }
  }
  std::unique_ptr<Qwen3VL> model(new Qwen3VL(std::move(config), backend));
  model->role_ = role;
  model->vision_groups_ = vision_groups;
  Q3VL_ASSIGN_OR_RETURN(model->checkpoint_, Checkpoint::Open(dir));
  WeightLoader loader(*model->checkpoint_, backend);
  // Only ranks that run the tower load it: decoder ranks of a mesh with vision ranks, and later
  // pipeline stages, receive or skip the features.
  if (role == Role::kLocal || role == Role::kVision) {
    model->vision_ = std::make_unique<VisionTower>(model->config_.vision, loader);
  } else {
    loader.SkipPrefix("model.visual.");
  }
  if (role == Role::kVision) {
    loader.SkipPrefix("model.language_model.");
    loader.SkipPrefix("lm_head.");
  } else {
    model->decoder_ = std::make_unique<TextDecoder>(model->config_.text, loader,
                                                    model->config_.tie_word_embeddings, shard);
  }
  Q3VL_RETURN_IF_ERROR(Annotate(loader.Finish(), dir));
  return model;
}

VisionOutput Qwen3VL::RunVision(const VisionInput& input, const TraceFn* trace) const {
  switch (role_) {
    case Role::kReceive:
      return ReceiveVision(backend_, config_, input, vision_groups_);
    case Role::kPlaceholder:
      return PlaceholderVision(backend_, config_, input);
    default:
      return vision_->Forward(backend_, input, trace);
  }
}

void Qwen3VL::ServeVision(const VisionInput& input) const {
  Q3VL_CHECK(role_ == Role::kVision);
  model::ServeVision(backend_, *vision_, input, vision_groups_);
}

}  // namespace q3vl::model
