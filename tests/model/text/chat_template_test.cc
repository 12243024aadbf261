// The chat template against transformers' renders (every case of chat_template/cases.json: text
// byte for byte and ids), the built-in template text against its asset copy, template detection
// in model directories, the template's edge rules, Python-style tojson, and clear errors for
// malformed messages.
#include "model/text/chat_template.h"

#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "model/text/tokenizer.h"
#include "nlohmann/json.hpp"
#include "tests/test_util.h"

namespace q3vl::model {
namespace {

using Json = nlohmann::ordered_json;
using ::testing::HasSubstr;

std::string ReadText(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  EXPECT_TRUE(in.good()) << "missing test input " << path;
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

void WriteText(const std::filesystem::path& path, const std::string& text) {
  std::ofstream(path, std::ios::binary) << text;
}

RenderedChat Render(const std::string& messages_json, bool add_generation_prompt = false,
                    bool add_vision_id = false) {
  auto messages = ParseChatMessages(Json::parse(messages_json));
  EXPECT_TRUE(messages.ok()) << messages.status();
  if (!messages.ok()) return {};
  return RenderChat({.messages = *std::move(messages),
                     .add_generation_prompt = add_generation_prompt,
                     .add_vision_id = add_vision_id});
}

TEST(ChatTemplateTest, EveryGoldenCaseGivesExactlyItsTextAndIds) {
  auto tokenizer = Tokenizer::FromFile(testing::SourcePath("model/assets/qwen3/tokenizer.json"));
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  const Json cases = Json::parse(ReadText(testing::TestDataDir() + "/inputs/chat_template/cases.json"));
  ASSERT_EQ(cases.size(), 16u);
  int passed = 0;
  for (const Json& c : cases) {
    const std::string name = c["name"].get<std::string>();
    auto messages = ParseChatMessages(c["messages"]);
    ASSERT_TRUE(messages.ok()) << name << ": " << messages.status();
    const Json& kwargs = c["kwargs"];
    auto tools = ParseChatTools(kwargs.contains("tools") ? kwargs["tools"] : Json());
    ASSERT_TRUE(tools.ok()) << name << ": " << tools.status();
    const RenderedChat rendered = RenderChat({.messages = *messages,
                                              .tools = *tools,
                                              .add_generation_prompt = kwargs.value("add_generation_prompt", false),
                                              .add_vision_id = kwargs.value("add_vision_id", false)});
    const std::vector<int32_t> ids = tokenizer->Encode(rendered.text);
    EXPECT_EQ(rendered.text, c["text"].get<std::string>()) << name;
    EXPECT_EQ(ids, c["ids"].get<std::vector<int32_t>>()) << name;
    passed += rendered.text == c["text"].get<std::string>() && ids == c["ids"].get<std::vector<int32_t>>();
  }
  EXPECT_EQ(passed, 16);
}

TEST(ChatTemplateTest, CollectsMediaSourcesInPromptOrder) {
  const Json cases = Json::parse(ReadText(testing::TestDataDir() + "/inputs/chat_template/cases.json"));
  std::map<std::string, RenderedChat> by_name;
  for (const Json& c : cases) {
    auto messages = ParseChatMessages(c["messages"]);
    ASSERT_TRUE(messages.ok()) << messages.status();
    by_name[c["name"].get<std::string>()] = RenderChat({.messages = *messages});
  }
  using Sources = std::vector<std::string>;
  EXPECT_EQ(by_name["image_video_with_vision_id"].image_sources,
            (Sources{"file:///data/images/cat.jpg", "/data/images/dog.png"}));
  EXPECT_EQ(by_name["image_video_with_vision_id"].video_sources, Sources{"/data/videos/clip.mp4"});
  EXPECT_EQ(by_name["openai_image_url_item"].image_sources, Sources{"https://example.com/a.png"});
  EXPECT_EQ(by_name["tool_responses_with_image"].image_sources,
            (Sources{"file:///data/images/cat.jpg", "/data/images/dog.png"}));
  // The system message's image is not rendered, so it is not an input either.
  EXPECT_TRUE(by_name["system_content_list"].image_sources.empty());
}

TEST(ChatTemplateTest, BuiltInTemplateIsTheAssetCopy) {
  const std::string asset = ReadText(testing::SourcePath("model/assets/qwen3_vl/chat_template.jinja"));
  EXPECT_EQ(asset.size(), 5292u);
  EXPECT_EQ(Qwen3VlChatTemplate(), asset);
  EXPECT_TRUE(CheckChatTemplate(asset, "asset").ok());
}

TEST(ChatTemplateTest, AcceptsModelDirectoriesWithTheQwen3VlTemplate) {
  // tokenizer_config.json only.
  EXPECT_TRUE(CheckModelChatTemplate(testing::SourcePath("model/assets/qwen3")).ok());
  // chat_template.json + tokenizer_config.json, as the official repos ship them.
  const absl::Status e2e = CheckModelChatTemplate(std::string(Q3VL_SHARED_DIR) + "/golden/inputs/e2e/model");
  EXPECT_TRUE(e2e.ok()) << e2e;
}

class ModelDirTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::path(::q3vl::testing::ScratchDir()) /
           ("chat_template_" + std::string(::testing::UnitTest::GetInstance()->current_test_info()->name()));
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  void WriteTemplateJson(const char* file, const nlohmann::json& value) {
    WriteText(dir_ / file, nlohmann::json{{"chat_template", value}}.dump());
  }

  std::filesystem::path dir_;
  const std::string builtin_{Qwen3VlChatTemplate()};
};

TEST_F(ModelDirTest, RefusesAnyOtherTemplate) {
  WriteText(dir_ / "chat_template.jinja", builtin_ + " ");
  const absl::Status status = CheckModelChatTemplate(dir_.string());
  EXPECT_EQ(status.code(), absl::StatusCode::kUnimplemented);
  EXPECT_THAT(std::string(status.message()),
              HasSubstr("unsupported chat template in " + (dir_ / "chat_template.jinja").string() +
                        ": only the Qwen3-VL Instruct template is built in"));
}

TEST_F(ModelDirTest, ChatTemplateFilesComeBeforeTokenizerConfig) {
  WriteTemplateJson("tokenizer_config.json", "{{ messages[0].content }}");
  EXPECT_EQ(CheckModelChatTemplate(dir_.string()).code(), absl::StatusCode::kUnimplemented);
  WriteTemplateJson("chat_template.json", builtin_);
  EXPECT_TRUE(CheckModelChatTemplate(dir_.string()).ok());
  WriteText(dir_ / "chat_template.jinja", "{{ messages }}");
  EXPECT_EQ(CheckModelChatTemplate(dir_.string()).code(), absl::StatusCode::kUnimplemented);
}

TEST_F(ModelDirTest, ReadsTheDefaultOfANamedTemplateList) {
  WriteTemplateJson("tokenizer_config.json",
                    nlohmann::json::array({{{"name", "tool_use"}, {"template", "x"}},
                                           {{"name", "default"}, {"template", builtin_}}}));
  EXPECT_TRUE(CheckModelChatTemplate(dir_.string()).ok());
  WriteTemplateJson("tokenizer_config.json", nlohmann::json::array({{{"name", "tool_use"}, {"template", "x"}}}));
  EXPECT_EQ(CheckModelChatTemplate(dir_.string()).code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(ModelDirTest, MissingOrBrokenTemplateIsAnError) {
  const absl::Status none = CheckModelChatTemplate(dir_.string());
  EXPECT_EQ(none.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(none.message()), HasSubstr("no chat template in " + dir_.string()));
  WriteText(dir_ / "tokenizer_config.json", "{\"bos_token\": null}");
  EXPECT_EQ(CheckModelChatTemplate(dir_.string()).code(), absl::StatusCode::kNotFound);
  WriteText(dir_ / "chat_template.json", "{not json");
  const absl::Status broken = CheckModelChatTemplate(dir_.string());
  EXPECT_EQ(broken.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(broken.message()), HasSubstr("chat_template.json: not a JSON object"));
}

TEST(ChatTemplateRulesTest, OnlyTheFirstMessageCanBeASystemMessage) {
  EXPECT_EQ(Render(R"([{"role": "user", "content": "a"}, {"role": "system", "content": "b"},
                       {"role": "user", "content": "c"}])").text,
            "<|im_start|>user\na<|im_end|>\n<|im_start|>user\nc<|im_end|>\n");
}

// transformers' continue_final_message: the rendered text with the final message's end of
// turn cut off, so the model continues the assistant's text (a scored answer, a prefill).
TEST(ChatTemplateRulesTest, ContinueFinalMessageLeavesTheAssistantTurnOpen) {
  auto messages = ParseChatMessages(Json::parse(R"([{"role": "user", "content": "Q?"},
                                                    {"role": "assistant", "content": "The answer is"}])"));
  ASSERT_TRUE(messages.ok()) << messages.status();
  ChatRequest request{.messages = *messages, .continue_final_message = true};
  EXPECT_TRUE(CheckContinueFinalMessage(request).ok());
  EXPECT_EQ(RenderChat(request).text, "<|im_start|>user\nQ?<|im_end|>\n<|im_start|>assistant\nThe answer is");
  request.continue_final_message = false;  // the closed turn, for comparison
  EXPECT_EQ(RenderChat(request).text,
            "<|im_start|>user\nQ?<|im_end|>\n<|im_start|>assistant\nThe answer is<|im_end|>\n");

  request.continue_final_message = true;
  request.add_generation_prompt = true;
  EXPECT_EQ(CheckContinueFinalMessage(request).code(), absl::StatusCode::kInvalidArgument);
  request.add_generation_prompt = false;
  request.messages.pop_back();  // the final message is the user's
  const absl::Status not_assistant = CheckContinueFinalMessage(request);
  EXPECT_EQ(not_assistant.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(not_assistant.message().find("assistant"), std::string::npos) << not_assistant;
}

TEST(ChatTemplateRulesTest, ToolMessagesShareOneUserTurn) {
  EXPECT_EQ(Render(R"([{"role": "tool", "content": "x"}, {"role": "tool", "content": [{"type": "text", "text": "y"}]},
                       {"role": "user", "content": "z"}])").text,
            "<|im_start|>user\n<tool_response>\nx\n</tool_response>\n<tool_response>\ny\n</tool_response>"
            "<|im_end|>\n<|im_start|>user\nz<|im_end|>\n");
}

TEST(ChatTemplateRulesTest, ToolCallsWithoutContentOrFunctionWrapper) {
  // Null content (OpenAI's form for a pure tool-call turn) renders like "": no leading newline.
  EXPECT_EQ(Render(R"([{"role": "assistant", "content": null,
                        "tool_calls": [{"name": "f", "arguments": {"b": 1, "a": [true, null]}}]}])").text,
            "<|im_start|>assistant\n<tool_call>\n{\"name\": \"f\", \"arguments\": {\"b\": 1, \"a\": [true, null]}}"
            "\n</tool_call><|im_end|>\n");
  // A non-empty content list is truthy even when none of its items is text.
  EXPECT_EQ(Render(R"([{"role": "assistant", "content": [{"type": "image", "image": "a.png"}],
                        "tool_calls": [{"function": {"name": "g", "arguments": "{}"}}]}])").text,
            "<|im_start|>assistant\n\n<tool_call>\n{\"name\": \"g\", \"arguments\": {}}\n</tool_call><|im_end|>\n");
  // An empty "function" is falsy: the call's own name and arguments are used.
  EXPECT_EQ(Render(R"([{"role": "assistant", "content": "ok",
                        "tool_calls": [{"function": {}, "name": "h", "arguments": "x"}]}])").text,
            "<|im_start|>assistant\nok\n<tool_call>\n{\"name\": \"h\", \"arguments\": x}\n</tool_call><|im_end|>\n");
}

