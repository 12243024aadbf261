// Qwen3-VL video preprocessing (transformers' Qwen3VLVideoProcessor): frame sampling at `fps`
// within [min_frames, max_frames] (NumPy linspace rounded half to even), smart_resize over the
// sampled frames, the per-frame uint8 resize, odd counts padded by repeating the last frame,
// patchify with the temporal patch, and the per-group timestamps and token counts the chat
// template expands a video into. Stateless functions; thread-safe.
#ifndef Q3VL_MODEL_MEDIA_VIDEO_PROCESSOR_H_
#define Q3VL_MODEL_MEDIA_VIDEO_PROCESSOR_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "core/tensor.h"
#include "model/media/image.h"
#include "model/media/video_decode.h"
#include "model/media/vision_input.h"
#include "model/media/vision_processor.h"

namespace q3vl::model {

// Used when the container gives no frame rate.
inline constexpr double kDefaultVideoFps = 24.0;

// n = min(max(int(total / video_fps * fps), min_frames), max_frames, total), then
// round(linspace(0, total - 1, n)) with NumPy's half-to-even rounding.
std::vector<int64_t> SampleFrameIndices(int64_t total_frames, double video_fps,
                                        const VisionProcessorConfig& config);

// Seconds per temporal group: indices padded to a multiple of tp with the last one, t = idx / fps,
// then (first + last of each group) / 2.
std::vector<double> GroupTimestamps(absl::Span<const int64_t> indices, double video_fps,
                                    int64_t temporal_patch_size);

// "<0.3 seconds>": one decimal, rounded half to even on the binary value (printf's %.1f).
std::string FormatTimestamp(double seconds);

// Everything about a video that does not need its pixels.
struct VideoPlan {
  double video_fps = 0.0;               // the frame rate used (kDefaultVideoFps if unknown)
  std::vector<int64_t> frame_indices;   // sampled presentation indices, before padding
  ImageSize resized;                    // every frame is resized to this
  GridThw grid{};                       // (ceil(n / tp), H' / ps, W' / ps)
  std::vector<std::string> timestamps;  // [grid t] "<t seconds>" per temporal group
  int64_t tokens_per_group = 0;         // <|video_pad|> tokens per group: H' W' / (ps m)^2

  int64_t num_tokens() const { return grid[0] * tokens_per_group; }
};
absl::StatusOr<VideoPlan> PlanVideo(const VideoInfo& info, const VisionProcessorConfig& config);

// Patchifies resized frames (sampled order), padding an incomplete temporal group with the last
// frame: [grid t * gh * gw, patch_dim]. REQUIRES: frames non-empty, all of one valid size.
Tensor PatchifyVideo(const std::vector<Image>& resized_frames, const VisionProcessorConfig& config);

struct ProcessedVideo {
  Tensor pixel_values;  // [t * gh * gw, patch_dim] f32, merge-block order per temporal group
  GridThw grid{};       // == plan.grid
  VideoPlan plan;
};

// Opens, samples, decodes, resizes and patchifies a video file. Holds only the resized
// sampled frames (bounded by the config's pixel budget), never every decoded frame.
absl::StatusOr<ProcessedVideo> LoadVideo(const std::string& path, const VisionProcessorConfig& config,
                                         const VideoReaderOptions& options = {});

}  // namespace q3vl::model

#endif  // Q3VL_MODEL_MEDIA_VIDEO_PROCESSOR_H_
