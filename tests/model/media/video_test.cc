// Every video golden (golden/inputs/video: H.264 MP4 and VP9 WebM) through the FFmpeg reader
// and the Qwen3-VL video processor: frame count, fps, sampled indices, timestamps, grids and
// token counts exact; decoded frames, resized frames and pixel_values_videos bit-exact (seeking,
// sequential decoding, dropped non-reference frames and parallel readers alike); the e2e
// requests' vision inputs; and bad or truncated files returning a clear Status.
#include <omp.h>

#include <filesystem>
#include <fstream>
#include <set>
#include <string>

#include "gtest/gtest.h"
#include "model/media/image_decode.h"
#include "model/media/resize.h"
#include "model/media/video_decode.h"
#include "model/media/video_encode.h"
#include "model/media/video_processor.h"
#include "tests/model/input_test_util.h"

extern "C" {
#include <libavformat/avformat.h>
}

namespace q3vl::model {
namespace {

using ::q3vl::testing::CompareArrays;
using ::q3vl::testing::CropMismatches;
using ::q3vl::testing::Diff;
using ::q3vl::testing::InputPath;
using ::q3vl::testing::JsonInts;
using ::q3vl::testing::ReadBytes;
using ::q3vl::testing::ReadCaseJson;
using ::q3vl::testing::ReadInputNpy;
using ::q3vl::testing::Sha256Of;

class VideoGoldenTest : public ::testing::TestWithParam<const char*> {
 protected:
  void SetUp() override {
    dir_ = std::string("video/") + GetParam() + "/";
    c_ = ReadCaseJson(dir_ + "case.json");
    ASSERT_TRUE(c_.contains("file")) << dir_;
    for (const auto& s : c_["stored"]) stored_.insert(s.get<std::string>());
    path_ = InputPath(dir_ + c_["file"].get<std::string>());
  }
  bool Stored(const std::string& name) const { return stored_.count(name) > 0; }

  // Decodes the sampled frames with `options`.
  std::vector<Image> Decode(const VideoReaderOptions& options, VideoReadStats* stats = nullptr) {
    auto reader = VideoReader::Open(path_, options);
    EXPECT_TRUE(reader.ok()) << reader.status();
    if (!reader.ok()) return {};
    const std::vector<int64_t> indices = JsonInts(c_["sampled_frame_indices"]);
    std::vector<Image> frames(indices.size());
    const absl::Status s = (*reader)->ReadFrames(indices, [&](size_t i, const Image& f) {
      frames[i] = f;
      return absl::OkStatus();
    });
    EXPECT_TRUE(s.ok()) << s;
    if (stats != nullptr) *stats = (*reader)->last_read_stats();
    return frames;
  }

