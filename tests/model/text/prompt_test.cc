// Prompt expansion against the goldens: the prompt ids of every image case (png and jpg), every
// video case (transformers 4.57 and 5.x layouts) and every e2e request, rebuilt exactly from the
// messages and the recorded token counts and timestamps; equivalence with tokenizing the whole
// expanded text as HF does; count and timestamp errors. Golden case.json files are read from
// ../shared/golden/inputs; a missing one fails.
#include "model/text/prompt.h"

#include <filesystem>
#include <fstream>
#include <sstream>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "model/text/chat_template.h"
#include "nlohmann/json.hpp"
#include "tests/test_util.h"

namespace q3vl::model {
namespace {

using Json = nlohmann::ordered_json;
using ::testing::HasSubstr;

Json ReadGoldenJson(const std::string& rel) {
  const std::string path = std::string(Q3VL_SHARED_DIR) + "/golden/inputs/" + rel;
  std::ifstream in(path, std::ios::binary);
  EXPECT_TRUE(in.good()) << "missing golden input " << path;
  std::stringstream s;
  s << in.rdbuf();
  const Json json = Json::parse(s.str(), nullptr, /*allow_exceptions=*/false);
  EXPECT_TRUE(json.is_object()) << "cannot parse " << path;
  return json.is_object() ? json : Json::object();
}

RenderedChat RenderUserPrompt(const Json& messages, bool add_vision_id = false) {
  auto parsed = ParseChatMessages(messages);
  EXPECT_TRUE(parsed.ok()) << parsed.status();
  if (!parsed.ok()) return {};
  return RenderChat({.messages = *parsed, .add_generation_prompt = true, .add_vision_id = add_vision_id});
}

// grid (t, h, w) -> tokens after the 2x2 merge.
int64_t MergedTokens(const Json& grid) {
  return grid[0].get<int64_t>() * grid[1].get<int64_t>() * grid[2].get<int64_t>() / 4;
}

class PromptTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto tokenizer = Tokenizer::FromFile(testing::SourcePath("model/assets/qwen3/tokenizer.json"));
    ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
    tokenizer_ = new Tokenizer(std::move(*tokenizer));
  }
  static void TearDownTestSuite() { delete tokenizer_; }

  static std::vector<int32_t> Build(const PromptParts& parts) {
    auto ids = BuildPromptIds(*tokenizer_, parts);
    EXPECT_TRUE(ids.ok()) << ids.status();
    return ids.ok() ? *ids : std::vector<int32_t>();
  }

  // HF's processor on text: each placeholder replaced in order (the first remaining
  // <|image_pad|>; for a video the first whole triple in the 4.57 layout, else the first
  // <|video_pad|>), then the whole text tokenized.
  static std::vector<int32_t> NaiveExpandThenEncode(std::string text, const std::vector<ImagePlaceholder>& images,
                                                    const std::vector<VideoPlaceholder>& videos, VideoLayout layout) {
    const std::string triple = "<|vision_start|><|video_pad|><|vision_end|>";
    auto replace_first = [&text](const std::string& from, const std::string& to) {
      const size_t at = text.find(from);
      ASSERT_NE(at, std::string::npos) << from;
      text.replace(at, from.size(), to);
    };
    auto replace_all = [&text](const std::string& from, const std::string& to) {
      for (size_t at = text.find(from); at != std::string::npos; at = text.find(from, at + to.size())) {
        text.replace(at, from.size(), to);
      }
    };
    auto repeat = [](const std::string& s, int64_t n) {
      std::string out;
      for (int64_t i = 0; i < n; ++i) out += s;
      return out;
    };
    for (const ImagePlaceholder& image : images) {
      replace_first("<|image_pad|>", repeat("<|placeholder|>", image.num_tokens));
    }
    replace_all("<|placeholder|>", "<|image_pad|>");
    for (const VideoPlaceholder& video : videos) {
      std::string expansion;
      for (const std::string& t : video.timestamps) {
        expansion += t + "<|vision_start|>" + repeat("<|placeholder|>", video.tokens_per_group) + "<|vision_end|>";
      }
      const bool whole = layout == VideoLayout::kTransformers4_57 && text.find(triple) != std::string::npos;
      replace_first(whole ? triple : "<|video_pad|>", expansion);
    }
    replace_all("<|placeholder|>", "<|video_pad|>");
    return tokenizer_->Encode(text);
  }

  static Tokenizer* tokenizer_;
};

Tokenizer* PromptTest::tokenizer_ = nullptr;

