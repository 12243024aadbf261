#include "model/media/vision_processor.h"

#include <cmath>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "core/status_macros.h"
#include "model/media/resize.h"
#include "nlohmann/json.hpp"

namespace q3vl::model {
namespace {

using Json = nlohmann::json;

constexpr int kChannels = 3;
constexpr double kMaxAspectRatio = 200.0;

// Python's round(): half to even (the default FE_TONEAREST mode).
int64_t RoundHalfEven(double x) { return static_cast<int64_t>(std::nearbyint(x)); }

absl::Status ReadInt(const Json& j, const char* key, absl::string_view name, int64_t* out) {
  if (!j.contains(key) || j[key].is_null()) return absl::OkStatus();
  if (!j[key].is_number_integer()) {
    return absl::InvalidArgumentError(absl::StrCat(name, ": key \"", key, "\" must be an integer"));
  }
  *out = j[key].get<int64_t>();
  return absl::OkStatus();
}

absl::Status ReadTriple(const Json& j, const char* key, absl::string_view name, std::array<double, 3>* out) {
  if (!j.contains(key) || j[key].is_null()) return absl::OkStatus();
  const Json& v = j[key];
  if (v.is_number()) {
    out->fill(v.get<double>());
    return absl::OkStatus();
  }
  if (!v.is_array() || v.size() != 3 || !v[0].is_number() || !v[1].is_number() || !v[2].is_number()) {
    return absl::InvalidArgumentError(absl::StrCat(name, ": key \"", key, "\" must be 3 numbers"));
  }
  for (int c = 0; c < 3; ++c) (*out)[c] = v[c].get<double>();
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<VisionProcessorConfig> VisionProcessorConfig::FromJson(absl::string_view json,
                                                                      absl::string_view name,
                                                                      const VisionProcessorConfig& defaults) {
  const Json j = Json::parse(json.begin(), json.end(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(name, ": not a JSON object"));
  }
  VisionProcessorConfig c = defaults;
  if (j.contains("size") && j["size"].is_object()) {
    Q3VL_RETURN_IF_ERROR(ReadInt(j["size"], "shortest_edge", name, &c.min_pixels));
    Q3VL_RETURN_IF_ERROR(ReadInt(j["size"], "longest_edge", name, &c.max_pixels));
  }
  // Older configs (and transformers' overrides) name the budget directly.
  Q3VL_RETURN_IF_ERROR(ReadInt(j, "min_pixels", name, &c.min_pixels));
  Q3VL_RETURN_IF_ERROR(ReadInt(j, "max_pixels", name, &c.max_pixels));
  Q3VL_RETURN_IF_ERROR(ReadInt(j, "patch_size", name, &c.patch_size));
  Q3VL_RETURN_IF_ERROR(ReadInt(j, "temporal_patch_size", name, &c.temporal_patch_size));
  Q3VL_RETURN_IF_ERROR(ReadInt(j, "merge_size", name, &c.merge_size));
  Q3VL_RETURN_IF_ERROR(ReadTriple(j, "image_mean", name, &c.image_mean));
  Q3VL_RETURN_IF_ERROR(ReadTriple(j, "image_std", name, &c.image_std));
  Q3VL_RETURN_IF_ERROR(ReadInt(j, "min_frames", name, &c.min_frames));
  Q3VL_RETURN_IF_ERROR(ReadInt(j, "max_frames", name, &c.max_frames));
  if (j.contains("fps") && !j["fps"].is_null()) {
    if (!j["fps"].is_number())
      return absl::InvalidArgumentError(absl::StrCat(name, ": key \"fps\" must be a number"));
    c.fps = j["fps"].get<double>();
  }
  Q3VL_RETURN_IF_ERROR(Annotate(c.Validate(), name));
  return c;
}

absl::Status VisionProcessorConfig::Validate() const {
  if (patch_size < 1 || temporal_patch_size < 1 || merge_size < 1) {
    return absl::InvalidArgumentError("patch_size, temporal_patch_size and merge_size must be positive");
  }
  if (min_pixels < 1 || max_pixels < min_pixels) {
    return absl::InvalidArgumentError(
        absl::StrCat("pixel budget [", min_pixels, ", ", max_pixels, "] is empty or not positive"));
  }
  for (int c = 0; c < 3; ++c) {
    if (!(image_std[c] > 0.0) || !std::isfinite(image_mean[c])) {
      return absl::InvalidArgumentError("image_std must be positive and image_mean finite");
    }
  }
  if (!(fps > 0.0) || min_frames < 1 || max_frames < min_frames) {
    return absl::InvalidArgumentError(
        absl::StrCat("bad frame sampling: fps ", fps, ", frames [", min_frames, ", ", max_frames, "]"));
  }
  return absl::OkStatus();
}

absl::StatusOr<ImageSize> SmartResize(const SmartResizeParams& params, const VisionProcessorConfig& config) {
  const int64_t h = params.height, w = params.width, factor = config.factor();
  const bool video = params.num_frames > 0;
  if (h < 1 || w < 1) return absl::InvalidArgumentError(absl::StrCat("empty image: ", w, "x", h));
  if (static_cast<double>(std::max(h, w)) / static_cast<double>(std::min(h, w)) > kMaxAspectRatio) {
    return absl::InvalidArgumentError(
        absl::StrCat("aspect ratio of ", w, "x", h, " is more than ", kMaxAspectRatio));
  }
  if (video && (h < factor || w < factor)) {
    return absl::InvalidArgumentError(
        absl::StrCat("video frames of ", w, "x", h, " are smaller than ", factor, " pixels on a side"));
  }
  if (video && params.num_frames < config.temporal_patch_size) {
    return absl::InvalidArgumentError(absl::StrCat("a video needs at least ", config.temporal_patch_size,
                                                   " frames, got ", params.num_frames));
  }
  // Pixels counted against the budget: one frame, or every (padded) frame of a video.
  const int64_t tp = config.temporal_patch_size;
  const int64_t t_bar = video ? (params.num_frames + tp - 1) / tp * tp : 1;
  const double frames = video ? static_cast<double>(params.num_frames) : 1.0;
  const double area = frames * static_cast<double>(h) * static_cast<double>(w);
  int64_t h_bar = RoundHalfEven(static_cast<double>(h) / factor) * factor;
  int64_t w_bar = RoundHalfEven(static_cast<double>(w) / factor) * factor;
  if (t_bar * h_bar * w_bar > config.max_pixels) {
    const double beta = std::sqrt(area / static_cast<double>(config.max_pixels));
    h_bar = std::max(factor, static_cast<int64_t>(std::floor(h / beta / factor)) * factor);
    w_bar = std::max(factor, static_cast<int64_t>(std::floor(w / beta / factor)) * factor);
  } else if (t_bar * h_bar * w_bar < config.min_pixels) {
    const double beta = std::sqrt(static_cast<double>(config.min_pixels) / area);
    h_bar = static_cast<int64_t>(std::ceil(h * beta / factor)) * factor;
    w_bar = static_cast<int64_t>(std::ceil(w * beta / factor)) * factor;
  }
  return ImageSize{h_bar, w_bar};
}

Tensor PatchifyFrames(absl::Span<const Image* const> frames, const VisionProcessorConfig& config) {
  const int64_t tp = config.temporal_patch_size, ps = config.patch_size, m = config.merge_size;
  Q3VL_CHECK(!frames.empty() && frames.size() % tp == 0) << "frames: " << frames.size();
  const int64_t height = frames[0]->height, width = frames[0]->width;
  Q3VL_CHECK(height % (ps * m) == 0 && width % (ps * m) == 0) << width << "x" << height;
  for (const Image* f : frames) Q3VL_CHECK(f->height == height && f->width == width) << "frame sizes differ";
  // (u8 - 255 mean) / (255 std) in f32, as transformers' fused rescale + normalise.
  float lut[kChannels][256];
  for (int c = 0; c < kChannels; ++c) {
    const float mean = static_cast<float>(config.image_mean[c]) * 255.0f;
    const float std = static_cast<float>(config.image_std[c]) * 255.0f;
    for (int v = 0; v < 256; ++v) lut[c][v] = (static_cast<float>(v) - mean) / std;
  }
  const int64_t gh = height / ps, gw = width / ps, groups = static_cast<int64_t>(frames.size()) / tp;
  const int64_t patch_dim = kChannels * tp * ps * ps;
  Tensor out = Tensor::Empty(DType::kF32, {groups * gh * gw, patch_dim});  // [N, patch_dim]
  // One task per row of merge blocks: m * m * (gw / m) consecutive output rows.
  const int64_t block_rows = gh / m, rows_per_task = gw * m;
#pragma omp parallel for schedule(static) if (out.numel() >= (int64_t{1} << 20))
  for (int64_t task = 0; task < groups * block_rows; ++task) {
    const int64_t g = task / block_rows, br = task % block_rows;
    float* row = out.data<float>() + task * rows_per_task * patch_dim;
    for (int64_t bc = 0; bc < gw / m; ++bc) {
      for (int64_t r = 0; r < m; ++r) {
        for (int64_t c = 0; c < m; ++c, row += patch_dim) {
          const int64_t y0 = (br * m + r) * ps, x0 = (bc * m + c) * ps;
          float* dst = row;
          for (int ch = 0; ch < kChannels; ++ch) {
            for (int64_t t = 0; t < tp; ++t) {
              const Image& f = *frames[g * tp + t];
              for (int64_t py = 0; py < ps; ++py) {
                const uint8_t* src = f.row(y0 + py) + x0 * kChannels + ch;
                for (int64_t px = 0; px < ps; ++px) *dst++ = lut[ch][src[px * kChannels]];
              }
            }
          }
        }
      }
    }
  }
  return out;
}

absl::StatusOr<ProcessedImage> ProcessImage(const Image& image, const VisionProcessorConfig& config) {
  Q3VL_ASSIGN_OR_RETURN(const ImageSize size,
                        SmartResize({.height = image.height, .width = image.width}, config));
  const Image resized = ResizeBicubicAntialias(image, size);
  const std::vector<const Image*> frames(config.temporal_patch_size, &resized);
  ProcessedImage out;
  out.pixel_values = PatchifyFrames(frames, config);
  out.grid = {1, size.height / config.patch_size, size.width / config.patch_size};
  out.num_tokens = out.grid[1] * out.grid[2] / (config.merge_size * config.merge_size);
  out.resized = size;
  return out;
}

Tensor ConcatRows(absl::Span<const Tensor* const> parts) {
  if (parts.empty()) return Tensor();
  const int64_t cols = parts[0]->dim(1);
  int64_t rows = 0;
  for (const Tensor* p : parts) {
    Q3VL_CHECK(p->rank() == 2 && p->dim(1) == cols && p->dtype() == DType::kF32) << p->DebugString();
    rows += p->dim(0);
  }
  Tensor out = Tensor::Empty(DType::kF32, {rows, cols});  // [sum rows, cols]
  int64_t at = 0;
  for (const Tensor* p : parts) {
    out.Slice(0, at, at + p->dim(0)).CopyFrom(*p);
    at += p->dim(0);
  }
  return out;
}

}  // namespace q3vl::model