TEST(ChatTemplateRulesTest, VisionIdsCountOnlyRenderedPictures) {
  const RenderedChat r = Render(R"([{"role": "system", "content": [{"type": "image", "image": "s.png"}]},
                                    {"role": "user", "content": [{"type": "image", "path": "u.png"},
                                                                 {"type": "video_url", "video_url": {"url": "v.mp4"}},
                                                                 {"image_url": "w.png"}]}])",
                                /*add_generation_prompt=*/true, /*add_vision_id=*/true);
  EXPECT_EQ(r.text,
            "<|im_start|>system\n<|im_end|>\n<|im_start|>user\n"
            "Picture 1: <|vision_start|><|image_pad|><|vision_end|>Video 1: <|vision_start|><|video_pad|><|vision_end|>"
            "Picture 2: <|vision_start|><|image_pad|><|vision_end|><|im_end|>\n<|im_start|>assistant\n");
  EXPECT_EQ(r.image_sources, (std::vector<std::string>{"u.png", "w.png"}));
  EXPECT_EQ(r.video_sources, (std::vector<std::string>{"v.mp4"}));
}

TEST(ChatTemplateRulesTest, ToJsonIsPythonJsonDumps) {
  // Expected text from Python 3: json.dumps(json.loads(input), ensure_ascii=False).
  const Json value = Json::parse(
      R"({"b": 1.5, "a": [1e-05, 1e16, 1e15, 0.0001, -0.0, 100.0, 3, 0.30000000000000004, 1.7976931348623157e308,
           5e-324, 123456789.123, 1e22, 12345678901234567890, -5, 2.5e-7],
          "s": "\u00e9\n\t\"\\\u0001\u007f/\ud83d\udc4b", "n": null, "t": true, "e": {}, "l": []})");
  EXPECT_EQ(PythonJsonDumps(value),
            "{\"b\": 1.5, \"a\": [1e-05, 1e+16, 1000000000000000.0, 0.0001, -0.0, 100.0, 3, 0.30000000000000004, "
            "1.7976931348623157e+308, 5e-324, 123456789.123, 1e+22, 12345678901234567890, -5, 2.5e-07], "
            "\"s\": \"\xc3\xa9\\n\\t\\\"\\\\\\u0001\x7f/\xf0\x9f\x91\x8b\", \"n\": null, \"t\": true, \"e\": {}, "
            "\"l\": []}");
}

