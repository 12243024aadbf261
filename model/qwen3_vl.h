// A loaded Qwen3-VL-MoE model: config, vision tower and text decoder, plus the request-level
// pieces that tie them together (visual embedding placement, DeepStack rows). Immutable after
// Load; forward calls are made by one Generator (or engine) at a time.
#ifndef Q3VL_MODEL_QWEN3_VL_H_
#define Q3VL_MODEL_QWEN3_VL_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/backend.h"
#include "model/config.h"
#include "model/decoder.h"
#include "model/safetensors.h"
#include "model/vision.h"
#include "model/vision_stage.h"
#include "parallel/comm_groups.h"
#include "parallel/shard_plan.h"
#include "parallel/topology.h"

namespace q3vl::model {

// How this rank takes part in a mesh. Absent (null topology): one rank holds the whole model.
struct ModelParallel {
  const parallel::Topology* topology = nullptr;
  const parallel::CommGroups* groups = nullptr;  // REQUIRES: made from *topology
};

// The mesh checked against the model before any weight is read (InvalidArgument saying what
// would be valid). Meshes this build cannot run yet (pp > 1, vision ranks) are Unimplemented.
absl::StatusOr<parallel::ShardPlan> PlanShards(const ModelConfig& config,
                                               const parallel::ParallelConfig& mesh);

class Qwen3VL {
 public:
  // Reads DIR/config.json and the safetensors checkpoint in DIR; every missing, mismatched or
  // unexpected tensor is reported in one error.
  // With `parallel`, this rank reads only its slices (heads, experts, vocab rows) and its
  // decoder layers use the mesh's groups.
  static absl::StatusOr<std::unique_ptr<Qwen3VL>> Load(const std::string& dir, Backend& backend,
                                                       const ModelParallel& parallel = {});

  const ModelConfig& config() const { return config_; }
  // REQUIRES: has_vision_tower() (ranks that receive vision features hold no tower).
  const VisionTower& vision() const { return *vision_; }
  bool has_vision_tower() const { return vision_ != nullptr; }
  // REQUIRES: !is_vision_rank() (vision ranks hold no decoder).
  const TextDecoder& decoder() const { return *decoder_; }
  // A rank of the mesh's vision stage: it serves the tower (ServeVision) and holds no decoder.
  bool is_vision_rank() const { return role_ == Role::kVision; }

  // The vision features of `input` as this rank needs them: the tower run here (one rank, or
  // stage 0 of a mesh without vision ranks), received from the vision stage (stage 0 of a mesh
  // with vision ranks), or zero placeholders (later pipeline stages never read them).
  // Collective under a mesh with vision ranks: matches ServeVision on the vision ranks.
  VisionOutput RunVision(const VisionInput& input, const TraceFn* trace = nullptr) const;
  // True when RunVision is a collective over stage 0 (features received from vision ranks):
  // every stage-0 rank must call it for every input, in the same order.
  bool vision_is_collective() const { return role_ == Role::kReceive; }
  // Vision ranks: this rank's part of the tower for `input` (see model/vision_stage.h).
  void ServeVision(const VisionInput& input) const;
  Backend& backend() const { return backend_; }
  uint64_t bytes_read() const { return checkpoint_->bytes_read(); }

 private:
  Qwen3VL(ModelConfig config, Backend& backend) : config_(std::move(config)), backend_(backend) {}

  // What this rank does with the vision tower.
  enum class Role : unsigned char { kLocal, kVision, kReceive, kPlaceholder };
  Role role_ = Role::kLocal;
  VisionStageGroups vision_groups_;

  ModelConfig config_;
  Backend& backend_;
  std::unique_ptr<Checkpoint> checkpoint_;  // keeps mapped tensors (the embedding) alive
  std::unique_ptr<VisionTower> vision_;
  std::unique_ptr<TextDecoder> decoder_;
};

}  // namespace q3vl::model

#endif  // Q3VL_MODEL_QWEN3_VL_H_
