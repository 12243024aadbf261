#include "model/media/video_processor.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <memory>
#include <mutex>

#include "absl/strings/str_cat.h"
#include "core/status_macros.h"
#include "model/media/resize.h"

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

namespace {

// At most this many readers decode one video at once (each holds a decoder's reference frames).
constexpr int kMaxParallelReaders = 8;

// Reads the frames at `indices` into `frames`, each resized to `size` as soon as it is decoded.
// The sampled frames are cut into runs that start from different keyframes, and the runs are read
// by parallel readers (one per OpenMP thread, each with a single-threaded decoder, which scales
// better than FFmpeg's frame threads); decoding from a run's own keyframe gives the same pixels,
// and no frame is decoded twice. A video with one such run (a short clip, or a file that cannot
// seek) is read by `reader` alone, with FFmpeg's threads.
absl::Status ReadResizedFrames(VideoReader& reader, absl::Span<const int64_t> indices, ImageSize size,
                               const VideoReaderOptions& options, std::vector<Image>* frames) {
  std::vector<size_t> run_starts;  // positions in `indices` where a new keyframe begins
  for (size_t i = 0; i < indices.size(); ++i) {
    if (i == 0 || reader.KeyframeOf(indices[i]) != reader.KeyframeOf(indices[i - 1])) run_starts.push_back(i);
  }
  const int num_runs = static_cast<int>(run_starts.size());
  const int workers = std::min({omp_get_max_threads(), num_runs, kMaxParallelReaders});
  if (workers <= 1) {
    return reader.ReadFrames(indices, [&](size_t i, const Image& frame) {
      (*frames)[i] = ResizeBicubicAntialias(frame, size);
      return absl::OkStatus();
    });
  }
  // A few chunks of whole runs per worker, handed out in order, so the readers stay busy.
  const int num_chunks = std::min(num_runs, 4 * workers);
  VideoReaderOptions worker_options = options;
  worker_options.num_threads = options.num_threads > 0 ? std::max(1, options.num_threads / workers) : 1;
  std::vector<std::unique_ptr<VideoReader>> readers(workers);  // one per OpenMP thread
  std::mutex mu;
  absl::Status status;
#pragma omp parallel for num_threads(workers) schedule(dynamic, 1)
  for (int c = 0; c < num_chunks; ++c) {
    const size_t begin = run_starts[static_cast<size_t>(c) * num_runs / num_chunks];
    const size_t end = c + 1 == num_chunks ? indices.size()
                                           : run_starts[static_cast<size_t>(c + 1) * num_runs / num_chunks];
    std::unique_ptr<VideoReader>& mine = readers[omp_get_thread_num()];
    absl::Status s;
    if (mine == nullptr) {
      absl::StatusOr<std::unique_ptr<VideoReader>> opened = reader.Reopen(worker_options);
      if (opened.ok()) mine = *std::move(opened);
      s = opened.status();
    }
    if (s.ok()) {
      s = mine->ReadFrames(indices.subspan(begin, end - begin), [&](size_t i, const Image& frame) {
        (*frames)[begin + i] = ResizeBicubicAntialias(frame, size);
        return absl::OkStatus();
      });
    }
    if (!s.ok()) {
      std::lock_guard<std::mutex> lock(mu);
      status.Update(s);
    }
  }
  return status;
}

}  // namespace

absl::StatusOr<ProcessedVideo> LoadVideo(const std::string& path, const VisionProcessorConfig& config,
                                         const VideoReaderOptions& options) {
  Q3VL_ASSIGN_OR_RETURN(std::unique_ptr<VideoReader> reader, VideoReader::Open(path, options));
  ProcessedVideo out;
  absl::StatusOr<VideoPlan> plan = PlanVideo(reader->info(), config);
  if (!plan.ok()) return Annotate(plan.status(), absl::StrCat("video '", path, "'"));
  out.plan = std::move(*plan);
  std::vector<Image> frames(out.plan.frame_indices.size());
  Q3VL_RETURN_IF_ERROR(ReadResizedFrames(*reader, out.plan.frame_indices, out.plan.resized, options, &frames));
  out.pixel_values = PatchifyVideo(frames, config);
  out.grid = out.plan.grid;
  return out;
}

}  // namespace q3vl::model
