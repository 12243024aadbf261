// A NIAH cell's video through the serving path's own reader and processor: the frames, size,
// groups and tokens of the plan; the needle in exactly its group's two frames (pixels compared
// after H.264); the haystack looped when shorter than the cell.
#include <cmath>
#include <filesystem>

#include "cluster/niah/compose.h"
#include "gtest/gtest.h"
#include "model/config.h"
#include "model/processor.h"
#include "model/rope.h"
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
  auto video = model::LoadVideo(out, cell->VideoConfig(model::VisionProcessorConfig::VideoDefaults()));
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

// Through the chat template and get_rope_index as a request would go: the prompt carries the
// needle group's timestamp right before its tokens, and its M-RoPE positions are those of a
// one-frame grid placed after everything before it (Qwen3-VL splits a video into one grid per
// frame group; text advances one position a token, a group max(h, w) / merge).
TEST(NiahComposeTest, ThePromptCarriesTheNeedleGroupsTimestampAndPositions) {
  const std::string media = testing::TestDataDir() + "/media/";
  auto needle = model::DecodeImageFile(media + "shapes_333x517.jpg");
  ASSERT_TRUE(needle.ok());
  const Geometry g = *FitGeometry(320, 240, 48, 2.0, model::VisionProcessorConfig::VideoDefaults());
  auto cell = PlanCell(g, 12 * g.tokens_per_group(), 0.75);
  ASSERT_TRUE(cell.ok());
  const std::string out = testing::ScratchDir() + "/cell_rope.mp4";
  ASSERT_TRUE(ComposeCellVideo(media + "testsrc2_320x240_4s.mp4", *needle, g, *cell, out).ok());

  auto processor = model::Processor::Load(testing::E2eModelDir());
  ASSERT_TRUE(processor.ok()) << processor.status();
  auto config = model::ModelConfig::FromFile(testing::E2eModelDir() + "/config.json");
  ASSERT_TRUE(config.ok()) << config.status();
  model::ProcessOptions options;
  options.video_config = cell->VideoConfig(processor->video_config());
  const nlohmann::ordered_json messages = {
      {{"role", "user"}, {"content", {{{"type", "video"}, {"video", out}}, {{"type", "text"}, {"text", "When?"}}}}}};
  auto processed = processor->Process(messages, options);
  ASSERT_TRUE(processed.ok()) << processed.status();
  ASSERT_EQ(processed->videos.grids.size(), 1u);
  EXPECT_EQ(processed->videos.grids[0][0], cell->groups);

  const std::vector<int64_t>& ids = processed->input_ids;
  auto rope = model::GetRopeIndex({.input_ids = &ids, .image_grids = &processed->images.grids,
                                   .video_grids = &processed->videos.grids, .image_token_id = config->image_token_id,
                                   .video_token_id = config->video_token_id,
                                   .spatial_merge_size = config->vision.spatial_merge_size});
  ASSERT_TRUE(rope.ok()) << rope.status();
  const int64_t n = static_cast<int64_t>(ids.size());
  const int64_t m = config->vision.spatial_merge_size;
  const int64_t gh = processed->videos.grids[0][1] / m, gw = processed->videos.grids[0][2] / m;
  // Walk the prompt: the runs of video tokens are the frame groups, in order.
  int64_t expected = 0, group = 0, previous_end = 0;
  bool checked = false;
  for (int64_t i = 0; i < n;) {
    if (ids[i] != config->video_token_id) {
      ++expected;
      ++i;
      continue;
    }
    if (group == cell->needle_group) {
      // The text between the previous group and this one holds this group's timestamp.
      std::vector<int32_t> between(ids.begin() + previous_end, ids.begin() + i);
      EXPECT_NE(processor->tokenizer().Decode(between).find(cell->needle_timestamp), std::string::npos)
          << processor->tokenizer().Decode(between);
      for (int64_t k = 0; k < gh * gw; ++k) {
        EXPECT_EQ(rope->positions[0 * n + i + k], expected) << "t of token " << k;
        EXPECT_EQ(rope->positions[1 * n + i + k], expected + k / gw) << "h of token " << k;
        EXPECT_EQ(rope->positions[2 * n + i + k], expected + k % gw) << "w of token " << k;
      }
      checked = true;
    }
    expected += std::max(gh, gw);
    i += gh * gw;
    previous_end = i;
    ++group;
  }
  EXPECT_EQ(group, cell->groups);
  EXPECT_TRUE(checked);
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
