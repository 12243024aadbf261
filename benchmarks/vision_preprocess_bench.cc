// vision_preprocess_bench: the input pipeline's CPU cost, as one JSON object on stdout. Image:
// decode + preprocess (smart_resize, uint8 bicubic, normalise, patchify) of a synthetic
// 1-megapixel JPEG. Video: frame sampling + decode of synthetic MPEG-4 Part 2 MP4s (60 s 640x360
// and 15 min 192x108; GOP 30, B-frames), by seeking and by sequential decoding, and the whole
// LoadVideo pipeline.
// Inputs are generated in memory / a temp file, so no data files are needed.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <string>
#include <vector>

#include "model/image_decode.h"
#include "model/video_decode.h"
#include "model/video_processor.h"
#include "model/vision_processor.h"
#include "nlohmann/json.hpp"

// clang-format off
#include <jpeglib.h>
extern "C" {
#include <libavcodec/avcodec.h>
#include <libavformat/avformat.h>
}
// clang-format on

namespace q3vl::bench {
namespace {

using Clock = std::chrono::steady_clock;
using Json = nlohmann::json;

double SecondsSince(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// Gradients plus a hashed texture, so the JPEG has realistic entropy.
std::string SyntheticJpeg(int width, int height) {
  std::vector<uint8_t> rgb(static_cast<size_t>(width) * height * 3);
  uint32_t state = 12345;
  for (int y = 0; y < height; ++y) {
    for (int x = 0; x < width; ++x) {
      state = state * 1664525u + 1013904223u;
      uint8_t* p = &rgb[(static_cast<size_t>(y) * width + x) * 3];
      p[0] = static_cast<uint8_t>(x * 255 / width);
      p[1] = static_cast<uint8_t>(y * 255 / height);
      p[2] = static_cast<uint8_t>(((x / 16 + y / 16) % 2) * 128 + (state >> 27));
    }
  }
  jpeg_compress_struct cinfo;
  jpeg_error_mgr err;
  cinfo.err = jpeg_std_error(&err);
  jpeg_create_compress(&cinfo);
  unsigned char* buffer = nullptr;
  unsigned long size = 0;
  jpeg_mem_dest(&cinfo, &buffer, &size);
  cinfo.image_width = width;
  cinfo.image_height = height;
  cinfo.input_components = 3;
  cinfo.in_color_space = JCS_RGB;
  jpeg_set_defaults(&cinfo);
  jpeg_set_quality(&cinfo, 90, TRUE);
  jpeg_start_compress(&cinfo, TRUE);
  while (cinfo.next_scanline < cinfo.image_height) {
    JSAMPROW row = &rgb[static_cast<size_t>(cinfo.next_scanline) * width * 3];
    jpeg_write_scanlines(&cinfo, &row, 1);
  }
  jpeg_finish_compress(&cinfo);
  jpeg_destroy_compress(&cinfo);
  std::string out(reinterpret_cast<char*>(buffer), size);
  free(buffer);
  return out;
}

Json BenchImage(int iterations) {
  const std::string jpeg = SyntheticJpeg(1000, 1000);
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
  out["input"] = "synthetic 1000x1000 JPEG, quality 90, 4:2:0";
  out["jpeg_bytes"] = jpeg.size();
  out["iterations"] = iterations;
  out["decode_ms"] = decode * 1e3;
  out["preprocess_ms"] = preprocess * 1e3;
  out["total_ms"] = (decode + preprocess) * 1e3;
  return out;
}

struct VideoCase {
  int seconds = 0;
  int width = 0;
  int height = 0;
};
constexpr int kFps = 30;

// Writes the case's video at 30 fps with FFmpeg's native MPEG-4 encoder. Returns "" on failure.
std::string SyntheticVideo(const std::string& path, const VideoCase& c) {
  const int kWidth = c.width, kHeight = c.height;
  const AVCodec* codec = avcodec_find_encoder(AV_CODEC_ID_MPEG4);
  AVFormatContext* fmt = nullptr;
  if (codec == nullptr || avformat_alloc_output_context2(&fmt, nullptr, "mp4", path.c_str()) < 0) return "";
  AVStream* st = avformat_new_stream(fmt, nullptr);
  AVCodecContext* enc = avcodec_alloc_context3(codec);
  enc->width = kWidth;
  enc->height = kHeight;
  enc->pix_fmt = AV_PIX_FMT_YUV420P;
  enc->time_base = {1, kFps};
  enc->framerate = {kFps, 1};
  enc->gop_size = 30;
  enc->max_b_frames = 2;
  enc->bit_rate = 1500000;
  if (fmt->oformat->flags & AVFMT_GLOBALHEADER) enc->flags |= AV_CODEC_FLAG_GLOBAL_HEADER;
  bool ok =
      avcodec_open2(enc, codec, nullptr) >= 0 && avcodec_parameters_from_context(st->codecpar, enc) >= 0;
  st->time_base = enc->time_base;
  st->avg_frame_rate = enc->framerate;
  ok = ok && avio_open(&fmt->pb, path.c_str(), AVIO_FLAG_WRITE) >= 0 &&
       avformat_write_header(fmt, nullptr) >= 0;
  AVFrame* frame = av_frame_alloc();
  AVPacket* pkt = av_packet_alloc();
  frame->width = kWidth;
  frame->height = kHeight;
  frame->format = AV_PIX_FMT_YUV420P;
  ok = ok && av_frame_get_buffer(frame, 0) >= 0;
  auto drain = [&]() {
    while (avcodec_receive_packet(enc, pkt) >= 0) {
      av_packet_rescale_ts(pkt, enc->time_base, st->time_base);
      pkt->stream_index = st->index;
      av_interleaved_write_frame(fmt, pkt);
    }
  };
  for (int i = 0; ok && i < c.seconds * kFps; ++i) {
    ok = av_frame_make_writable(frame) >= 0;
    for (int y = 0; y < kHeight; ++y) {
      for (int x = 0; x < kWidth; ++x)
        frame->data[0][y * frame->linesize[0] + x] = static_cast<uint8_t>(x + y + 3 * i);
    }
    for (int y = 0; y < kHeight / 2; ++y) {
      for (int x = 0; x < kWidth / 2; ++x) {
        frame->data[1][y * frame->linesize[1] + x] = static_cast<uint8_t>(128 + y - i);
        frame->data[2][y * frame->linesize[2] + x] = static_cast<uint8_t>(64 + x + i);
      }
    }
    frame->pts = i;
    ok = ok && avcodec_send_frame(enc, frame) >= 0;
    drain();
  }
  avcodec_send_frame(enc, nullptr);
  drain();
  if (ok) av_write_trailer(fmt);
  av_packet_free(&pkt);
  av_frame_free(&frame);
  avcodec_free_context(&enc);
  avio_closep(&fmt->pb);
  avformat_free_context(fmt);
  return ok ? path : "";
}

Json BenchDecode(const std::string& path, const std::vector<int64_t>& indices, bool sequential) {
  const Clock::time_point t = Clock::now();
  auto reader = model::VideoReader::Open(path, {.sequential = sequential});
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
          {"packets_decoded", stats.packets_decoded}};
}

Json BenchVideo(const VideoCase& c) {
  const std::string path = (std::filesystem::temp_directory_path() /
                            ("vision_preprocess_bench_" + std::to_string(getpid()) + ".mp4"))
                               .string();
  const Clock::time_point t = Clock::now();
  if (SyntheticVideo(path, c).empty()) return {{"error", "cannot encode the synthetic video"}};
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
  out["decode_sample_seek"] = BenchDecode(path, plan->frame_indices, /*sequential=*/false);
  out["decode_sample_sequential"] = BenchDecode(path, plan->frame_indices, /*sequential=*/true);
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

int Main(int argc, char** argv) {
  bool quick = false;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--quick") {
      quick = true;
    } else {
      std::cerr << "usage: vision_preprocess_bench [--quick]\n"
                   "Prints one JSON object (see benchmarks/README.md).\n";
      return arg == "--help" || arg == "-h" ? 0 : 2;
    }
  }
  const Clock::time_point start = Clock::now();
  std::cerr << "vision_preprocess_bench: image\n";
  Json out = {{"benchmark", "vision_preprocess_bench"}, {"mode", quick ? "quick" : "full"}};
  out["image"] = BenchImage(quick ? 3 : 10);
  std::cerr << "vision_preprocess_bench: video\n";
  out["video"].push_back(BenchVideo({.seconds = quick ? 10 : 60, .width = 640, .height = 360}));
  // Longer than max_frames / fps (384 s): samples are further apart than a GOP, so seeking pays.
  if (!quick) out["video"].push_back(BenchVideo({.seconds = 900, .width = 192, .height = 108}));
  out["total_s"] = SecondsSince(start);
  std::cout << out.dump(2) << std::endl;
  return 0;
}

}  // namespace
}  // namespace q3vl::bench

int main(int argc, char** argv) { return q3vl::bench::Main(argc, argv); }
