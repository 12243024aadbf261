// eval-case --from-raw: the case's pixel values recomputed by the project's own processors from
// the raw uint8 images (inputs/image_N.npy, [H, W, 3]) and video frames (inputs/videos.json +
// video_N_frames.npy, every frame [T, H, W, 3], sampled here at the processor's fps).
#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "core/npy.h"
#include "core/status_macros.h"
#include "launcher/eval_case.h"
#include "model/media/resize.h"
#include "model/media/video_processor.h"
#include "model/media/vision_processor.h"
#include "model/processor.h"
#include "nlohmann/json.hpp"

namespace q3vl::launcher {
namespace {

namespace fs = std::filesystem;

// Frame `i` of a uint8 [T, H, W, 3] (or one [H, W, 3] image when rank 3) tensor.
absl::StatusOr<model::Image> FrameOf(const Tensor& t, int64_t i, const std::string& path) {
  if (t.dtype() != DType::kU8 || (t.rank() != 3 && t.rank() != 4) || t.dim(-1) != 3) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": expected uint8 [(T,) H, W, 3], got ", t.DebugString()));
  }
  const int64_t h = t.dim(-3), w = t.dim(-2);
  model::Image image = model::Image::Blank(h, w);
  const uint8_t* src = t.data<uint8_t>() + i * h * w * 3;
  std::copy(src, src + h * w * 3, image.rgb.begin());
  return image;
}

// Images and videos must come out with the grids the case ships; anything else is a bug in the
// processors (or a case that does not match its own inputs), reported as such.
absl::Status SameGrids(const std::vector<model::GridThw>& got, const std::vector<model::GridThw>& want,
                       const char* what) {
  if (got == want) return absl::OkStatus();
  return absl::InternalError(absl::StrCat(what, ": preprocessing gave ", got.size(),
                                          " grids that differ from the case's grid_thw file"));
}

}  // namespace

absl::Status ReplaceWithRawPixels(GoldenCase& golden) {
  const fs::path dir(golden.dir);
  Q3VL_ASSIGN_OR_RETURN(model::VisionProcessorConfigs configs,
                        model::LoadVisionProcessorConfigs((dir / "model").string()));
  const model::VisionProcessorConfig& image_config = configs.image;
  const model::VisionProcessorConfig& video_config = configs.video;
  std::vector<model::ProcessedImage> images;
  for (int i = 0; fs::exists(dir / "inputs" / absl::StrCat("image_", i, ".npy")); ++i) {
    const std::string path = (dir / "inputs" / absl::StrCat("image_", i, ".npy")).string();
    Q3VL_ASSIGN_OR_RETURN(Tensor raw, ReadNpy(path));
    Q3VL_ASSIGN_OR_RETURN(model::Image image, FrameOf(raw, 0, path));
    Q3VL_ASSIGN_OR_RETURN(model::ProcessedImage processed, model::ProcessImage(image, image_config));
    images.push_back(std::move(processed));
  }
  if (!images.empty()) {
    model::VisionInput input = model::MakeVisionInput(images);
    Q3VL_RETURN_IF_ERROR(SameGrids(input.grids, golden.request.images.grids, "images"));
    golden.request.images = std::move(input);
  }

  const fs::path videos_json = dir / "inputs/videos.json";
  if (!fs::exists(videos_json)) return absl::OkStatus();
  std::ifstream in(videos_json);
  std::stringstream text;
  text << in.rdbuf();
  const nlohmann::json videos = nlohmann::json::parse(text.str(), nullptr, false);
  if (!videos.is_array()) return absl::InvalidArgumentError(absl::StrCat(videos_json.string(), ": expected a JSON list"));
  std::vector<model::ProcessedVideo> processed;
  for (const nlohmann::json& v : videos) {
    if (!v.contains("frames_file") || !v.contains("video_fps")) {
      return absl::InvalidArgumentError(absl::StrCat(videos_json.string(), ": entries need frames_file and video_fps"));
    }
    const std::string path = (dir / "inputs" / v["frames_file"].get<std::string>()).string();
    Q3VL_ASSIGN_OR_RETURN(Tensor frames, ReadNpy(path));
    if (frames.rank() != 4) return absl::InvalidArgumentError(absl::StrCat(path, ": expected [T, H, W, 3]"));
    const std::vector<int64_t> indices =
        model::SampleFrameIndices(frames.dim(0), v["video_fps"].get<double>(), video_config);
    Q3VL_ASSIGN_OR_RETURN(model::ImageSize size,
                          model::SmartResize({.height = frames.dim(1), .width = frames.dim(2),
                                              .num_frames = static_cast<int64_t>(indices.size())},
                                             video_config));
    std::vector<model::Image> resized;
    for (int64_t index : indices) {
      Q3VL_ASSIGN_OR_RETURN(model::Image frame, FrameOf(frames, index, path));
      resized.push_back(model::ResizeBicubicAntialias(frame, size));
    }
    model::ProcessedVideo video;
    video.pixel_values = model::PatchifyVideo(resized, video_config);
    const int64_t tp = video_config.temporal_patch_size, ps = video_config.patch_size;
    video.grid = {(static_cast<int64_t>(indices.size()) + tp - 1) / tp, size.height / ps, size.width / ps};
    processed.push_back(std::move(video));
  }
  if (!processed.empty()) {
    model::VisionInput input = model::MakeVisionInput(processed);
    Q3VL_RETURN_IF_ERROR(SameGrids(input.grids, golden.request.videos.grids, "videos"));
    golden.request.videos = std::move(input);
  }
  return absl::OkStatus();
}

}  // namespace q3vl::launcher
