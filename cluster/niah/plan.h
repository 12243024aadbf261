// The geometry of a long-video needle-in-a-haystack cell (the `q3vl niah` evaluation): from a
// target length in visual tokens and a needle depth, the video to compose and what the model
// will see of it, computed with the processor's own rules (model::PlanVideo) so the numbers
// are the serving path's, not an estimate.
//
// The composed video is written at exactly the sampling rate (`fps` frames a second, each
// frame a haystack frame or the needle) and at a frame size that smart_resize keeps as it is
// (multiples of patch x merge, within a pixel budget sent as mm_processor_kwargs): then every
// frame is sampled, a frame group is `temporal_patch` consecutive frames, and the visual
// tokens are exactly groups x tokens per group. The needle fills one whole frame group, so
// the model sees it in one group, at one timestamp. Pure functions; thread-safe.
#ifndef Q3VL_CLUSTER_NIAH_PLAN_H_
#define Q3VL_CLUSTER_NIAH_PLAN_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "model/media/vision_processor.h"

namespace q3vl::cluster::niah {

// How every cell's video is sampled and sized.
struct Geometry {
  double fps = 2.0;              // frames per second of the composed video, all sampled
  int64_t width = 448;           // frame size: multiples of patch_size x merge_size
  int64_t height = 448;
  model::VisionProcessorConfig video;  // the model's video processor (patch, merge, temporal patch)

  int64_t tokens_per_group() const;  // (W / factor) x (H / factor)
  absl::Status Validate() const;
};

// A geometry for `haystack_width` x `haystack_height` frames whose groups hold at most
// `max_tokens_per_group` tokens: the aspect ratio kept, each side a multiple of the factor.
absl::StatusOr<Geometry> FitGeometry(int64_t haystack_width, int64_t haystack_height, int64_t max_tokens_per_group,
                                     double fps, const model::VisionProcessorConfig& video);

struct CellPlan {
  int64_t target_tokens = 0;
  double depth = 0.0;          // requested, in [0, 1]
  int64_t groups = 0;          // frame groups of the video
  int64_t frames = 0;          // groups x temporal patch: the composed video's frames
  double duration_s = 0.0;     // frames / fps
  int64_t visual_tokens = 0;   // what the processor makes of it: groups x tokens per group
  int64_t needle_group = 0;    // the group the needle fills
  int64_t needle_first_frame = 0;  // its frames: [first, first + temporal patch)
  double needle_start_s = 0.0;     // first frame's time
  std::string needle_timestamp;    // the group's timestamp as the prompt carries it, "<t seconds>"
  // The processor settings the request carries (mm_processor_kwargs): this video's exact
  // frame count and pixel budget, so smart_resize keeps the frame size.
  double kwargs_fps = 0.0;
  int64_t kwargs_max_frames = 0;
  int64_t kwargs_min_pixels = 0;
  int64_t kwargs_max_pixels = 0;

  // `base` (the model's video processor) with those settings: what the server processes the
  // cell's video with.
  model::VisionProcessorConfig VideoConfig(const model::VisionProcessorConfig& base) const;
};

// The cell for `target_tokens` (rounded to whole groups, at least one) with the needle at
// `depth` (0: the first group, 1: the last). Checked against model::PlanVideo: InvalidArgument
// when the processor would not keep the geometry (the numbers say why).
absl::StatusOr<CellPlan> PlanCell(const Geometry& geometry, int64_t target_tokens, double depth);

// "8k" = 8192, "256k" = 262144, "1m" = 1048576, "3000" = 3000; a comma-separated list.
absl::StatusOr<std::vector<int64_t>> ParseLengths(const std::string& text);
// "0:1:0.1" = 0, 0.1, ..., 1 (inclusive, to 1e-9); or a comma-separated list; each in [0, 1].
absl::StatusOr<std::vector<double>> ParseDepths(const std::string& text);

}  // namespace q3vl::cluster::niah

#endif  // Q3VL_CLUSTER_NIAH_PLAN_H_
