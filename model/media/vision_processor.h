// Qwen3-VL vision preprocessing, as transformers' Qwen2VLImageProcessor (torchvision backend)
// and Qwen3VLVideoProcessor compute it: smart_resize to multiples of patch*merge within a pixel
// budget, the uint8 antialiased bicubic resize (resize.h), x = (u8 - 255 mean) / (255 std), and
// patchify into rows of C*tp*ps*ps values in merge-block order, ready for VisionInput.
// Stateless functions; configs are immutable values. Thread-safe.
#ifndef Q3VL_MODEL_MEDIA_VISION_PROCESSOR_H_
#define Q3VL_MODEL_MEDIA_VISION_PROCESSOR_H_

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "core/tensor.h"
#include "model/media/image.h"
#include "model/media/vision_input.h"

namespace q3vl::model {

// preprocessor_config.json (images) or video_preprocessor_config.json (videos).
struct VisionProcessorConfig {
  int64_t min_pixels = 65536;     // size.shortest_edge (or min_pixels)
  int64_t max_pixels = 16777216;  // size.longest_edge (or max_pixels); videos: summed over frames
  int64_t patch_size = 16;
  int64_t temporal_patch_size = 2;
  int64_t merge_size = 2;
  std::array<double, 3> image_mean = {0.5, 0.5, 0.5};
  std::array<double, 3> image_std = {0.5, 0.5, 0.5};
  // Videos only (Qwen3VLVideoProcessor class defaults).
  double fps = 2.0;  // frames sampled per second of video
  int64_t min_frames = 4;
  int64_t max_frames = 768;

  static VisionProcessorConfig ImageDefaults() { return {}; }
  static VisionProcessorConfig VideoDefaults() {
    VisionProcessorConfig c;
    c.min_pixels = 4096;
    c.max_pixels = 25165824;
    return c;
  }
  // Overlays the keys present in `json` on `defaults`; calls Validate(). `name` appears in errors.
  static absl::StatusOr<VisionProcessorConfig> FromJson(absl::string_view json, absl::string_view name,
                                                        const VisionProcessorConfig& defaults);
  absl::Status Validate() const;

  // Side lengths are multiples of this: patch_size * merge_size.
  int64_t factor() const { return patch_size * merge_size; }
  // Values per patch row: 3 * temporal_patch_size * patch_size^2.
  int64_t patch_dim() const { return 3 * temporal_patch_size * patch_size * patch_size; }
};

// transformers' smart_resize. Images: num_frames = 0. Videos: num_frames = sampled frames;
// the budget is ceil(n / tp) * tp * h * w and frames smaller than factor() are rejected.
// InvalidArgument for an aspect ratio above 200 or a non-positive size.
struct SmartResizeParams {
  int64_t height = 0;
  int64_t width = 0;
  int64_t num_frames = 0;
};
absl::StatusOr<ImageSize> SmartResize(const SmartResizeParams& params, const VisionProcessorConfig& config);

// Normalises and patchifies `frames` (all the same size, a multiple of factor(); count a
// multiple of temporal_patch_size) into [T/tp * gh * gw, patch_dim] f32 rows ordered
// (group, block_row, block_col, row_in_block, col_in_block), each row (C, tp, ps, ps).
Tensor PatchifyFrames(absl::Span<const Image* const> frames, const VisionProcessorConfig& config);

struct ProcessedImage {
  Tensor pixel_values;     // [gh * gw, patch_dim] f32
  GridThw grid{};          // (1, gh, gw) in patches
  int64_t num_tokens = 0;  // <|image_pad|> tokens: gh * gw / merge^2
  ImageSize resized;       // pixels after smart_resize
};

// smart_resize + resize + normalise + patchify (the single frame repeated tp times).
absl::StatusOr<ProcessedImage> ProcessImage(const Image& image, const VisionProcessorConfig& config);

// [sum rows, cols] copy of 2-D f32 tensors with equal column counts (undefined if none).
Tensor ConcatRows(absl::Span<const Tensor* const> parts);

// Concatenates processed items (a container of ProcessedImage or ProcessedVideo, in prompt
// order) into one VisionInput.
template <typename Items>
VisionInput MakeVisionInput(const Items& items) {
  VisionInput input;
  std::vector<const Tensor*> parts;
  for (const auto& item : items) {
    input.grids.push_back(item.grid);
    parts.push_back(&item.pixel_values);
  }
  input.pixel_values = ConcatRows(parts);
  return input;
}

}  // namespace q3vl::model

#endif  // Q3VL_MODEL_MEDIA_VISION_PROCESSOR_H_
