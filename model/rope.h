// Rotary position embeddings: the text decoder's interleaved M-RoPE (positions on three axes
// t, h, w), Qwen3-VL's get_rope_index over an expanded prompt, and the vision tower's 2-D
// rotary. Pure functions of their arguments; thread-safe.
#ifndef Q3VL_MODEL_ROPE_H_
#define Q3VL_MODEL_ROPE_H_

#include <array>
#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "core/backend.h"
#include "model/config.h"
#include "model/media/vision_input.h"

namespace q3vl::model {

struct RopeIndexParams {
  const std::vector<int64_t>* input_ids = nullptr;  // expanded prompt
  const std::vector<GridThw>* image_grids = nullptr;
  const std::vector<GridThw>* video_grids = nullptr;
  int64_t image_token_id = 0;
  int64_t video_token_id = 0;
  int64_t spatial_merge_size = 2;
};

struct RopeIndex {
  std::vector<int64_t> positions;  // [3, S] row-major: t row, h row, w row
  int64_t rope_delta = 0;          // decode token n (n >= S) sits at n + rope_delta
};

// get_rope_index. InvalidArgument when placeholder counts and grids disagree.
absl::StatusOr<RopeIndex> GetRopeIndex(const RopeIndexParams& p);

// cos/sin [T, head_dim] of the interleaved M-RoPE for positions [3, T] (t, h, w rows). Built
// on the host; Upload moves both to a backend's memory.
struct RopeTables {
  Tensor cos;
  Tensor sin;
};
inline RopeTables Upload(Backend& backend, const RopeTables& t) {
  return {.cos = q3vl::Upload(backend, t.cos), .sin = q3vl::Upload(backend, t.sin)};
}
RopeTables MropeTables(const TextConfig& config, const std::vector<int64_t>& positions, int64_t num_tokens);

// The text rotary's inverse frequencies (head_dim / 2 of them) and the factor cos and sin are
// scaled by: theta^(-2j/d) and 1, or with YaRN (config.yarn) the frequencies blended between
// extrapolation (fast dimensions) and interpolation by `factor` (slow ones) over a linear ramp
// between the correction dimensions of beta_fast and beta_slow, and the attention scaling
// 0.1 ln(factor) + 1 (Hugging Face's _compute_yarn_parameters).
struct TextRopeFrequencies {
  std::vector<float> inv_freq;
  float attention_scaling = 1.0f;
};
TextRopeFrequencies TextRope(const TextConfig& config);

// cos/sin [N, head_dim] of the vision 2-D rotary for (row, col) of each patch.
RopeTables VisionRopeTables(int64_t head_dim, const std::vector<int64_t>& rows,
                            const std::vector<int64_t>& cols);

}  // namespace q3vl::model

#endif  // Q3VL_MODEL_ROPE_H_