TEST(ChatTemplateErrorsTest, BadMessagesNameTheirIndex) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {R"([])", "messages must be a non-empty list"},
      {R"({"role": "user"})", "messages must be a non-empty list"},
      {R"([3])", "messages[0]: message is a number, not an object"},
      {R"([{"content": "a"}])", "messages[0]: missing \"role\""},
      {R"([{"role": 1, "content": "a"}])", "messages[0]: \"role\" must be a string"},
      {R"([{"role": "user", "content": "a"}, {"role": "robot", "content": "b"}])",
       "messages[1]: unknown role \"robot\" (system, user, assistant or tool)"},
      {R"([{"role": "user"}])", "messages[0]: missing \"content\""},
      {R"([{"role": "tool", "content": null}])", "messages[0]: missing \"content\""},
      {R"([{"role": "user", "content": 5}])", "messages[0]: \"content\" must be a string or a list, got number"},
      {R"([{"role": "user", "content": ["hi"]}])", "messages[0].content[0]: content item is a string, not an object"},
      {R"([{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "image"}]}])",
       "messages[0].content[1]: image item without a source"},
      {R"([{"role": "user", "content": [{"type": "video"}]}])", "messages[0].content[0]: video item without a source"},
      {R"([{"role": "user", "content": [{"type": "image", "image": 7}]}])", "\"image\" must be a non-empty string"},
      {R"([{"role": "user", "content": [{"type": "image", "image": ""}]}])", "\"image\" must be a non-empty string"},
      {R"([{"role": "user", "content": [{"type": "image_url", "image_url": {"uri": "x"}}]}])",
       "\"image_url\" must be a non-empty string or {\"url\": string}, got object"},
      {R"([{"role": "user", "content": [{"type": "text"}]}])", "messages[0].content[0]: text item without \"text\""},
      {R"([{"role": "user", "content": [{"type": "text", "text": 3}]}])", "\"text\" must be a string, got number"},
      {R"([{"role": "user", "content": [{"type": "audio", "audio": "a.wav"}]}])",
       "unsupported content item type \"audio\""},
      {R"([{"role": "user", "content": [{"type": 2}]}])", "\"type\" must be a string"},
      {R"([{"role": "user", "content": [{}]}])", "content item has no \"type\" and no image, video or text key"},
      {R"([{"role": "assistant", "content": "", "tool_calls": {"name": "f"}}])",
       "messages[0]: \"tool_calls\" must be a list, got object"},
      {R"([{"role": "user", "content": "q"}, {"role": "assistant", "content": "",
           "tool_calls": [{"function": {"arguments": "{}"}}]}])",
       "messages[1].tool_calls[0]: tool call without a string \"name\""},
      {R"([{"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "f"}}]}])",
       "messages[0].tool_calls[0]: tool call without \"arguments\""},
      {R"([{"role": "assistant", "content": "", "tool_calls": [{"function": "f"}]}])",
       "\"function\" must be an object, got string"},
  };
  for (const auto& [json, message] : cases) {
    const auto parsed = ParseChatMessages(Json::parse(json));
    ASSERT_FALSE(parsed.ok()) << json;
    EXPECT_EQ(parsed.status().code(), absl::StatusCode::kInvalidArgument) << json;
    EXPECT_THAT(std::string(parsed.status().message()), HasSubstr(message)) << json;
  }
}

TEST(ChatTemplateErrorsTest, ToolsMustBeAList) {
  EXPECT_TRUE(ParseChatTools(Json()).ok());
  EXPECT_TRUE(ParseChatTools(Json::array())->empty());
  EXPECT_EQ(ParseChatTools(Json::object()).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace q3vl::model
