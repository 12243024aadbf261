// Unit tests of the vision preprocessing pieces the goldens only touch at a few points:
// smart_resize branches and half-to-even rounding, the patch row layout, config parsing, the
// resize's fixed-point taps, frame sampling and timestamp formatting, and plans for long videos.
#include "model/media/vision_processor.h"

#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "model/media/resize.h"
#include "model/media/video_processor.h"

namespace q3vl::model {
namespace {

ImageSize Resize(int64_t h, int64_t w, int64_t frames = 0) {
  const VisionProcessorConfig config =
      frames > 0 ? VisionProcessorConfig::VideoDefaults() : VisionProcessorConfig::ImageDefaults();
  auto r = SmartResize({.height = h, .width = w, .num_frames = frames}, config);
  EXPECT_TRUE(r.ok()) << r.status();
  return r.ok() ? *r : ImageSize{};
}

void ExpectHw(const ImageSize& got, int64_t h, int64_t w) {
  EXPECT_EQ(got.height, h);
  EXPECT_EQ(got.width, w);
}

TEST(SmartResizeTest, BranchesAndRounding) {
  ExpectHw(Resize(272, 400), 256, 384);      // 8.5 -> 8 and 12.5 -> 12 (half to even)
  ExpectHw(Resize(17, 400), 64, 1248);       // below min_pixels: scaled up
  ExpectHw(Resize(5000, 5000), 4096, 4096);  // above max_pixels: scaled down
  ExpectHw(Resize(10000, 300), 9984, 288);
  ExpectHw(Resize(1, 150), 32, 3136);
  ExpectHw(Resize(1080, 1920, 768), 128, 224);  // the video budget covers every frame
  ExpectHw(Resize(240, 320, 5), 256, 320);
  ExpectHw(Resize(32, 32, 2), 64, 64);
  const auto config = VisionProcessorConfig::ImageDefaults();
  EXPECT_FALSE(SmartResize({.height = 10, .width = 2500}, config).ok());  // aspect ratio 250
  EXPECT_FALSE(SmartResize({.height = 0, .width = 20}, config).ok());
  const auto video = VisionProcessorConfig::VideoDefaults();
  EXPECT_FALSE(SmartResize({.height = 20, .width = 640, .num_frames = 4}, video).ok());  // < 32 px
  EXPECT_FALSE(SmartResize({.height = 64, .width = 64, .num_frames = 1}, video).ok());   // < 2 frames
}

TEST(PatchifyTest, RowAndColumnLayout) {
  VisionProcessorConfig config = VisionProcessorConfig::VideoDefaults();
  Image a = Image::Blank(64, 96), b = Image::Blank(64, 96);
  for (int64_t i = 0; i < 64 * 96 * 3; ++i) {
    a.rgb[i] = static_cast<uint8_t>(i * 7 % 251);
    b.rgb[i] = static_cast<uint8_t>(i * 13 % 241);
  }
  const Tensor pv = PatchifyVideo({a, b, a}, config);  // 3 frames -> 2 groups, the last padded
  const int64_t gh = 4, gw = 6, ps = 16;
  ASSERT_EQ(pv.dim(0), 2 * gh * gw);
  ASSERT_EQ(pv.dim(1), 1536);
  const Image* frames[4] = {&a, &b, &a, &a};
  for (int64_t g = 0; g < 2; ++g) {
    for (int64_t br = 0; br < gh / 2; ++br) {
      for (int64_t bc = 0; bc < gw / 2; ++bc) {
        for (int64_t r = 0; r < 2; ++r) {
          for (int64_t c = 0; c < 2; ++c) {
            const int64_t row = g * gh * gw + ((br * (gw / 2) + bc) * 2 + r) * 2 + c;
            for (int64_t col : {0, 17, 255, 256, 700, 1535}) {
              const int64_t ch = col / 512, t = col / 256 % 2, py = col / 16 % 16, px = col % 16;
              const int64_t y = (br * 2 + r) * ps + py, x = (bc * 2 + c) * ps + px;
              const uint8_t u8 = frames[g * 2 + t]->row(y)[x * 3 + ch];
              EXPECT_EQ(pv.data<float>()[row * 1536 + col], (static_cast<float>(u8) - 127.5f) / 127.5f)
                  << "row " << row << " col " << col;
            }
          }
        }
      }
    }
  }
  ProcessedImage one{.pixel_values = pv.Slice(0, 0, 24).Clone(), .grid = {1, 4, 6}};
  ProcessedImage two{.pixel_values = pv.Slice(0, 24, 48).Clone(), .grid = {1, 4, 6}};
  const VisionInput input = MakeVisionInput(std::vector<ProcessedImage>{one, two});
  ASSERT_EQ(input.grids.size(), 2u);
  EXPECT_EQ(input.pixel_values.shape(), pv.shape());
  EXPECT_EQ(input.pixel_values.data<float>()[30 * 1536 + 5], pv.data<float>()[30 * 1536 + 5]);
}

TEST(VisionProcessorConfigTest, FromJson) {
  const char* official = R"({"size": {"longest_edge": 25165824, "shortest_edge": 4096}, "patch_size": 16,
      "temporal_patch_size": 2, "merge_size": 2, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
      "processor_class": "Qwen3VLProcessor", "video_processor_type": "Qwen3VLVideoProcessor"})";
  auto c = VisionProcessorConfig::FromJson(official, "video_preprocessor_config.json",
                                           VisionProcessorConfig::ImageDefaults());
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->min_pixels, 4096);
  EXPECT_EQ(c->max_pixels, 25165824);
  EXPECT_EQ(c->fps, 2.0);
  auto old = VisionProcessorConfig::FromJson(R"({"min_pixels": 3136, "max_pixels": 12845056, "fps": 1.5})",
                                             "x", VisionProcessorConfig::ImageDefaults());
  ASSERT_TRUE(old.ok()) << old.status();
  EXPECT_EQ(old->min_pixels, 3136);
  EXPECT_EQ(old->fps, 1.5);
  const auto defaults = VisionProcessorConfig::ImageDefaults();
  EXPECT_FALSE(VisionProcessorConfig::FromJson("{oops", "bad.json", defaults).ok());
  auto zero = VisionProcessorConfig::FromJson(R"({"patch_size": 0})", "bad.json", defaults);
  ASSERT_FALSE(zero.ok());
  EXPECT_NE(zero.status().message().find("bad.json"), absl::string_view::npos);
  EXPECT_FALSE(VisionProcessorConfig::FromJson(R"({"image_mean": [1, 2]})", "x", defaults).ok());
  EXPECT_FALSE(VisionProcessorConfig::FromJson(R"({"size": {"shortest_edge": "big"}})", "x", defaults).ok());
}

