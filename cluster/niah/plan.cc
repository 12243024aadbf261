#include "cluster/niah/plan.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "model/media/video_processor.h"

namespace q3vl::cluster::niah {

int64_t Geometry::tokens_per_group() const {
  const int64_t f = video.factor();
  return (width / f) * (height / f);
}

absl::Status Geometry::Validate() const {
  if (absl::Status st = video.Validate(); !st.ok()) return st;
  const int64_t f = video.factor();
  if (width < f || height < f || width % f != 0 || height % f != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("frame size ", width, "x", height, " is not a multiple of ", f, " (patch x merge)"));
  }
  if (!(fps > 0) || !std::isfinite(fps)) return absl::InvalidArgumentError(absl::StrCat("fps must be > 0, got ", fps));
  return absl::OkStatus();
}

absl::StatusOr<Geometry> FitGeometry(int64_t haystack_width, int64_t haystack_height, int64_t max_tokens_per_group,
                                     double fps, const model::VisionProcessorConfig& video) {
  if (haystack_width < 1 || haystack_height < 1) {
    return absl::InvalidArgumentError(absl::StrCat("haystack frames of ", haystack_width, "x", haystack_height));
  }
  if (max_tokens_per_group < 1) return absl::InvalidArgumentError("tokens per frame group must be >= 1");
  Geometry g{.fps = fps, .video = video};
  const int64_t f = video.factor();
  // The largest scale s with (round(W s / f)) (round(H s / f)) <= budget, sides at least f.
  const double aspect = static_cast<double>(haystack_width) / static_cast<double>(haystack_height);
  int64_t best_w = 1, best_h = 1;
  for (int64_t rows = 1; rows <= max_tokens_per_group; ++rows) {
    const int64_t cols = std::max<int64_t>(1, std::llround(static_cast<double>(rows) * aspect));
    if (rows * cols > max_tokens_per_group) break;
    best_w = cols;
    best_h = rows;
  }
  g.width = best_w * f;
  g.height = best_h * f;
  if (absl::Status st = g.Validate(); !st.ok()) return st;
  return g;
}

model::VisionProcessorConfig CellPlan::VideoConfig(const model::VisionProcessorConfig& base) const {
  model::VisionProcessorConfig c = base;
  c.fps = kwargs_fps;
  c.max_frames = kwargs_max_frames;
  c.min_frames = std::min(c.min_frames, kwargs_max_frames);
  c.min_pixels = kwargs_min_pixels;
  c.max_pixels = kwargs_max_pixels;
  return c;
}

absl::StatusOr<CellPlan> PlanCell(const Geometry& geometry, int64_t target_tokens, double depth) {
  if (absl::Status st = geometry.Validate(); !st.ok()) return st;
  if (target_tokens < 1) return absl::InvalidArgumentError("the target length must be >= 1 token");
  if (!(depth >= 0.0 && depth <= 1.0)) return absl::InvalidArgumentError(absl::StrCat("depth ", depth, " is not in [0, 1]"));
  const int64_t per_group = geometry.tokens_per_group();
  const int64_t tp = geometry.video.temporal_patch_size;
  CellPlan p;
  p.target_tokens = target_tokens;
  p.depth = depth;
  p.groups = std::max<int64_t>(1, (target_tokens + per_group / 2) / per_group);
  p.frames = p.groups * tp;
  p.duration_s = static_cast<double>(p.frames) / geometry.fps;
  p.needle_group = std::llround(depth * static_cast<double>(p.groups - 1));
  p.needle_first_frame = p.needle_group * tp;
  p.needle_start_s = static_cast<double>(p.needle_first_frame) / geometry.fps;
  p.kwargs_fps = geometry.fps;
  p.kwargs_max_frames = p.frames;
  p.kwargs_max_pixels = p.frames * geometry.width * geometry.height;
  p.kwargs_min_pixels = std::min(geometry.video.min_pixels, p.kwargs_max_pixels);

  // What the processor makes of that video, with those settings.
  auto plan = model::PlanVideo(
      {.num_frames = p.frames, .fps = geometry.fps, .height = geometry.height, .width = geometry.width},
      p.VideoConfig(geometry.video));
  if (!plan.ok()) return plan.status();
  if (static_cast<int64_t>(plan->frame_indices.size()) != p.frames || plan->resized.width != geometry.width ||
      plan->resized.height != geometry.height || plan->grid[0] != p.groups) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the processor would sample ", plan->frame_indices.size(), " of ", p.frames, " frames at ", plan->resized.width,
        "x", plan->resized.height, " instead of ", geometry.width, "x", geometry.height));
  }
  p.visual_tokens = plan->num_tokens();
  p.needle_timestamp = plan->timestamps[p.needle_group];
  return p;
}

absl::StatusOr<std::vector<int64_t>> ParseLengths(const std::string& text) {
  std::vector<int64_t> out;
  for (absl::string_view part : absl::StrSplit(text, ',', absl::SkipWhitespace())) {
    std::string s = absl::AsciiStrToLower(absl::StripAsciiWhitespace(part));
    int64_t scale = 1;
    if (!s.empty() && (s.back() == 'k' || s.back() == 'm')) {
      scale = s.back() == 'k' ? 1024 : 1024 * 1024;
      s.pop_back();
    }
    int64_t n = 0;
    if (!absl::SimpleAtoi(s, &n) || n < 1 || n > (int64_t{1} << 40) / scale) {
      return absl::InvalidArgumentError(absl::StrCat("length \"", part, "\" is not a token count like 8k, 256k or 3000"));
    }
    out.push_back(n * scale);
  }
  if (out.empty()) return absl::InvalidArgumentError("no lengths given");
  return out;
}

absl::StatusOr<std::vector<double>> ParseDepths(const std::string& text) {
  std::vector<double> out;
  const std::vector<std::string> range = absl::StrSplit(text, ':');
  if (range.size() == 3) {
    double lo = 0, hi = 0, step = 0;
    if (!absl::SimpleAtod(range[0], &lo) || !absl::SimpleAtod(range[1], &hi) || !absl::SimpleAtod(range[2], &step) ||
        !(step > 0) || !(lo <= hi)) {
      return absl::InvalidArgumentError(absl::StrCat("depths \"", text, "\" are not START:END:STEP"));
    }
    for (int64_t i = 0;; ++i) {
      const double d = lo + static_cast<double>(i) * step;
      if (d > hi + 1e-9) break;
      out.push_back(std::min(d, hi));
    }
  } else {
    for (absl::string_view part : absl::StrSplit(text, ',', absl::SkipWhitespace())) {
      double d = 0;
      if (!absl::SimpleAtod(part, &d)) return absl::InvalidArgumentError(absl::StrCat("depth \"", part, "\" is not a number"));
      out.push_back(d);
    }
  }
  if (out.empty()) return absl::InvalidArgumentError("no depths given");
  for (double d : out) {
    if (!(d >= 0.0 && d <= 1.0)) return absl::InvalidArgumentError(absl::StrCat("depth ", d, " is not in [0, 1]"));
  }
  return out;
}

}  // namespace q3vl::cluster::niah
