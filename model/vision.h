// The Qwen3-VL vision tower: Conv3d patch embedding (as a GEMM), bilinearly interpolated
// learned position embedding, 2-D rotary, pre-norm ViT blocks with attention restricted to each
// (item, temporal group) segment, the main 2x2 patch merger and the DeepStack mergers tapped
// after selected blocks. Weights are immutable after Load; Forward is reentrant.
#ifndef Q3VL_MODEL_VISION_H_
#define Q3VL_MODEL_VISION_H_

#include <vector>

#include "core/backend.h"
#include "model/config.h"
#include "model/media/vision_input.h"
#include "model/rope.h"
#include "model/trace.h"
#include "model/weight_loader.h"

namespace q3vl::model {

struct VisionOutput {
  Tensor embeds;                  // [N / m^2, out_hidden]
  std::vector<Tensor> deepstack;  // per DeepStack index: [N / m^2, out_hidden]
};

// Validates pixel_values against the grids (shape, patch size, merge divisibility): needs only
// the config, so ranks without the tower's weights check requests too.
absl::Status CheckVisionInput(const VisionConfig& config, const VisionInput& input);

class VisionTower {
 public:
  // Declares and loads every "model.visual.*" weight.
  VisionTower(const VisionConfig& config, WeightLoader& loader);

  // Patches of one pass: Forward runs an input in passes of whole segments (an image, or a
  // video's frame groups) of at most this many patches, so a long video's activations stay
  // bounded (about 0.7 GB at the 235B's width); an image larger than this runs in a pass of its
  // own. Every op is per row except attention, which stays inside a segment, so the result
  // equals one pass.
  static constexpr int64_t kMaxPatchesPerPass = 16384;

  // Runs the tower; `trace` (optional) sees "vision_patch_embed", "vision_pos_embed",
  // "vision_block" (index = block), once per pass.
  VisionOutput Forward(Backend& backend, const VisionInput& input, const TraceFn* trace = nullptr) const;
  // Forward with passes of at most `max_patches` patches (tests choose small ones).
  VisionOutput Forward(Backend& backend, const VisionInput& input, int64_t max_patches, const TraceFn* trace) const;

  const VisionConfig& config() const { return config_; }

  // Validates pixel_values against the grids (shape, patch size, merge divisibility).
  absl::Status CheckInput(const VisionInput& input) const;

 private:
  struct Block {
    Tensor norm1_w, norm1_b, norm2_w, norm2_b;  // [Dv]
    Tensor qkv_w;    // [3 Dv, Dv]
    Tensor qkv_b;    // [3 Dv]
    Tensor proj_w;   // [Dv, Dv]
    Tensor proj_b;   // [Dv]
    Tensor fc1_w;    // [Iv, Dv]
    Tensor fc1_b;    // [Iv]
    Tensor fc2_w;    // [Dv, Iv]
    Tensor fc2_b;    // [Dv]
  };
  struct Merger {
    Tensor norm_w, norm_b;  // [Dv] (main) or [4 Dv] (DeepStack, post-shuffle norm)
    Tensor fc1_w;           // [4 Dv, 4 Dv]
    Tensor fc1_b;           // [4 Dv]
    Tensor fc2_w;           // [out, 4 Dv]
    Tensor fc2_b;           // [out]
    bool postshuffle_norm = false;
  };
  static Merger LoadMerger(WeightLoader& loader, const std::string& prefix, int64_t norm_dim,
                           int64_t merged_dim, int64_t out_dim, bool postshuffle);

  // Position embedding [N, Dv] and the patch (row, col) of every patch row.
  Tensor PositionEmbedding(const std::vector<GridThw>& grids, std::vector<int64_t>* rows,
                           std::vector<int64_t>* cols) const;
  // One pass over every patch of `input`.
  VisionOutput RunPass(Backend& backend, const VisionInput& input, const TraceFn* trace) const;
  void RunBlock(Backend& backend, const Block& block, const RopeTables& rope,
                const std::vector<int64_t>& segments, Tensor& x) const;
  Tensor RunMerger(Backend& backend, const Merger& merger, const Tensor& x) const;

  VisionConfig config_;
  Tensor patch_w_;    // [Dv, C * tp * ps * ps]
  Tensor patch_b_;    // [Dv]
  Tensor pos_table_;  // [S * S, Dv], host
  std::vector<Block> blocks_;
  Merger merger_;
  std::vector<Merger> deepstack_mergers_;
};

}  // namespace q3vl::model

#endif  // Q3VL_MODEL_VISION_H_
