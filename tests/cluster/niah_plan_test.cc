// The geometry of long-video NIAH cells: target lengths land within one frame group, the
// processor (model::PlanVideo, SampleFrameIndices) keeps the composed video's frames and size,
// the needle fills the intended group at the intended time and timestamp, and the inputs that
// cannot work are refused with the numbers.
#include "cluster/niah/plan.h"

#include <algorithm>
#include <cmath>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "model/media/video_processor.h"

namespace q3vl::cluster::niah {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

model::VisionProcessorConfig Video() { return model::VisionProcessorConfig::VideoDefaults(); }

TEST(NiahPlanTest, FitGeometryKeepsTheAspectWithinTheBudget) {
  auto wide = FitGeometry(1920, 1080, 256, 2.0, Video());
  ASSERT_TRUE(wide.ok()) << wide.status();
  EXPECT_EQ(wide->width % 32, 0);
  EXPECT_EQ(wide->height % 32, 0);
  EXPECT_LE(wide->tokens_per_group(), 256);
  EXPECT_GE(wide->tokens_per_group(), 200);  // close to the budget
  EXPECT_NEAR(static_cast<double>(wide->width) / wide->height, 16.0 / 9.0, 0.15);
  auto square = FitGeometry(640, 640, 196, 2.0, Video());
  ASSERT_TRUE(square.ok());
  EXPECT_EQ(square->width, 448);
  EXPECT_EQ(square->height, 448);
}

TEST(NiahPlanTest, LengthsLandWithinOneFrameGroupAndTheProcessorAgrees) {
  const Geometry g = *FitGeometry(1280, 720, 256, 2.0, Video());
  for (int64_t target : {8192, 32768, 131072, 262144, 1048576}) {
    auto cell = PlanCell(g, target, 0.5);
    ASSERT_TRUE(cell.ok()) << target << ": " << cell.status();
    EXPECT_LE(std::abs(cell->visual_tokens - target), g.tokens_per_group() / 2 + 1) << target;
    EXPECT_EQ(cell->visual_tokens, cell->groups * g.tokens_per_group());
    EXPECT_EQ(cell->frames, 2 * cell->groups);
    EXPECT_DOUBLE_EQ(cell->duration_s, cell->frames / 2.0);
    // The request's processor settings keep every frame and the frame size.
    const model::VisionProcessorConfig c = cell->VideoConfig(Video());
    auto plan = model::PlanVideo({.num_frames = cell->frames, .fps = 2.0, .height = g.height, .width = g.width}, c);
    ASSERT_TRUE(plan.ok());
    EXPECT_EQ(plan->num_tokens(), cell->visual_tokens);
    EXPECT_EQ(plan->resized.width, g.width);
  }
}

TEST(NiahPlanTest, TheNeedleFillsTheGroupAtItsDepthAndTimestamp) {
  const Geometry g = *FitGeometry(640, 480, 192, 2.0, Video());
  auto first = PlanCell(g, 20 * g.tokens_per_group(), 0.0);
  auto last = PlanCell(g, 20 * g.tokens_per_group(), 1.0);
  auto middle = PlanCell(g, 21 * g.tokens_per_group(), 0.5);
  ASSERT_TRUE(first.ok() && last.ok() && middle.ok());
  EXPECT_EQ(first->needle_group, 0);
  EXPECT_EQ(last->needle_group, 19);
  EXPECT_EQ(middle->needle_group, 10);
  for (const CellPlan& cell : {*first, *last, *middle}) {
    // Both frames of the needle's group are sampled, and they are that group's.
    const model::VisionProcessorConfig c = cell.VideoConfig(Video());
    const std::vector<int64_t> sampled = model::SampleFrameIndices(cell.frames, 2.0, c);
    ASSERT_EQ(static_cast<int64_t>(sampled.size()), cell.frames);
    EXPECT_EQ(sampled[2 * cell.needle_group], cell.needle_first_frame);
    EXPECT_EQ(sampled[2 * cell.needle_group + 1], cell.needle_first_frame + 1);
    // Its timestamp: the mean of its two frames' times, as the prompt prints it.
    const double t = (cell.needle_first_frame / 2.0 + (cell.needle_first_frame + 1) / 2.0) / 2.0;
    EXPECT_EQ(cell.needle_timestamp, model::FormatTimestamp(t));
    EXPECT_DOUBLE_EQ(cell.needle_start_s, cell.needle_first_frame / 2.0);
  }
  EXPECT_EQ(middle->needle_timestamp, "<10.2 seconds>");  // frames 20, 21 at 10.0 s and 10.5 s: 10.25
}

TEST(NiahPlanTest, RefusesWhatCannotWork) {
  Geometry g{.width = 450, .height = 448, .video = Video()};
  EXPECT_THAT(PlanCell(g, 8192, 0.5).status().message(), HasSubstr("not a multiple of 32"));
  g.width = 448;
  EXPECT_THAT(PlanCell(g, 8192, 1.5).status().message(), HasSubstr("depth 1.5 is not in [0, 1]"));
  EXPECT_FALSE(PlanCell(g, 0, 0.5).ok());
  g.fps = 0;
  EXPECT_FALSE(PlanCell(g, 8192, 0.5).ok());
  EXPECT_FALSE(FitGeometry(0, 10, 100, 2.0, Video()).ok());
}

TEST(NiahPlanTest, LengthsAndDepthsAsUsersWriteThem) {
  EXPECT_THAT(*ParseLengths("8k,32k, 128K,256k,1m,3000"), ElementsAre(8192, 32768, 131072, 262144, 1048576, 3000));
  EXPECT_THAT(ParseLengths("8k,big").status().message(), HasSubstr("\"big\""));
  EXPECT_FALSE(ParseLengths("").ok());
  EXPECT_FALSE(ParseLengths("-5").ok());
  const std::vector<double> d = *ParseDepths("0:1:0.1");
  ASSERT_EQ(d.size(), 11u);
  EXPECT_DOUBLE_EQ(d.front(), 0.0);
  EXPECT_DOUBLE_EQ(d.back(), 1.0);
  EXPECT_NEAR(d[3], 0.3, 1e-12);
  EXPECT_THAT(*ParseDepths("0.25, 0.75"), ElementsAre(0.25, 0.75));
  EXPECT_THAT(ParseDepths("0:2:0.5").status().message(), HasSubstr("not in [0, 1]"));
  EXPECT_FALSE(ParseDepths("1:0:0.1").ok());
  EXPECT_FALSE(ParseDepths("0:1:0").ok());
}

}  // namespace
}  // namespace q3vl::cluster::niah
