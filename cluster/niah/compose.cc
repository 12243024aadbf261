#include "cluster/niah/compose.h"

#include <cmath>
#include <vector>

#include "absl/strings/str_cat.h"
#include "model/media/resize.h"
#include "model/media/video_decode.h"
#include "model/media/video_encode.h"
#include "model/media/video_processor.h"

namespace q3vl::cluster::niah {

absl::Status ComposeCellVideo(const std::string& haystack_path, const model::Image& needle, const Geometry& geometry,
                              const CellPlan& cell, const std::string& out_path, ComposeStats* stats) {
  if (absl::Status st = geometry.Validate(); !st.ok()) return st;
  if (std::abs(geometry.fps - std::round(geometry.fps)) > 1e-9) {
    return absl::InvalidArgumentError(absl::StrCat("the composed video needs a whole frame rate, got ", geometry.fps));
  }
  auto reader = model::VideoReader::Open(haystack_path);
  if (!reader.ok()) return reader.status();
  const model::VideoInfo& info = (*reader)->info();
  if (info.num_frames < 1) return absl::InvalidArgumentError(absl::StrCat(haystack_path, " has no frames"));
  const double source_fps = info.fps > 0 ? info.fps : model::kDefaultVideoFps;
  const model::ImageSize size{.height = geometry.height, .width = geometry.width};
  const model::Image needle_frame = model::ResizeBicubicAntialias(needle, size);

  // Causal coding: the frames before the needle decode alike in every cell of the sweep (any
  // length, depth or needle), so the server's prefix cache can reuse their pages.
  auto writer = model::VideoWriter::Open(out_path, {.width = geometry.width, .height = geometry.height,
                                                    .fps = static_cast<int>(std::lround(geometry.fps)), .causal = true});
  if (!writer.ok()) return writer.status();

  // The source frame of each output frame; a run of non-decreasing indices is one pass (the
  // reader takes sorted indices), so a looped haystack is read once per loop.
  std::vector<int64_t> source(cell.frames);
  for (int64_t k = 0; k < cell.frames; ++k) {
    const double t = static_cast<double>(k) / geometry.fps;
    source[k] = static_cast<int64_t>(std::floor(t * source_fps + 1e-9)) % info.num_frames;
  }
  const int64_t needle_end = cell.needle_first_frame + geometry.video.temporal_patch_size;
  ComposeStats local;
  int64_t k = 0;
  while (k < cell.frames) {
    int64_t end = k + 1;
    while (end < cell.frames && source[end] >= source[end - 1]) ++end;
    ++local.loops;
    std::vector<int64_t> run(source.begin() + k, source.begin() + end);
    const int64_t base = k;
    absl::Status st = (*reader)->ReadFrames(run, [&](size_t i, const model::Image& frame) -> absl::Status {
      ++local.haystack_frames_read;
      const int64_t out = base + static_cast<int64_t>(i);
      if (out >= cell.needle_first_frame && out < needle_end) return (*writer)->Write(needle_frame);
      return (*writer)->Write(model::ResizeBicubicAntialias(frame, size));
    });
    if (!st.ok()) return st;
    k = end;
  }
  if (absl::Status st = (*writer)->Finish(); !st.ok()) return st;
  if (stats != nullptr) *stats = local;
  return absl::OkStatus();
}

}  // namespace q3vl::cluster::niah
