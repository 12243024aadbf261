#include "model/video_processor.h"

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "absl/strings/str_cat.h"
#include "core/status_macros.h"
#include "model/resize.h"

namespace q3vl::model {

std::vector<int64_t> SampleFrameIndices(int64_t total_frames, double video_fps,
                                        const VisionProcessorConfig& config) {
  if (total_frames < 1) return {};
  const double wanted = static_cast<double>(total_frames) / video_fps * config.fps;
  int64_t n = std::isfinite(wanted) ? static_cast<int64_t>(wanted) : config.min_frames;
  n = std::min({std::max(n, config.min_frames), config.max_frames, total_frames});
  // numpy.linspace(0, total - 1, n): i * step, the last element exactly total - 1.
  const double step = n > 1 ? static_cast<double>(total_frames - 1) / static_cast<double>(n - 1) : 0.0;
  std::vector<int64_t> indices(n);
  for (int64_t i = 0; i < n; ++i) {
    const double x =
        n > 1 && i == n - 1 ? static_cast<double>(total_frames - 1) : static_cast<double>(i) * step;
    indices[i] = static_cast<int64_t>(std::nearbyint(x));  // half to even
  }
  return indices;
}

std::vector<double> GroupTimestamps(absl::Span<const int64_t> indices, double video_fps,
                                    int64_t temporal_patch_size) {
  std::vector<int64_t> padded(indices.begin(), indices.end());
  while (!padded.empty() && padded.size() % temporal_patch_size != 0) padded.push_back(padded.back());
  std::vector<double> groups;
  for (size_t i = 0; i < padded.size(); i += temporal_patch_size) {
    const double first = static_cast<double>(padded[i]) / video_fps;
    const double last = static_cast<double>(padded[i + temporal_patch_size - 1]) / video_fps;
    groups.push_back((first + last) / 2);
  }
  return groups;
}

std::string FormatTimestamp(double seconds) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), "<%.1f seconds>", seconds);
  return buf;
}

absl::StatusOr<VideoPlan> PlanVideo(const VideoInfo& info, const VisionProcessorConfig& config) {
  VideoPlan plan;
  plan.video_fps = info.fps > 0 && std::isfinite(info.fps) ? info.fps : kDefaultVideoFps;
  plan.frame_indices = SampleFrameIndices(info.num_frames, plan.video_fps, config);
  const int64_t n = static_cast<int64_t>(plan.frame_indices.size());
  Q3VL_ASSIGN_OR_RETURN(
      plan.resized,
      SmartResize({.height = info.height, .width = info.width, .num_frames = std::max<int64_t>(n, 1)},
                  config));
  const int64_t tp = config.temporal_patch_size, ps = config.patch_size, m = config.merge_size;
  plan.grid = {(n + tp - 1) / tp, plan.resized.height / ps, plan.resized.width / ps};
  for (double t : GroupTimestamps(plan.frame_indices, plan.video_fps, tp))
    plan.timestamps.push_back(FormatTimestamp(t));
  plan.tokens_per_group = plan.grid[1] * plan.grid[2] / (m * m);
  return plan;
}

Tensor PatchifyVideo(const std::vector<Image>& resized_frames, const VisionProcessorConfig& config) {
  Q3VL_CHECK(!resized_frames.empty());
  std::vector<const Image*> frames;
  for (const Image& f : resized_frames) frames.push_back(&f);
  while (frames.size() % config.temporal_patch_size != 0) frames.push_back(frames.back());
  return PatchifyFrames(frames, config);
}

absl::StatusOr<ProcessedVideo> LoadVideo(const std::string& path, const VisionProcessorConfig& config,
                                         const VideoReaderOptions& options) {
  Q3VL_ASSIGN_OR_RETURN(std::unique_ptr<VideoReader> reader, VideoReader::Open(path, options));
  ProcessedVideo out;
  absl::StatusOr<VideoPlan> plan = PlanVideo(reader->info(), config);
  if (!plan.ok()) return Annotate(plan.status(), absl::StrCat("video '", path, "'"));
  out.plan = std::move(*plan);
  const ImageSize size = out.plan.resized;
  std::vector<Image> frames(out.plan.frame_indices.size());
  Q3VL_RETURN_IF_ERROR(reader->ReadFrames(out.plan.frame_indices, [&](size_t i, const Image& frame) {
    frames[i] = ResizeBicubicAntialias(frame, size);
    return absl::OkStatus();
  }));
  out.pixel_values = PatchifyVideo(frames, config);
  out.grid = out.plan.grid;
  return out;
}

}  // namespace q3vl::model
