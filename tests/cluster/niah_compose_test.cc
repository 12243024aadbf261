// A NIAH cell's video through the serving path's own reader and processor: the frames, size,
// groups and tokens of the plan; the needle in exactly its group's two frames (pixels compared
// after H.264); the haystack looped when shorter than the cell.
#include <cmath>
#include <filesystem>

#include "cluster/niah/compose.h"
#include "gtest/gtest.h"
#include "model/media/image_decode.h"
#include "model/media/resize.h"
#include "model/media/video_decode.h"
#include "model/media/video_processor.h"
#include "tests/test_util.h"

namespace q3vl::cluster::niah {
namespace {

double MeanAbsDiff(const model::Image& a, const model::Image& b) {
  EXPECT_EQ(a.rgb.size(), b.rgb.size());
  double sum = 0;
  for (size_t i = 0; i < a.rgb.size() && i < b.rgb.size(); ++i) sum += std::abs(int{a.rgb[i]} - int{b.rgb[i]});
  return sum / static_cast<double>(a.rgb.size());
}

TEST(NiahComposeTest, TheCellVideoIsWhatThePlanSays) {
  const std::string media = testing::TestDataDir() + "/media/";
  const std::string haystack = media + "testsrc2_320x240_4s.mp4";
  auto needle = model::DecodeImageFile(media + "shapes_333x517.jpg");
  ASSERT_TRUE(needle.ok()) << needle.status();
  const Geometry g = *FitGeometry(320, 240, 48, 2.0, model::VisionProcessorConfig::VideoDefaults());
  auto cell = PlanCell(g, 10 * g.tokens_per_group(), 0.6);  // 10 groups, 20 frames, 10 s: the 4 s clip 3 times
  ASSERT_TRUE(cell.ok()) << cell.status();
  const std::string out = testing::ScratchDir() + "/cell.mp4";
  ComposeStats stats;
  ASSERT_TRUE(ComposeCellVideo(haystack, *needle, g, *cell, out, &stats).ok());
  EXPECT_EQ(stats.loops, 3);
  EXPECT_EQ(stats.haystack_frames_read, cell->frames);

  // The processor, with the request's settings, sees the plan.
  model::VisionProcessorConfig c = model::VisionProcessorConfig::VideoDefaults();
  c.fps = cell->kwargs_fps;
  c.max_frames = cell->kwargs_max_frames;
  c.min_pixels = cell->kwargs_min_pixels;
  c.max_pixels = cell->kwargs_max_pixels;
  auto video = model::LoadVideo(out, c);
  ASSERT_TRUE(video.ok()) << video.status();
  EXPECT_EQ(video->plan.frame_indices.size(), static_cast<size_t>(cell->frames));
  EXPECT_EQ(video->grid[0], cell->groups);
  EXPECT_EQ(video->plan.num_tokens(), cell->visual_tokens);
  EXPECT_EQ(video->plan.resized.width, g.width);
  EXPECT_EQ(video->plan.timestamps[cell->needle_group], cell->needle_timestamp);

  // The needle is in its group's two frames and nowhere else; the rest is the haystack.
  auto reader = model::VideoReader::Open(out);
  ASSERT_TRUE(reader.ok());
  const model::ImageSize size{.height = g.height, .width = g.width};
  const model::Image needle_frame = model::ResizeBicubicAntialias(*needle, size);
  std::vector<model::Image> frames;
  std::vector<int64_t> all(cell->frames);
  for (int64_t i = 0; i < cell->frames; ++i) all[i] = i;
  ASSERT_TRUE((*reader)->ReadFrames(all, [&](size_t, const model::Image& f) {
    frames.push_back(f);
    return absl::OkStatus();
  }).ok());
  ASSERT_EQ(static_cast<int64_t>(frames.size()), cell->frames);
  for (int64_t i = 0; i < cell->frames; ++i) {
    const bool is_needle = i / 2 == cell->needle_group;
    const double d = MeanAbsDiff(frames[i], needle_frame);
    if (is_needle) {
      EXPECT_LT(d, 4.0) << "frame " << i;  // H.264 at crf 18
    } else {
      EXPECT_GT(d, 20.0) << "frame " << i;
    }
  }
  // Frame 0 is the haystack's first frame; frame 8 (4 s) is it again, looped.
  auto source = model::VideoReader::Open(haystack);
  ASSERT_TRUE(source.ok());
  model::Image first;
  ASSERT_TRUE((*source)->ReadFrames(std::vector<int64_t>{0}, [&](size_t, const model::Image& f) {
    first = model::ResizeBicubicAntialias(f, size);
    return absl::OkStatus();
  }).ok());
  EXPECT_LT(MeanAbsDiff(frames[0], first), 4.0);
  if (cell->needle_group != 4) EXPECT_LT(MeanAbsDiff(frames[8], first), 4.0);
}

TEST(NiahComposeTest, AMissingHaystackIsReported) {
  const Geometry g = *FitGeometry(320, 240, 48, 2.0, model::VisionProcessorConfig::VideoDefaults());
  auto cell = PlanCell(g, 4 * g.tokens_per_group(), 0.0);
  ASSERT_TRUE(cell.ok());
  const absl::Status st = ComposeCellVideo(testing::ScratchDir() + "/none.mp4", model::Image::Blank(8, 8), g, *cell,
                                           testing::ScratchDir() + "/x.mp4");
  EXPECT_EQ(st.code(), absl::StatusCode::kNotFound) << st;
}

}  // namespace
}  // namespace q3vl::cluster::niah
