// q3vl preprocess --model DIR (--image FILE | --video FILE) --out OUT_DIR: one image or video
// through the model's processors, written as the vision encoder's inputs (.npy) so they can be
// compared with Hugging Face's pixel_values / image_grid_thw / video_grid_thw.
#include <filesystem>
#include <fstream>
#include <iostream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/npy.h"
#include "core/status_macros.h"
#include "launcher/options.h"
#include "model/media/image_decode.h"
#include "model/media/video_processor.h"
#include "model/media/vision_processor.h"
#include "model/processor.h"
#include "nlohmann/json.hpp"

namespace q3vl::launcher {
namespace {

namespace fs = std::filesystem;
using Json = nlohmann::ordered_json;

absl::Status Write(const fs::path& path, const Tensor& tensor) {
  return WriteNpy(path.string(), tensor);
}

absl::Status WriteText(const fs::path& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary);
  out << text;
  out.close();
  if (!out) return absl::PermissionDeniedError(absl::StrCat(path.string(), ": cannot write"));
  return absl::OkStatus();
}

// Creates `out` (only once the inputs have been processed, so a failed run leaves nothing) and
// writes pixel_values.npy and grid_thw.npy; returns the summary line's common fields.
absl::StatusOr<Json> WritePixels(const fs::path& out, const Tensor& pixel_values, const model::GridThw& grid) {
  std::error_code error;
  fs::create_directories(out, error);
  if (error) return absl::PermissionDeniedError(absl::StrCat(out.string(), ": ", error.message()));
  Q3VL_RETURN_IF_ERROR(Write(out / "pixel_values.npy", pixel_values));
  Q3VL_RETURN_IF_ERROR(Write(out / "grid_thw.npy", Tensor::FromVectorI64({grid[0], grid[1], grid[2]}, {1, 3})));
  return Json{{"grid_thw", {grid[0], grid[1], grid[2]}},
              {"pixel_values_shape", {pixel_values.dim(0), pixel_values.dim(1)}}};
}

absl::StatusOr<Json> PreprocessImage(const std::string& path, const model::VisionProcessorConfig& config,
                                     const fs::path& out) {
  Q3VL_ASSIGN_OR_RETURN(model::Image image, model::LoadImage(path));
  absl::StatusOr<model::ProcessedImage> processed = model::ProcessImage(image, config);
  if (!processed.ok()) return Annotate(processed.status(), absl::StrCat("image '", path, "'"));
  Q3VL_ASSIGN_OR_RETURN(Json summary, WritePixels(out, processed->pixel_values, processed->grid));
  summary["resized_hw"] = {processed->resized.height, processed->resized.width};
  summary["num_tokens"] = processed->num_tokens;
  return summary;
}

absl::StatusOr<Json> PreprocessVideo(const std::string& path, const model::VisionProcessorConfig& config,
                                     const fs::path& out) {
  Q3VL_ASSIGN_OR_RETURN(model::ProcessedVideo video, model::LoadVideo(path, config));
  const model::VideoPlan& plan = video.plan;
  Q3VL_ASSIGN_OR_RETURN(Json summary, WritePixels(out, video.pixel_values, video.grid));
  const auto num_frames = static_cast<int64_t>(plan.frame_indices.size());
  Q3VL_RETURN_IF_ERROR(Write(out / "frame_indices.npy", Tensor::FromVectorI64(plan.frame_indices, {num_frames})));
  Q3VL_RETURN_IF_ERROR(WriteText(out / "timestamps.json", Json(plan.timestamps).dump() + "\n"));
  summary["resized_hw"] = {plan.resized.height, plan.resized.width};
  summary["num_tokens"] = plan.num_tokens();
  summary["video_fps"] = plan.video_fps;
  summary["frame_indices"] = plan.frame_indices;
  summary["timestamps"] = plan.timestamps;
  return summary;
}

}  // namespace

int PreprocessCommand(const Args& args) {
  constexpr char kName[] = "preprocess";
  po::options_description options(
      "Runs one image or one video through the model's processors (smart_resize, uint8 bicubic resize,\n"
      "normalisation, patchify; videos: 2 fps frame sampling, or the configured fps) and writes to OUT_DIR:\n"
      "  pixel_values.npy   float32 [num_patches, 3 * temporal_patch_size * patch_size^2]\n"
      "  grid_thw.npy       int64 [1, 3]: (t, h, w) in patches\n"
      "  frame_indices.npy  int64 [num_sampled_frames] (videos only; before padding to the temporal patch)\n"
      "  timestamps.json    [\"<0.3 seconds>\", ...] per temporal group (videos only)\n"
      "and one JSON summary line on stdout. Configs: DIR/preprocessor_config.json and\n"
      "DIR/video_preprocessor_config.json, transformers' defaults for a file that is absent.\n\n"
      "options");
  options.add_options()
      ("model", po::value<std::string>()->required(), "model directory (only its processor configs are read)")
      ("image", po::value<std::string>(), "a PNG or JPEG file (or a data: / file:// URL)")
      ("video", po::value<std::string>(), "a video file FFmpeg can read (MP4, WebM, MKV, ...)")
      ("out", po::value<std::string>()->required(), "directory to write (created)");
  po::positional_options_description positional;
  auto parsed = ParseArgs(kName, "--model DIR (--image FILE | --video FILE) --out OUT_DIR", options, positional, args);
  if (std::holds_alternative<int>(parsed)) return std::get<int>(parsed);
  const po::variables_map& vm = std::get<po::variables_map>(parsed);
  if (vm.count("image") == vm.count("video")) return UsageError(kName, "give exactly one of --image and --video");

  auto configs = model::LoadVisionProcessorConfigs(vm["model"].as<std::string>());
  if (!configs.ok()) return Fail(kName, configs.status());
  const fs::path out(vm["out"].as<std::string>());
  absl::StatusOr<Json> summary = vm.count("image")
                                     ? PreprocessImage(vm["image"].as<std::string>(), configs->image, out)
                                     : PreprocessVideo(vm["video"].as<std::string>(), configs->video, out);
  if (!summary.ok()) return Fail(kName, summary.status());
  std::cout << summary->dump() << std::endl;
  return 0;
}

}  // namespace q3vl::launcher