TEST(ResizeTest, FixedPointTaps) {
  for (auto [in, out] :
       std::vector<std::pair<int64_t, int64_t>>{{100, 256}, {517, 512}, {4000, 37}, {7, 7}, {1, 5}}) {
    const ResizeAxisWeights aw = ComputeResizeAxisWeights(in, out);
    ASSERT_EQ(static_cast<int64_t>(aw.first.size()), out);
    for (int64_t i = 0; i < out; ++i) {
      ASSERT_GE(aw.first[i], 0);
      ASSERT_LE(aw.first[i] + aw.count[i], in);
      int64_t sum = 0;
      for (int64_t j = 0; j < aw.count[i]; ++j) sum += aw.weights[i * aw.max_taps + j];
      EXPECT_NEAR(sum, int64_t{1} << aw.precision, aw.count[i]) << in << "->" << out << " at " << i;
    }
  }
  EXPECT_GE(ComputeResizeAxisWeights(4000, 37).max_taps, 2 * 216);  // support widened by the scale
  Image dot = Image::Blank(1, 1);
  dot.rgb = {9, 99, 199};
  const Image up = ResizeBicubicAntialias(dot, {.height = 5, .width = 3});
  for (int64_t i = 0; i < up.num_pixels(); ++i) EXPECT_EQ(up.rgb[3 * i + 1], 99);
}

TEST(FrameSamplingTest, IndicesAndTimestamps) {
  const auto config = VisionProcessorConfig::VideoDefaults();
  EXPECT_EQ(SampleFrameIndices(75, 30, config), (std::vector<int64_t>{0, 18, 37, 56, 74}));
  EXPECT_EQ(SampleFrameIndices(6, 2.4, config), (std::vector<int64_t>{0, 1, 2, 4, 5}));  // 2.5 -> 2
  EXPECT_EQ(SampleFrameIndices(3, 30, config), (std::vector<int64_t>{0, 1, 2}));         // fewer than min
  EXPECT_EQ(SampleFrameIndices(1, 30, config), (std::vector<int64_t>{0}));
  EXPECT_EQ(FormatTimestamp(0.25), "<0.2 seconds>");  // exact tie: half to even
  EXPECT_EQ(FormatTimestamp(0.35), "<0.3 seconds>");  // 0.34999...
  EXPECT_EQ(FormatTimestamp(1.55), "<1.6 seconds>");  // 1.55000...04
  EXPECT_EQ(FormatTimestamp(3.0), "<3.0 seconds>");
  const std::vector<int64_t> odd = {0, 18, 37, 56, 74};
  EXPECT_EQ(GroupTimestamps(odd, 30, 2), (std::vector<double>{0.3, (37.0 / 30 + 56.0 / 30) / 2, 74.0 / 30}));

  // An hour at 30 fps, 1080p: capped at max_frames, and the pixel budget shrinks the frames.
  auto plan = PlanVideo({.num_frames = 108000, .fps = 30, .height = 1080, .width = 1920}, config);
  ASSERT_TRUE(plan.ok()) << plan.status();
  ASSERT_EQ(plan->frame_indices.size(), 768u);
  EXPECT_EQ(plan->frame_indices.front(), 0);
  EXPECT_EQ(plan->frame_indices.back(), 107999);
  for (size_t i = 1; i < plan->frame_indices.size(); ++i)
    ASSERT_LT(plan->frame_indices[i - 1], plan->frame_indices[i]);
  EXPECT_EQ(plan->grid, (GridThw{384, 8, 14}));
  EXPECT_EQ(plan->tokens_per_group, 28);
  EXPECT_EQ(plan->timestamps.size(), 384u);
  EXPECT_EQ(plan->num_tokens(), 384 * 28);
  // No frame rate in the container: the default is used.
  auto no_fps = PlanVideo({.num_frames = 48, .fps = 0, .height = 64, .width = 64}, config);
  ASSERT_TRUE(no_fps.ok()) << no_fps.status();
  EXPECT_EQ(no_fps->video_fps, kDefaultVideoFps);
  EXPECT_EQ(no_fps->frame_indices.size(), 4u);
}

}  // namespace
}  // namespace q3vl::model