TEST_F(PromptTest, EveryImageGoldenCase) {
  const std::vector<std::string> names = {"p01_100x100",   "p02_333x517",       "p03_400x17",
                                          "p04_640x480",   "p05_1000x1000",     "p06_1920x1080",
                                          "p07_720x405_exif6", "p08_3000x4000"};
  int passed = 0;
  for (const std::string& name : names) {
    const Json c = ReadGoldenJson("image/" + name + "/case.json");
    for (const char* fmt : {"png", "jpg"}) {
      const Json& v = c["variants"][fmt];
      ASSERT_TRUE(v.is_object()) << name << " " << fmt;
      const RenderedChat rendered = RenderUserPrompt(v["prompt_messages"]);
      const ImagePlaceholder image{.num_tokens = v["num_image_tokens"].get<int64_t>()};
      EXPECT_EQ(image.num_tokens, MergedTokens(v["image_grid_thw"])) << name;
      const std::vector<int32_t> ids = Build({.text = rendered.text, .images = {&image, 1}});
      EXPECT_EQ(ids, v["input_ids"].get<std::vector<int32_t>>()) << name << " " << fmt;
      passed += ids == v["input_ids"].get<std::vector<int32_t>>();
    }
  }
  EXPECT_EQ(passed, 16);
}

TEST_F(PromptTest, EveryVideoGoldenCaseInBothLayouts) {
  const std::vector<std::string> names = {"v1_testsrc2_320x240_24fps_4s", "v2_mandelbrot_250x170_30fps_75frames",
                                          "v3_movingbox_640x360_10fps_2s", "v4_testsrc_320x240_15fps_3s_vp9"};
  int passed = 0;
  for (const std::string& name : names) {
    const Json c = ReadGoldenJson("video/" + name + "/case.json");
    const RenderedChat rendered = RenderUserPrompt(c["prompt_messages"]);
    EXPECT_EQ(rendered.text, c["rendered_prompt"].get<std::string>()) << name;
    const VideoPlaceholder video{.timestamps = c["group_timestamp_strings"].get<std::vector<std::string>>(),
                                 .tokens_per_group = c["tokens_per_group"].get<int64_t>()};
    EXPECT_EQ(static_cast<int64_t>(video.timestamps.size()), c["video_grid_thw"][0].get<int64_t>()) << name;
    EXPECT_EQ(video.tokens_per_group * static_cast<int64_t>(video.timestamps.size()),
              MergedTokens(c["video_grid_thw"])) << name;
    const std::vector<int32_t> v4 = Build({.text = rendered.text, .videos = {&video, 1}});
    const std::vector<int32_t> v5 =
        Build({.text = rendered.text, .videos = {&video, 1}, .video_layout = VideoLayout::kTransformers5});
    EXPECT_EQ(v4, c["input_ids_4_57_layout"].get<std::vector<int32_t>>()) << name;
    EXPECT_EQ(v5, c["input_ids"].get<std::vector<int32_t>>()) << name;
    passed += v4 == c["input_ids_4_57_layout"].get<std::vector<int32_t>>();
    passed += v5 == c["input_ids"].get<std::vector<int32_t>>();
  }
  EXPECT_EQ(passed, 8);
}

TEST_F(PromptTest, EveryE2eRequest) {
  int passed = 0;
  for (const char* name : {"e01_text", "e02_image", "e03_video", "e04_image_video"}) {
    const Json c = ReadGoldenJson(std::string("e2e/") + name + "/case.json");
    const Json& expected = c["expected"];
    auto messages = ParseChatMessages(c["request"]["messages"]);
    ASSERT_TRUE(messages.ok()) << messages.status();
    const RenderedChat rendered = RenderChat(
        {.messages = *messages, .add_generation_prompt = c["request"]["apply_chat_template"]["add_generation_prompt"]});
    EXPECT_EQ(rendered.text, expected["prompt_text"].get<std::string>()) << name;
    std::vector<ImagePlaceholder> images;
    for (const Json& grid : expected["image_grid_thw"]) images.push_back({.num_tokens = MergedTokens(grid)});
    std::vector<VideoPlaceholder> videos;
    ASSERT_EQ(rendered.video_sources.size(), expected["video_grid_thw"].size()) << name;
    for (size_t i = 0; i < rendered.video_sources.size(); ++i) {
      // The timestamps are recorded with the video's own golden case: ../video/<case>/<file>.
      const std::string video_case = std::filesystem::path(rendered.video_sources[i]).parent_path().filename();
      const Json vc = ReadGoldenJson("video/" + video_case + "/case.json");
      const Json& grid = expected["video_grid_thw"][i];
      videos.push_back({.timestamps = vc["group_timestamp_strings"].get<std::vector<std::string>>(),
                        .tokens_per_group = grid[1].get<int64_t>() * grid[2].get<int64_t>() / 4});
      EXPECT_EQ(static_cast<int64_t>(videos.back().timestamps.size()), grid[0].get<int64_t>()) << name;
    }
    const std::vector<int32_t> v5 = Build(
        {.text = rendered.text, .images = images, .videos = videos, .video_layout = VideoLayout::kTransformers5});
    const std::vector<int32_t> v4 = Build({.text = rendered.text, .images = images, .videos = videos});
    // Without a video both layouts are the same prompt.
    const Json& ids_4_57 = expected.contains("transformers_4_57_layout")
                               ? expected["transformers_4_57_layout"]["input_ids"]
                               : expected["input_ids"];
    EXPECT_EQ(v5, expected["input_ids"].get<std::vector<int32_t>>()) << name;
    EXPECT_EQ(v4, ids_4_57.get<std::vector<int32_t>>()) << name;
    passed += v5 == expected["input_ids"].get<std::vector<int32_t>>() && v4 == ids_4_57.get<std::vector<int32_t>>();
  }
  EXPECT_EQ(passed, 4);
}

