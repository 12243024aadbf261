// The vision tower as its own pipeline stage. The V vision ranks split the work of one
// VisionInput by frame group (an image is one group; a video of grid (t, h, w) is t groups,
// which the tower never mixes: attention is per group, position embeddings and rotary repeat
// over t), so splitting one long video over ranks gives exactly the one-rank result. Each
// rank runs its contiguous share, vision rank 0 gathers the shares in order and broadcasts the
// embeddings and DeepStack features over "vision_bcast" to every stage-0 decoder rank.
// Collective: every vision and stage-0 rank makes the same calls in the same order. A failed
// collective (lost peer) aborts the rank. Stateless functions.
#ifndef Q3VL_MODEL_VISION_STAGE_H_
#define Q3VL_MODEL_VISION_STAGE_H_

#include <cstdint>
#include <vector>

#include "core/backend.h"
#include "model/config.h"
#include "model/vision.h"
#include "parallel/communicator.h"

namespace q3vl::model {

struct VisionStageGroups {
  parallel::Communicator* vision = nullptr;  // the V vision ranks (nullptr on decoder ranks)
  parallel::Communicator* bcast = nullptr;   // vision rank 0 (root, rank 0) + stage-0 ranks
};

// The frame groups of `input` split into `parts` contiguous shares of about equal patches:
// share p holds groups [first[p], first[p + 1]) in input order.
struct FrameGroupSplit {
  std::vector<GridThw> groups;     // every frame group as a (1, h, w) grid, in input order
  std::vector<int64_t> first_row;  // [groups + 1] pixel_values row of each group
  std::vector<int64_t> first;      // [parts + 1]
};
FrameGroupSplit SplitFrameGroups(const VisionInput& input, int parts);

// Vision ranks: run this rank's share, assemble at vision rank 0, broadcast to stage 0.
// `groups.bcast` is needed on vision rank 0 only (the others are not in that group).
void ServeVision(Backend& backend, const VisionTower& tower, const VisionInput& input,
                 const VisionStageGroups& groups);

// Stage-0 decoder ranks: the broadcast result for `input` (known to every rank: shapes only).
VisionOutput ReceiveVision(Backend& backend, const ModelConfig& config, const VisionInput& input,
                           const VisionStageGroups& groups);

// Zero features of the right shapes: what later pipeline stages use (they never read them).
VisionOutput PlaceholderVision(Backend& backend, const ModelConfig& config, const VisionInput& input);

}  // namespace q3vl::model

#endif  // Q3VL_MODEL_VISION_STAGE_H_
