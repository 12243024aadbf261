// vision_preprocess_bench: the input pipeline's CPU cost, as one JSON object on stdout. Images:
// decode + preprocess (smart_resize, uint8 bicubic, normalise, patchify) of synthetic 1 MP, 1080p
// and 4K JPEGs. Videos: frame sampling + decode of synthetic MPEG-4 Part 2 MP4s (60 s 640x360 and
// 15 min 192x108) by seeking and sequentially, and a 10-minute 720p H.264 video from the ffmpeg
// CLI through the whole LoadVideo (decode + 2 fps sampling + preprocess), in s per video-minute.
// Inputs are generated (bench_media.h) in memory or the temp directory, so no data files are needed.
#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <string>
#include <vector>

#include "benchmarks/bench_media.h"
#include "model/media/image_decode.h"
#include "model/media/video_decode.h"
#include "model/media/video_processor.h"
#include "model/media/vision_processor.h"
#include "nlohmann/json.hpp"

namespace q3vl::bench {
namespace {

using Clock = std::chrono::steady_clock;
using Json = nlohmann::json;

double SecondsSince(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

Json BenchImage(int width, int height, int iterations) {
  const std::string jpeg = SyntheticJpeg(width, height);
  const auto config = model::VisionProcessorConfig::ImageDefaults();
  std::vector<double> decode_s, preprocess_s;
  Json out;
  for (int i = 0; i < iterations; ++i) {
    Clock::time_point t = Clock::now();
    auto image = model::DecodeImageBytes(jpeg, "synthetic.jpg");
    decode_s.push_back(SecondsSince(t));
    if (!image.ok()) return {{"error", image.status().ToString()}};
    t = Clock::now();
    auto processed = model::ProcessImage(*image, config);
    preprocess_s.push_back(SecondsSince(t));
    if (!processed.ok()) return {{"error", processed.status().ToString()}};
    out["resized_hw"] = {processed->resized.height, processed->resized.width};
    out["num_patches"] = processed->pixel_values.dim(0);
  }
  const double decode = *std::min_element(decode_s.begin(), decode_s.end());
  const double preprocess = *std::min_element(preprocess_s.begin(), preprocess_s.end());
  out["input"] = std::to_string(width) + "x" + std::to_string(height) + " synthetic JPEG, quality 90, 4:2:0";
  out["jpeg_bytes"] = jpeg.size();
  out["iterations"] = iterations;
  out["decode_ms"] = decode * 1e3;
  out["preprocess_ms"] = preprocess * 1e3;
  out["total_ms"] = (decode + preprocess) * 1e3;
  out["images_per_s"] = 1.0 / (decode + preprocess);
  return out;
}

Json BenchDecode(const std::string& path, const std::vector<int64_t>& indices,
                 const model::VideoReaderOptions& options) {
  const Clock::time_point t = Clock::now();
  auto reader = model::VideoReader::Open(path, options);
  if (!reader.ok()) return {{"error", reader.status().ToString()}};
  const double open_s = SecondsSince(t);
  const absl::Status s =
      (*reader)->ReadFrames(indices, [](size_t, const model::Image&) { return absl::OkStatus(); });
  if (!s.ok()) return {{"error", s.ToString()}};
  const double total_s = SecondsSince(t);
  const model::VideoReadStats& stats = (*reader)->last_read_stats();
  return {{"open_and_index_s", open_s},
          {"total_s", total_s},
          {"sampled_frames_per_s", static_cast<double>(indices.size()) / total_s},
          {"source_frames_per_s", static_cast<double>((*reader)->info().num_frames) / total_s},
          {"seeks", stats.seeks},
          {"packets_decoded", stats.packets_decoded},
          {"frames_decoded", stats.frames_decoded}};
}

Json BenchVideo(const VideoSpec& c) {
  const std::string path = TempPath("mpeg4.mp4");
  const Clock::time_point t = Clock::now();
  if (!WriteMpeg4Video(path, c)) return {{"error", "cannot encode the synthetic video"}};
  Json out = {{"input", "synthetic MPEG-4 Part 2 MP4, 30 fps, GOP 30, 2 B-frames"},
              {"width", c.width},
              {"height", c.height},
              {"seconds", c.seconds},
              {"encode_s", SecondsSince(t)}};
  auto reader = model::VideoReader::Open(path);
  const auto config = model::VisionProcessorConfig::VideoDefaults();
  auto plan = reader.ok() ? model::PlanVideo((*reader)->info(), config) : reader.status();
  if (!plan.ok()) return {{"error", plan.status().ToString()}};
  out["source_frames"] = (*reader)->info().num_frames;
  out["sampled_frames"] = plan->frame_indices.size();
  out["decode_sample_seek"] = BenchDecode(path, plan->frame_indices, {});
  out["decode_sample_sequential"] = BenchDecode(path, plan->frame_indices, {.sequential = true});
  const Clock::time_point load = Clock::now();
  auto video = model::LoadVideo(path, config);
  out["load_video_s"] = SecondsSince(load);
  if (video.ok()) {
    out["video_grid_thw"] = {video->grid[0], video->grid[1], video->grid[2]};
  } else {
    out["error"] = video.status().ToString();
  }
  std::filesystem::remove(path);
  return out;
}

Json MeasureLongVideo(const std::string& path, const model::VideoReaderOptions& options) {
  auto reader = model::VideoReader::Open(path, options);
  const auto config = model::VisionProcessorConfig::VideoDefaults();
  auto plan = reader.ok() ? model::PlanVideo((*reader)->info(), config) : reader.status();
  if (!plan.ok()) return {{"error", plan.status().ToString()}};
  const double minutes = static_cast<double>((*reader)->info().num_frames) / (*reader)->info().fps / 60.0;
  Json out = {{"source_frames", (*reader)->info().num_frames}, {"sampled_frames", plan->frame_indices.size()}};
  out["decode_sample_seek"] = BenchDecode(path, plan->frame_indices, options);
  const Clock::time_point load = Clock::now();
  auto video = model::LoadVideo(path, config, options);
  const double load_s = SecondsSince(load);
  if (!video.ok()) return {{"error", video.status().ToString()}};
  out["video_grid_thw"] = {video->grid[0], video->grid[1], video->grid[2]};
  out["load_video_s"] = load_s;
  out["s_per_video_minute"] = load_s / minutes;
  out["video_minutes_per_s"] = minutes / load_s;
  return out;
}

// The long-video case: `path` is used as it is when it exists (--long-video), else encoded there
// with the ffmpeg CLI (and deleted afterwards unless `keep`).
Json BenchLongVideo(const std::string& path, const VideoSpec& spec, bool keep,
                    const model::VideoReaderOptions& options) {
  Json out = {{"input", "testsrc2 H.264 (libx264 superfast, GOP 60, B-frames) MP4, 30 fps"},
              {"width", spec.width},
              {"height", spec.height},
              {"seconds", spec.seconds}};
  if (std::filesystem::exists(path)) {
    out["file"] = path;
  } else {
    out["command"] = FfmpegH264Command(path, spec);
    const Clock::time_point t = Clock::now();
    const std::string error = EncodeH264WithFfmpegCli(path, spec);
    if (!error.empty()) {
      out["skipped"] = error;
      return out;
    }
    out["encode_s"] = SecondsSince(t);
  }
  out["decoder_threads"] = options.num_threads;
  out["skip_unrequested_nonref"] = options.skip_unrequested_nonref;
  out.update(MeasureLongVideo(path, options));
  if (!keep) std::filesystem::remove(path);
  return out;
}

int Main(int argc, char** argv) {
  bool quick = false, long_only = false;
  std::string long_video;
  model::VideoReaderOptions long_options;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--quick") {
      quick = true;
    } else if (arg == "--long-video" && i + 1 < argc) {
      long_video = argv[++i];
    } else if (arg == "--long-video-only") {
      long_only = true;
    } else if (arg == "--decoder-threads" && i + 1 < argc) {
      long_options.num_threads = std::atoi(argv[++i]);
    } else if (arg == "--no-skip-nonref") {
      long_options.skip_unrequested_nonref = false;
    } else {
      std::cerr << "usage: vision_preprocess_bench [--quick] [--long-video FILE] [--long-video-only]\n"
                   "                               [--decoder-threads N] [--no-skip-nonref]\n"
                   "Prints one JSON object (see benchmarks/README.md). --long-video: the 720p H.264 video to\n"
                   "use, encoded there with the ffmpeg CLI and kept when it does not exist yet. The last\n"
                   "two set the long video's VideoReaderOptions (0 threads: FFmpeg's choice).\n";
      return arg == "--help" || arg == "-h" ? 0 : 2;
    }
  }
  const Clock::time_point start = Clock::now();
  Json out = {{"benchmark", "vision_preprocess_bench"}, {"mode", quick ? "quick" : "full"}};
  if (!long_only) {
    std::cerr << "vision_preprocess_bench: images\n";
    out["image"] = BenchImage(1000, 1000, quick ? 3 : 10);
    out["image_1080p"] = BenchImage(1920, 1080, quick ? 3 : 10);
    out["image_4k"] = BenchImage(3840, 2160, quick ? 2 : 5);
    std::cerr << "vision_preprocess_bench: videos\n";
    out["video"].push_back(BenchVideo({.seconds = quick ? 10 : 60, .width = 640, .height = 360}));
    // Longer than max_frames / fps (384 s): samples are further apart than a GOP, so seeking pays.
    if (!quick) out["video"].push_back(BenchVideo({.seconds = 900, .width = 192, .height = 108}));
  }
  std::cerr << "vision_preprocess_bench: long H.264 video\n";
  const VideoSpec long_spec = {.seconds = quick ? 60 : 600, .width = 1280, .height = 720};
  out["long_video"] = BenchLongVideo(long_video.empty() ? TempPath("h264.mp4") : long_video, long_spec,
                                     /*keep=*/!long_video.empty(), long_options);
  out["total_s"] = SecondsSince(start);
  std::cout << out.dump(2) << std::endl;
  return 0;
}

}  // namespace
}  // namespace q3vl::bench

int main(int argc, char** argv) { return q3vl::bench::Main(argc, argv); }