TEST_F(PromptTest, EqualsTokenizingTheWholeExpandedText) {
  // With vision ids the first timestamp joins "Video 1: " in one pre-token run.
  EXPECT_NE(tokenizer_->Encode("Video 1: <0.3 seconds>").size(),
            tokenizer_->Encode("Video 1: ").size() + tokenizer_->Encode("<0.3 seconds>").size());
  const RenderedChat rendered = RenderUserPrompt(Json::parse(R"([{"role": "user", "content": [
      {"type": "text", "text": "Look:"}, {"type": "image", "image": "a.png"}, {"type": "video", "video": "b.mp4"},
      {"type": "text", "text": "and"}, {"type": "video", "video": "c.mp4"}, {"type": "image", "image": "d.png"},
      {"type": "text", "text": " now <|video_pad|> x"}]}])"),
                                                 /*add_vision_id=*/true);
  const std::vector<ImagePlaceholder> images = {{.num_tokens = 3}, {.num_tokens = 1}};
  const std::vector<VideoPlaceholder> videos = {
      {.timestamps = {"<0.3 seconds>", "<1.6 seconds>"}, .tokens_per_group = 2},
      {.timestamps = {"<12.0 seconds>"}, .tokens_per_group = 4},
      {.timestamps = {"<0.5 seconds>", "<2 seconds>"}, .tokens_per_group = 1}};  // the literal one in the text
  for (VideoLayout layout : {VideoLayout::kTransformers4_57, VideoLayout::kTransformers5}) {
    EXPECT_EQ(Build({.text = rendered.text, .images = images, .videos = videos, .video_layout = layout}),
              NaiveExpandThenEncode(rendered.text, images, videos, layout));
  }
}

TEST_F(PromptTest, CountMismatchesAndBadPlaceholdersAreErrors) {
  const std::string one_image = "<|vision_start|><|image_pad|><|vision_end|>";
  const std::string two_images = one_image + "a" + one_image;
  const std::string one_video = "<|vision_start|><|video_pad|><|vision_end|>";
  const ImagePlaceholder image{.num_tokens = 4};
  const std::vector<ImagePlaceholder> three_images = {image, image, image};
  const VideoPlaceholder video{.timestamps = {"<0.3 seconds>"}, .tokens_per_group = 2};
  struct Case {
    PromptParts parts;
    std::string message;
  };
  const VideoPlaceholder no_groups{.tokens_per_group = 2};
  const VideoPlaceholder zero_tokens{.timestamps = {"<0.3 seconds>"}, .tokens_per_group = 0};
  const ImagePlaceholder no_tokens{.num_tokens = 0};
  const ImagePlaceholder huge{.num_tokens = int64_t{1} << 29};
  const std::vector<ImagePlaceholder> three_huge = {huge, huge, huge};
  const std::vector<Case> cases = {
      {{.text = two_images, .images = {&image, 1}},
       "the prompt has 2 <|image_pad|> placeholders but 1 images were given"},
      {{.text = two_images, .images = three_images}, "the prompt has 2 <|image_pad|> placeholders but 3 images"},
      {{.text = "no media", .videos = {&video, 1}}, "the prompt has 0 <|video_pad|> placeholders but 1 videos"},
      {{.text = one_video + one_video, .videos = {&video, 1}}, "the prompt has 2 <|video_pad|> placeholders but 1"},
      {{.text = one_video, .videos = {&no_groups, 1}}, "video 0: no frame groups"},
      {{.text = one_video, .videos = {&zero_tokens, 1}}, "video 0: tokens_per_group must be in [1, 2^30], got 0"},
      {{.text = "<|image_pad|>", .images = {&no_tokens, 1}}, "image 0: num_tokens must be in [1, 2^30], got 0"},
      {{.text = "<|image_pad|><|image_pad|><|image_pad|>", .images = three_huge}, "need 1610612736 tokens"},
  };
  for (const Case& c : cases) {
    const auto ids = BuildPromptIds(*tokenizer_, c.parts);
    ASSERT_FALSE(ids.ok()) << c.message;
    EXPECT_EQ(ids.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(ids.status().message()), HasSubstr(c.message));
  }
  for (const char* bad : {"0.3 seconds", "<0.3s>", "<.3 seconds>", "<1. seconds>", "<a seconds>", "< seconds>",
                          "<0.3 seconds><|image_pad|>", "<1.2.3 seconds>"}) {
    const VideoPlaceholder v{.timestamps = {"<0.3 seconds>", bad}, .tokens_per_group = 1};
    const auto ids = BuildPromptIds(*tokenizer_, {.text = one_video, .videos = {&v, 1}});
    ASSERT_FALSE(ids.ok()) << bad;
    EXPECT_THAT(std::string(ids.status().message()), HasSubstr("video 0, group 1: timestamp")) << bad;
  }
  // Plain text without media is just tokenized.
  EXPECT_EQ(Build({.text = "Hello!"}), tokenizer_->Encode("Hello!"));
}

}  // namespace
}  // namespace q3vl::model
