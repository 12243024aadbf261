// End-to-end against golden/inputs/e2e: chat messages with images and videos -> Processor ->
// Generator on the tiny real-vocabulary checkpoint. Prompt ids and 16 greedy tokens must equal
// the reference in both video layouts (4.57 / vLLM and transformers 5), and the decoded text too.
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include "core/backend.h"
#include "gtest/gtest.h"
#include "model/generator.h"
#include "model/processor.h"
#include "nlohmann/json.hpp"
#include "tests/test_util.h"

namespace q3vl::model {
namespace {

namespace fs = std::filesystem;

using ::q3vl::testing::E2eDir;

nlohmann::ordered_json ReadJson(const std::string& path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return nlohmann::ordered_json::parse(text.str(), nullptr, false);
}

std::string ModelDir() { return testing::E2eModelDir(); }

class E2eTest : public ::testing::TestWithParam<std::string> {};

TEST_P(E2eTest, PromptIdsAndGreedyTokensMatchReference) {
  const nlohmann::ordered_json c = ReadJson(E2eDir() + "/" + GetParam() + "/case.json");
  ASSERT_TRUE(c.is_object()) << "missing or unreadable case " << GetParam();
  const auto& expected = c["expected"];
  auto processor = Processor::Load(ModelDir());
  ASSERT_TRUE(processor.ok()) << processor.status();
  auto backend = CreateBackend(BackendKind::kCpu);
  ASSERT_TRUE(backend.ok());
  auto model = Qwen3VL::Load(ModelDir(), **backend);
  ASSERT_TRUE(model.ok()) << model.status();

  struct Layout {
    VideoLayout layout;
    const nlohmann::ordered_json* reference;
  };
  std::vector<Layout> layouts = {{VideoLayout::kTransformers5, &expected}};
  if (expected.contains("transformers_4_57_layout")) {
    layouts.push_back({VideoLayout::kTransformers4_57, &expected["transformers_4_57_layout"]});
  }
  for (const Layout& l : layouts) {
    SCOPED_TRACE(l.layout == VideoLayout::kTransformers4_57 ? "4.57 layout" : "transformers 5 layout");
    auto request = processor->Process(c["request"]["messages"],
                                      {.video_layout = l.layout, .media_root = E2eDir()});
    ASSERT_TRUE(request.ok()) << request.status();
    EXPECT_EQ(request->prompt_text, expected["prompt_text"].get<std::string>());
    ASSERT_EQ(request->input_ids, (*l.reference)["input_ids"].get<std::vector<int64_t>>());
    GenerationRequest g{.input_ids = request->input_ids, .images = request->images,
                        .videos = request->videos};
    g.sampling.max_new_tokens = 16;  // greedy, EOS does not stop (as the reference ran)
    Generator generator(**model, {});
    auto results = generator.Generate({g});
    ASSERT_TRUE(results.ok()) << results.status();
    // Every reference margin is >= 0.014, three orders above our logit error (~1e-5).
    const auto want = (*l.reference)["generated_ids"].get<std::vector<int64_t>>();
    EXPECT_EQ((*results)[0].tokens, want);
    const std::vector<int32_t> ids(want.begin(), want.end());
    EXPECT_EQ(processor->tokenizer().Decode(ids), (*l.reference)["generated_text"].get<std::string>());
  }
}

INSTANTIATE_TEST_SUITE_P(Cases, E2eTest,
                         ::testing::Values("e01_text", "e02_image", "e03_video", "e04_image_video"));

TEST(ProcessorTest, BadRequestsNameTheProblem) {
  auto processor = Processor::Load(ModelDir());
  ASSERT_TRUE(processor.ok()) << processor.status();
  auto missing = processor->Process(
      nlohmann::ordered_json::parse(R"([{"role": "user", "content": [{"type": "image", "image": "/nonexistent.png"}]}])"),
      {});
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(std::string(missing.status().message()).find("/nonexistent.png"), std::string::npos) << missing.status();
  auto bad_role = processor->Process(nlohmann::ordered_json::parse(R"([{"role": "robot", "content": "hi"}])"), {});
  ASSERT_FALSE(bad_role.ok());
  EXPECT_NE(std::string(bad_role.status().message()).find("messages[0]"), std::string::npos) << bad_role.status();
  EXPECT_FALSE(Processor::Load("/nonexistent_model_dir").ok());
  nlohmann::ordered_json bad_text =
      nlohmann::ordered_json::parse(R"([{"role": "user", "content": [{"type": "text", "text": ""}]}])");
  bad_text[0]["content"][0]["text"] = std::string("caf\xc3 au lait");  // a truncated UTF-8 sequence
  auto invalid = processor->Process(bad_text, {});
  ASSERT_FALSE(invalid.ok());
  EXPECT_NE(std::string(invalid.status().message()).find("messages[0].content[0].text: text is not valid UTF-8"),
            std::string::npos)
      << invalid.status();
}

}  // namespace
}  // namespace q3vl::model