  std::string dir_, path_;
  nlohmann::json c_;
  std::set<std::string> stored_;
};

TEST_P(VideoGoldenTest, PlanMatchesReference) {
  auto reader = VideoReader::Open(path_);
  ASSERT_TRUE(reader.ok()) << reader.status();
  const VideoInfo& info = (*reader)->info();
  EXPECT_EQ(info.num_frames, c_["total_num_frames"].get<int64_t>());
  EXPECT_EQ(info.fps, c_["fps"].get<double>());
  EXPECT_EQ((std::vector<int64_t>{info.height, info.width}), JsonInts(c_["decoded_hw"]));
  EXPECT_EQ(info.codec, c_["header"]["codec"].get<std::string>());

  const VisionProcessorConfig config = VisionProcessorConfig::VideoDefaults();
  auto plan = PlanVideo(info, config);
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ(plan->frame_indices, JsonInts(c_["sampled_frame_indices"]));
  const std::vector<double> groups =
      GroupTimestamps(plan->frame_indices, info.fps, config.temporal_patch_size);
  ASSERT_EQ(groups.size(), c_["group_timestamps_s"].size());
  for (size_t g = 0; g < groups.size(); ++g)
    EXPECT_DOUBLE_EQ(groups[g], c_["group_timestamps_s"][g].get<double>());
  EXPECT_EQ(plan->timestamps, c_["group_timestamp_strings"].get<std::vector<std::string>>());
  EXPECT_EQ((std::vector<int64_t>{plan->resized.height, plan->resized.width}), JsonInts(c_["resized_hw"]));
  EXPECT_EQ((std::vector<int64_t>(plan->grid.begin(), plan->grid.end())), JsonInts(c_["video_grid_thw"]));
  EXPECT_EQ(plan->tokens_per_group, c_["tokens_per_group"].get<int64_t>());
  EXPECT_EQ(plan->num_tokens(), c_["num_video_tokens"].get<int64_t>());
  EXPECT_EQ(plan->frame_indices.size() % 2 == 1, c_["padded_last_frame"].get<bool>());
}

TEST_P(VideoGoldenTest, FramesResizedAndPixelValuesBitExact) {
  VideoReadStats stats;
  const std::vector<Image> frames = Decode({}, &stats);
  const Tensor want = ReadInputNpy(dir_ + "sampled_frames.npy");  // [n, H, W, 3]
  ASSERT_EQ(want.dim(0), static_cast<int64_t>(frames.size()));
  const int64_t frame_bytes = want.numel() / want.dim(0);
  for (size_t f = 0; f < frames.size(); ++f) {
    ASSERT_EQ(static_cast<int64_t>(frames[f].rgb.size()), frame_bytes);
    const Diff d = CompareArrays(frames[f].rgb.data(), want.data<uint8_t>() + f * frame_bytes, frame_bytes);
    EXPECT_EQ(d.max, 0) << "frame " << f << ": " << d.count << " values differ, mean " << d.mean;
  }
  EXPECT_EQ(stats.frames_converted, static_cast<int64_t>(frames.size()));

  const VisionProcessorConfig config = VisionProcessorConfig::VideoDefaults();
  const std::vector<int64_t> hw = JsonInts(c_["resized_hw"]);
  std::vector<Image> resized;
  for (const Image& f : frames)
    resized.push_back(ResizeBicubicAntialias(f, {.height = hw[0], .width = hw[1]}));
  if (Stored("resized.npy")) {
    const Tensor r = ReadInputNpy(dir_ + "resized.npy");  // [n, 3, H', W']
    const int64_t per = 3 * hw[0] * hw[1];
    ASSERT_EQ(r.numel(), per * static_cast<int64_t>(resized.size()));
    for (size_t f = 0; f < resized.size(); ++f) {
      const std::vector<uint8_t> chw = ::q3vl::testing::ToChw(resized[f]);
      const Diff d = CompareArrays(chw.data(), r.data<uint8_t>() + f * per, per);
      EXPECT_EQ(d.max, 0) << "resized frame " << f << ": " << d.count << " values differ";
    }
  }
  if (Stored("resized_crops.npy")) {
    const Tensor crops = ReadInputNpy(dir_ + "resized_crops.npy");  // [6, 3, 64, 64]
    const auto& offsets = c_["resized_crops_offsets_fyx"];
    ASSERT_EQ(crops.dim(0), static_cast<int64_t>(offsets.size()));
    for (size_t k = 0; k < offsets.size(); ++k) {
      const Image& f = resized[offsets[k][0].get<int64_t>()];
      const int64_t y0 = offsets[k][1].get<int64_t>(), x0 = offsets[k][2].get<int64_t>();
      const int64_t mismatches = CropMismatches(f, y0, x0, crops.data<uint8_t>() + k * 3 * 64 * 64);
      EXPECT_EQ(mismatches, 0) << "crop " << k;
    }
  }

  const Tensor pv = PatchifyVideo(resized, config);  // [N, 1536]
  EXPECT_EQ((std::vector<int64_t>{pv.dim(0), pv.dim(1)}), JsonInts(c_["pixel_values_videos_shape"]));
  EXPECT_EQ(Sha256Of(pv), c_["pixel_values_videos_sha256"].get<std::string>());
  double sum = 0;
  for (int64_t i = 0; i < pv.numel(); ++i) sum += pv.data<float>()[i];
  EXPECT_NEAR(sum, c_["pixel_values_videos_sum"].get<double>(), 1e-3 + 1e-9 * pv.numel());
  if (Stored("pixel_values_videos.npy")) {
    const Tensor full = ReadInputNpy(dir_ + "pixel_values_videos.npy");
    ASSERT_EQ(full.shape(), pv.shape());
    EXPECT_EQ(CompareArrays(pv.data<float>(), full.data<float>(), pv.numel()).max, 0);
  }
  if (Stored("pixel_values_videos_rows.npy")) {
    const Tensor rows = ReadInputNpy(dir_ + "pixel_values_videos_rows.npy");
    const Tensor index = ReadInputNpy(dir_ + "pixel_values_videos_row_index.npy");
    for (int64_t k = 0; k < index.numel(); ++k) {
      const int64_t r = index.data<int64_t>()[k];
      ASSERT_LT(r, pv.dim(0));
      EXPECT_EQ(
          CompareArrays(pv.data<float>() + r * pv.dim(1), rows.data<float>() + k * rows.dim(1), rows.dim(1))
              .max,
          0)
          << "row " << r;
    }
  }

  // The whole pipeline in one call gives the same tensor.
  auto video = LoadVideo(path_, config);
  ASSERT_TRUE(video.ok()) << video.status();
  EXPECT_EQ(Sha256Of(video->pixel_values), Sha256Of(pv));
  EXPECT_EQ((std::vector<int64_t>(video->grid.begin(), video->grid.end())), JsonInts(c_["video_grid_thw"]));
  const VisionInput input = MakeVisionInput(std::vector<ProcessedVideo>{*video});
  EXPECT_EQ(input.pixel_values.shape(), pv.shape());
  ASSERT_EQ(input.grids.size(), 1u);
}

// Seeking must give the frames a sequential decode from the start gives (the reference's way).
TEST_P(VideoGoldenTest, SeekingMatchesSequentialDecode) {
  VideoReadStats seek_stats, seq_stats;
  const std::vector<Image> seek = Decode({}, &seek_stats);
  const std::vector<Image> seq = Decode({.sequential = true}, &seq_stats);
  ASSERT_EQ(seek.size(), seq.size());
  for (size_t f = 0; f < seek.size(); ++f) EXPECT_EQ(seek[f].rgb, seq[f].rgb) << "frame " << f;
  EXPECT_LE(seek_stats.packets_decoded, seq_stats.packets_decoded);
  // Letting the decoder drop unrequested non-reference frames changes no pixel.
  VideoReadStats all_stats;
  const std::vector<Image> all = Decode({.skip_unrequested_nonref = false}, &all_stats);
  ASSERT_EQ(all.size(), seek.size());
  for (size_t f = 0; f < seek.size(); ++f) EXPECT_EQ(seek[f].rgb, all[f].rgb) << "frame " << f;
  EXPECT_LE(seek_stats.frames_decoded, all_stats.frames_decoded);
}

// A reopened reader shares the packet index and decodes the same frames; keyframes never
// decrease along the frames, and the whole LoadVideo (runs of frames on parallel readers) is the
// same on one thread and on several.
TEST_P(VideoGoldenTest, ParallelReadersMatchOneReader) {
  auto reader = VideoReader::Open(path_);
  ASSERT_TRUE(reader.ok()) << reader.status();
  auto again = (*reader)->Reopen({.num_threads = 1});
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ((*again)->info().num_frames, (*reader)->info().num_frames);
  const std::vector<int64_t> indices = JsonInts(c_["sampled_frame_indices"]);
  for (size_t i = 1; i < indices.size(); ++i)
    EXPECT_LE((*reader)->KeyframeOf(indices[i - 1]), (*reader)->KeyframeOf(indices[i]));
  EXPECT_EQ((*reader)->KeyframeOf(0), 0);
  const std::vector<Image> expected = Decode({});
  size_t checked = 0;
  ASSERT_TRUE((*again)
                  ->ReadFrames(indices,
                               [&](size_t i, const Image& f) {
                                 checked += f.rgb == expected[i].rgb;
                                 return absl::OkStatus();
                               })
                  .ok());
  EXPECT_EQ(checked, indices.size());

  const auto config = VisionProcessorConfig::VideoDefaults();
  const int threads = omp_get_max_threads();
  omp_set_num_threads(1);
  auto one = LoadVideo(path_, config);
  omp_set_num_threads(4);
  auto four = LoadVideo(path_, config);
  omp_set_num_threads(threads);
  ASSERT_TRUE(one.ok() && four.ok());
  EXPECT_EQ(Sha256Of(one->pixel_values), Sha256Of(four->pixel_values));
  EXPECT_EQ(Sha256Of(four->pixel_values), c_["pixel_values_videos_sha256"].get<std::string>());
}

INSTANTIATE_TEST_SUITE_P(Goldens, VideoGoldenTest,
                         ::testing::Values("v1_testsrc2_320x240_24fps_4s",
                                           "v2_mandelbrot_250x170_30fps_75frames",
                                           "v3_movingbox_640x360_10fps_2s",
                                           "v4_testsrc_320x240_15fps_3s_vp9"));

// The e2e requests' media through LoadImage / LoadVideo / MakeVisionInput: the concatenated
// pixel_values of all images (resp. videos) of a request, and their grids, as the reference.
TEST(E2eRequestTest, VisionInputsMatchReference) {
  for (const char* name : {"e02_image", "e03_video", "e04_image_video"}) {
    const nlohmann::json c = ReadCaseJson(std::string("e2e/") + name + "/case.json");
    ASSERT_TRUE(c.contains("request")) << name;
    std::vector<ProcessedImage> images;
    std::vector<ProcessedVideo> videos;
    for (const auto& message : c["request"]["messages"]) {
      if (!message["content"].is_array()) continue;
      for (const auto& item : message["content"]) {
        if (item["type"] == "image") {
          auto image = LoadImage(InputPath("e2e/" + item["image"].get<std::string>()));
          ASSERT_TRUE(image.ok()) << image.status();
          auto processed = ProcessImage(*image, VisionProcessorConfig::ImageDefaults());
          ASSERT_TRUE(processed.ok()) << processed.status();
          images.push_back(*processed);
        } else if (item["type"] == "video") {
          auto video = LoadVideo(InputPath("e2e/" + item["video"].get<std::string>()),
                                 VisionProcessorConfig::VideoDefaults());
          ASSERT_TRUE(video.ok()) << video.status();
          videos.push_back(*video);
        }
      }
    }
    const nlohmann::json& want = c["expected"];
    const VisionInput image_input = MakeVisionInput(images);
    const VisionInput video_input = MakeVisionInput(videos);
    std::vector<std::vector<int64_t>> image_grids, video_grids;
    for (const GridThw& g : image_input.grids) image_grids.push_back({g[0], g[1], g[2]});
    for (const GridThw& g : video_input.grids) video_grids.push_back({g[0], g[1], g[2]});
    EXPECT_EQ(image_grids, want["image_grid_thw"].get<std::vector<std::vector<int64_t>>>()) << name;
    EXPECT_EQ(video_grids, want["video_grid_thw"].get<std::vector<std::vector<int64_t>>>()) << name;
    if (!want["pixel_values_sha256"].is_null()) {
      EXPECT_EQ(Sha256Of(image_input.pixel_values), want["pixel_values_sha256"].get<std::string>()) << name;
    }
    if (!want["pixel_values_videos_sha256"].is_null()) {
      EXPECT_EQ(Sha256Of(video_input.pixel_values), want["pixel_values_videos_sha256"].get<std::string>())
          << name;
    }
  }
}

std::string WriteTemp(const std::string& name, const std::string& bytes) {
  const std::string path = ::q3vl::testing::ScratchDir() + "/q3vl_video_test_" + name;
  std::ofstream(path, std::ios::binary) << bytes;
  return path;
}

// Remuxes `src` to an MP4 with the index (moov) before the data, so that cutting the file
// keeps the header and loses frames.
std::string RemuxFaststart(const std::string& src, const std::string& dst) {
  AVFormatContext* in = nullptr;
  AVFormatContext* out = nullptr;
  EXPECT_GE(avformat_open_input(&in, src.c_str(), nullptr, nullptr), 0);
  EXPECT_GE(avformat_find_stream_info(in, nullptr), 0);
  EXPECT_GE(avformat_alloc_output_context2(&out, nullptr, "mp4", dst.c_str()), 0);
  AVStream* os = avformat_new_stream(out, nullptr);
  avcodec_parameters_copy(os->codecpar, in->streams[0]->codecpar);
  os->codecpar->codec_tag = 0;
  EXPECT_GE(avio_open(&out->pb, dst.c_str(), AVIO_FLAG_WRITE), 0);
  AVDictionary* opts = nullptr;
  av_dict_set(&opts, "movflags", "faststart", 0);
  EXPECT_GE(avformat_write_header(out, &opts), 0);
  av_dict_free(&opts);
  AVPacket* pkt = av_packet_alloc();
  while (av_read_frame(in, pkt) >= 0) {
    if (pkt->stream_index == 0) {
      av_packet_rescale_ts(pkt, in->streams[0]->time_base, os->time_base);
      pkt->pos = -1;
      EXPECT_GE(av_interleaved_write_frame(out, pkt), 0);
    }
    av_packet_unref(pkt);
  }
  av_write_trailer(out);
  av_packet_free(&pkt);
  avio_closep(&out->pb);
  avformat_free_context(out);
  avformat_close_input(&in);
  return dst;
}

void ExpectVideoError(const std::string& path, absl::string_view fragment) {
  auto video = LoadVideo(path, VisionProcessorConfig::VideoDefaults());
  ASSERT_FALSE(video.ok()) << path << " decoded";
  EXPECT_NE(video.status().message().find(fragment), absl::string_view::npos) << video.status();
  EXPECT_NE(video.status().message().find(path), absl::string_view::npos) << video.status();
}

TEST(VideoDecodeTest, BadAndTruncatedFiles) {
  const std::string mp4 =
      ReadBytes(InputPath("video/v1_testsrc2_320x240_24fps_4s/v1_testsrc2_320x240_24fps_4s.mp4"));
  const std::string webm =
      ReadBytes(InputPath("video/v4_testsrc_320x240_15fps_3s_vp9/v4_testsrc_320x240_15fps_3s_vp9.webm"));
  ASSERT_GT(mp4.size(), 10000u);
  ASSERT_GT(webm.size(), 10000u);
  auto missing = LoadVideo("/nonexistent/clip.mp4", VisionProcessorConfig::VideoDefaults());
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound) << missing.status();
  ExpectVideoError(WriteTemp("empty.mp4", ""), "cannot open");
  ExpectVideoError(WriteTemp("garbage.mp4", std::string(5000, 'z')), "cannot open");
  // The index is at the end of these MP4s: a cut file has none.
  ExpectVideoError(WriteTemp("half.mp4", mp4.substr(0, mp4.size() / 2)), "video");
  // With the index first, a cut file promises more frames than it holds.
  const std::string faststart =
      RemuxFaststart(InputPath("video/v1_testsrc2_320x240_24fps_4s/v1_testsrc2_320x240_24fps_4s.mp4"),
                     ::q3vl::testing::ScratchDir() + "/q3vl_video_test_faststart.mp4");
  auto whole = LoadVideo(faststart, VisionProcessorConfig::VideoDefaults());
  ASSERT_TRUE(whole.ok()) << whole.status();
  const std::string remuxed = ReadBytes(faststart);
  ExpectVideoError(WriteTemp("cut.mp4", remuxed.substr(0, remuxed.size() * 2 / 3)), "truncated");
  // A WebM has no frame count in its header; a cut one falls short of the header's duration.
  ExpectVideoError(WriteTemp("cut.webm", webm.substr(0, webm.size() / 2)), "truncated");
  // Headers intact, frame data scrambled: whatever the decoder makes of it, no crash, and an
  // error names the file.
  std::string scrambled = webm;
  for (size_t i = webm.size() / 3; i < scrambled.size(); i += 5)
    scrambled[i] = static_cast<char>(scrambled[i] * 31 + 7);
  auto bad = LoadVideo(WriteTemp("scrambled.webm", scrambled), VisionProcessorConfig::VideoDefaults());
  if (!bad.ok()) {
    EXPECT_NE(bad.status().message().find("scrambled.webm"), absl::string_view::npos) << bad.status();
  }
  // Frame indices out of range are a caller error.
  auto reader = VideoReader::Open(
      InputPath("video/v4_testsrc_320x240_15fps_3s_vp9/v4_testsrc_320x240_15fps_3s_vp9.webm"));
  ASSERT_TRUE(reader.ok()) << reader.status();
  const std::vector<int64_t> past_end = {0, 45};
  const std::vector<int64_t> decreasing = {5, 3};
  auto ignore = [](size_t, const Image&) { return absl::OkStatus(); };
  EXPECT_EQ((*reader)->ReadFrames(past_end, ignore).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ((*reader)->ReadFrames(decreasing, ignore).code(), absl::StatusCode::kInvalidArgument);
  // Repeated indices deliver the same frame again; an error from the callback stops the read.
  const std::vector<int64_t> repeated = {3, 3};
  std::vector<Image> got;
  ASSERT_TRUE((*reader)
                  ->ReadFrames(repeated,
                               [&](size_t, const Image& f) {
                                 got.push_back(f);
                                 return absl::OkStatus();
                               })
                  .ok());
  ASSERT_EQ(got.size(), 2u);
  EXPECT_EQ(got[0].rgb, got[1].rgb);
  EXPECT_EQ((*reader)
                ->ReadFrames(repeated, [](size_t, const Image&) { return absl::CancelledError("stop"); })
                .code(),
            absl::StatusCode::kCancelled);
  for (const char* name :
       {"empty.mp4", "garbage.mp4", "half.mp4", "faststart.mp4", "cut.mp4", "cut.webm", "scrambled.webm"}) {
    std::filesystem::remove(::q3vl::testing::ScratchDir() + "/q3vl_video_test_" + name);
  }
}

// Two videos written causally whose first 20 frames are equal (then one shows something else:
// a NIAH needle) decode those 20 frames to the same pixels, so a server sees the same frame
// groups and can reuse their prefix-cache pages. The default writer's lookahead lets later
// frames change how earlier ones are coded, so this is a property of the causal settings.
TEST(VideoWriterTest, CausalVideosSharingTheirFirstFramesDecodeThemAlike) {
  const int64_t h = 96, w = 128, frames = 48, shared = 20;
  auto frame = [&](int64_t k, bool needle) {
    Image im = Image::Blank(h, w);
    for (int64_t y = 0; y < h; ++y) {
      for (int64_t x = 0; x < w; ++x) {
        uint8_t* p = &im.rgb[(y * w + x) * 3];
        if (needle) {
          p[0] = 230, p[1] = 20, p[2] = static_cast<uint8_t>(x);
        } else {  // a moving texture: motion search and rate control have work to do
          p[0] = static_cast<uint8_t>((x * 3 + k * 5) ^ y);
          p[1] = static_cast<uint8_t>(y * 2 + k * 7);
          p[2] = static_cast<uint8_t>((x + y + k * 11) * 13 % 251);
        }
      }
    }
    return im;
  };
  auto write = [&](const std::string& name, bool with_needle) {
    const std::string path = ::q3vl::testing::ScratchDir() + "/q3vl_causal_" + name + ".mp4";
    auto writer = VideoWriter::Open(path, {.width = w, .height = h, .fps = 2, .crf = 23, .causal = true});
    EXPECT_TRUE(writer.ok()) << writer.status();
    for (int64_t k = 0; k < frames; ++k) {
      EXPECT_TRUE((*writer)->Write(frame(k, with_needle && k >= shared && k < shared + 2)).ok());
    }
    EXPECT_TRUE((*writer)->Finish().ok());
    return path;
  };
  auto decode = [&](const std::string& path) {
    std::vector<std::vector<uint8_t>> out;
    auto reader = VideoReader::Open(path);
    EXPECT_TRUE(reader.ok()) << reader.status();
    std::vector<int64_t> all(frames);
    for (int64_t k = 0; k < frames; ++k) all[k] = k;
    EXPECT_TRUE((*reader)->ReadFrames(all, [&](size_t, const Image& im) {
      out.push_back(im.rgb);
      return absl::OkStatus();
    }).ok());
    return out;
  };
  const auto haystack = decode(write("haystack", false));
  const auto needle = decode(write("needle", true));
  ASSERT_EQ(haystack.size(), static_cast<size_t>(frames));
  ASSERT_EQ(needle.size(), static_cast<size_t>(frames));
  for (int64_t k = 0; k < shared; ++k) EXPECT_TRUE(haystack[k] == needle[k]) << "frame " << k;
  EXPECT_FALSE(haystack[shared] == needle[shared]) << "the needle frame differs";
}

}  // namespace
}  // namespace q3vl::model
