// The OpenAI request parser and response shapes: what is accepted, what is refused (a 400
// naming the field), and the objects the official clients read.
#include "cluster/api/openai.h"

#include <fstream>
#include <sstream>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "model/text/tokenizer.h"
#include "tests/test_util.h"

namespace q3vl::cluster::api {
namespace {

Json Chat(Json extra = Json::object()) {
  Json body = {{"model", "m"}, {"messages", {{{"role", "user"}, {"content", "hi"}}}}};
  for (auto it = extra.begin(); it != extra.end(); ++it) body[it.key()] = *it;
  return body;
}

ApiError ErrorOf(Endpoint e, const Json& body) {
  auto r = ParseRequest(e, body);
  EXPECT_TRUE(std::holds_alternative<ApiError>(r)) << body.dump();
  return std::holds_alternative<ApiError>(r) ? std::get<ApiError>(r) : ApiError{};
}

TEST(OpenAiParseTest, ChatFieldsAreRead) {
  auto r = ParseRequest(Endpoint::kChatCompletions,
                        Chat({{"max_completion_tokens", 9}, {"temperature", 0.5}, {"top_p", 0.9}, {"top_k", -1},
                              {"seed", 3}, {"stop", "END"}, {"n", 2}, {"logprobs", true}, {"top_logprobs", 4},
                              {"stream", true}, {"stream_options", {{"include_usage", true}}}, {"min_tokens", 2},
                              {"ignore_eos", true}, {"frequency_penalty", 0}, {"user", "u1"}}));
  ASSERT_TRUE(std::holds_alternative<ApiRequest>(r)) << std::get<ApiError>(r).message;
  const ApiRequest& a = std::get<ApiRequest>(r);
  EXPECT_EQ(a.max_tokens, 9);
  EXPECT_FLOAT_EQ(a.temperature, 0.5f);
  EXPECT_EQ(a.top_k, 0);
  EXPECT_EQ(a.seed, 3u);
  EXPECT_EQ(a.stop, std::vector<std::string>{"END"});
  EXPECT_EQ(a.n, 2);
  EXPECT_EQ(a.top_logprobs, 4);
  EXPECT_TRUE(a.stream && a.include_usage && a.ignore_eos);
  EXPECT_EQ(a.min_tokens, 2);
}

TEST(OpenAiParseTest, RefusalsNameTheField) {
  const struct { Json extra; const char* param; } cases[] = {
      {{{"temperature", 3}}, "temperature"},
      {{{"top_p", 0}}, "top_p"},
      {{{"max_tokens", 0}}, "max_tokens"},
      {{{"max_tokens", "ten"}}, "max_tokens"},
      {{{"n", 0}}, "n"},
      {{{"top_logprobs", 2}}, "top_logprobs"},  // without logprobs
      {{{"logprobs", true}, {"top_logprobs", 21}}, "top_logprobs"},
      {{{"stop", {1, 2}}}, "stop"},
      {{{"stop", ""}}, "stop"},
      {{{"stream_options", {{"include_usage", true}}}}, "stream_options"},  // without stream
      {{{"presence_penalty", 0.5}}, "presence_penalty"},
      {{{"tools", {{{"type", "function"}}}}}, "tools"},
      {{{"response_format", {{"type", "json_object"}}}}, "response_format"},
      {{{"best_of_luck", 1}}, "best_of_luck"},
      {{{"min_tokens", 5}, {"max_tokens", 2}}, "min_tokens"},
      {{{"messages", Json::array()}}, "messages"},
      {{{"continue_final_message", true}}, "continue_final_message"},  // with add_generation_prompt's default
      {{{"add_generation_prompt", "no"}}, "add_generation_prompt"},
      {{{"prompt_logprobs", 5}}, "prompt_logprobs"},  // alternatives for prompt tokens
      {{{"prompt_logprobs", -1}}, "prompt_logprobs"},
      {{{"prompt_logprobs", 0}, {"stream", true}}, "prompt_logprobs"},
      {{{"prompt_logprobs_start", 3}}, "prompt_logprobs_start"},  // without prompt_logprobs
      {{{"prompt_logprobs", 0}, {"prompt_logprobs_start", 0}}, "prompt_logprobs_start"},
  };
  for (const auto& c : cases) {
    const ApiError e = ErrorOf(Endpoint::kChatCompletions, Chat(c.extra));
    EXPECT_EQ(e.status, 400) << c.extra.dump();
    EXPECT_EQ(e.param, c.param) << c.extra.dump() << ": " << e.message;
    EXPECT_NE(e.message.find(c.param), std::string::npos) << e.message;
  }
  EXPECT_EQ(ErrorOf(Endpoint::kChatCompletions, Json::array()).status, 400);
  EXPECT_EQ(ErrorOf(Endpoint::kChatCompletions, Json{{"model", "m"}}).param, "messages");
}

TEST(OpenAiParseTest, DefaultsSentExplicitlyAreAccepted) {
  auto r = ParseRequest(Endpoint::kChatCompletions,
                        Chat({{"presence_penalty", 0.0}, {"response_format", {{"type", "text"}}}, {"tools", Json::array()},
                              {"logit_bias", Json::object()}, {"temperature", nullptr}}));
  ASSERT_TRUE(std::holds_alternative<ApiRequest>(r)) << std::get<ApiError>(r).message;
  EXPECT_FLOAT_EQ(std::get<ApiRequest>(r).temperature, 1.0f);  // null: the default
}

TEST(OpenAiParseTest, CompletionsPromptForms) {
  auto text = ParseRequest(Endpoint::kCompletions, Json{{"prompt", {"once"}}});
  ASSERT_TRUE(std::holds_alternative<ApiRequest>(text));
  EXPECT_EQ(*std::get<ApiRequest>(text).prompt, "once");
  EXPECT_EQ(std::get<ApiRequest>(text).max_tokens, 16);  // the completions API's default
  auto ids = ParseRequest(Endpoint::kCompletions, Json{{"prompt", {1, 2, 3}}, {"logprobs", 2}});
  ASSERT_TRUE(std::holds_alternative<ApiRequest>(ids));
  EXPECT_EQ(std::get<ApiRequest>(ids).prompt_ids, (std::vector<int64_t>{1, 2, 3}));
  EXPECT_EQ(std::get<ApiRequest>(ids).top_logprobs, 2);
  EXPECT_EQ(ErrorOf(Endpoint::kCompletions, Json{{"prompt", {"a", "b"}}}).param, "prompt");
  EXPECT_EQ(ErrorOf(Endpoint::kCompletions, Json{{"prompt", "a"}, {"echo", true}}).param, "echo");
  EXPECT_EQ(ErrorOf(Endpoint::kCompletions, Json{{"prompt", "a"}, {"max_completion_tokens", 3}}).param,
            "max_completion_tokens");
}

TEST(OpenAiParseTest, EndpointsAndStatusMapping) {
  EXPECT_EQ(EndpointOf("/v1/chat/completions"), Endpoint::kChatCompletions);
  EXPECT_EQ(EndpointOf("/v1/completions"), Endpoint::kCompletions);
  EXPECT_FALSE(EndpointOf("/v1/embeddings"));
  EXPECT_EQ(FromStatus(absl::NotFoundError("x")).status, 400);
  EXPECT_EQ(FromStatus(absl::ResourceExhaustedError("x")).status, 429);
  EXPECT_EQ(FromStatus(absl::UnavailableError("x")).status, 503);
  EXPECT_EQ(FromStatus(absl::InternalError("x")).status, 500);
  const Json body = InvalidRequest("bad", "n").Body();
  EXPECT_EQ(body["error"]["message"], "bad");
  EXPECT_EQ(body["error"]["type"], "invalid_request_error");
  EXPECT_EQ(body["error"]["param"], "n");
  EXPECT_TRUE(body["error"]["code"].is_null());
}

class OpenAiPrepareTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto p = model::Processor::Load(testing::E2eModelDir());
    if (p.ok()) processor_ = new model::Processor(*std::move(p));
  }
  PrepareOptions Options(int64_t context, int64_t seq = 0) {
    return {.processor = processor_, .max_model_len = context, .max_seq_tokens = seq};
  }
  static model::Processor* processor_;
};
model::Processor* OpenAiPrepareTest::processor_ = nullptr;

TEST_F(OpenAiPrepareTest, LimitsNameTheNumbers) {
  ASSERT_NE(processor_, nullptr);
  ApiRequest r = std::get<ApiRequest>(ParseRequest(Endpoint::kChatCompletions, Chat({{"max_tokens", 100}})));
  auto over = Prepare(r, Options(50));
  ASSERT_TRUE(std::holds_alternative<ApiError>(over));
  EXPECT_EQ(std::get<ApiError>(over).param, "max_tokens");
  EXPECT_NE(std::get<ApiError>(over).message.find("50 tokens"), std::string::npos) << std::get<ApiError>(over).message;
  auto no_room = Prepare(r, Options(4));
  ASSERT_TRUE(std::holds_alternative<ApiError>(no_room));
  EXPECT_EQ(std::get<ApiError>(no_room).param, "input_tokens");
  auto kv = Prepare(r, Options(100000, 60));
  ASSERT_TRUE(std::holds_alternative<ApiError>(kv));
  EXPECT_NE(std::get<ApiError>(kv).message.find("KV cache"), std::string::npos);
  r.max_tokens.reset();  // default: the room left
  auto fits = Prepare(r, Options(100));
  ASSERT_TRUE(std::holds_alternative<PreparedRequest>(fits));
  const PreparedRequest& p = std::get<PreparedRequest>(fits);
  EXPECT_EQ(static_cast<int64_t>(p.input.input_ids.size()) + p.input.sampling.max_new_tokens, 100);
  EXPECT_FLOAT_EQ(p.input.sampling.temperature, 1.0f);
}

TEST_F(OpenAiPrepareTest, MediaOutsideTheAllowedDirectoriesIsRefused) {
  ASSERT_NE(processor_, nullptr);
  const std::string image = testing::TestDataDir() + "/media/shapes_333x517.jpg";
  Json messages = {{{"role", "user"}, {"content", {{{"type", "image_url"}, {"image_url", {{"url", image}}}}}}}};
  ApiRequest r = std::get<ApiRequest>(ParseRequest(Endpoint::kChatCompletions, Chat({{"messages", messages}})));
  PrepareOptions o = Options(100000);
  o.process.allowed_media_dirs = std::vector<std::string>{testing::ScratchDir()};
  auto refused = Prepare(r, o);
  ASSERT_TRUE(std::holds_alternative<ApiError>(refused));
  EXPECT_EQ(std::get<ApiError>(refused).status, 400);
  EXPECT_NE(std::get<ApiError>(refused).message.find("outside the allowed"), std::string::npos);
  o.process.allowed_media_dirs = std::vector<std::string>{testing::TestDataDir()};
  auto allowed = Prepare(r, o);
  ASSERT_TRUE(std::holds_alternative<PreparedRequest>(allowed)) << std::get<ApiError>(allowed).message;
  EXPECT_EQ(std::get<PreparedRequest>(allowed).input.images.grids.size(), 1u);
}

TEST_F(OpenAiPrepareTest, ImagesAndVideosFromDataUrls) {
  ASSERT_NE(processor_, nullptr);
  auto data_url = [](const std::string& path, const char* type) {
    std::ifstream in(path, std::ios::binary);
    std::stringstream bytes;
    bytes << in.rdbuf();
    return absl::StrCat("data:", type, ";base64,", absl::Base64Escape(bytes.str()));
  };
  const std::string media = testing::TestDataDir() + "/media/";
  Json content = {{{"type", "image_url"}, {"image_url", {{"url", data_url(media + "shapes_333x517.jpg", "image/jpeg")}}}},
                  {{"type", "video_url"}, {"video_url", {{"url", data_url(media + "testsrc2_320x240_4s.mp4", "video/mp4")}}}},
                  {{"type", "text"}, {"text", "both?"}}};
  ApiRequest r = std::get<ApiRequest>(ParseRequest(
      Endpoint::kChatCompletions, Chat({{"messages", {{{"role", "user"}, {"content", content}}}}})));
  PrepareOptions o = Options(100000);
  o.process.allowed_media_dirs = std::vector<std::string>{};  // no files at all: data URLs need none
  auto prepared = Prepare(r, o);
  ASSERT_TRUE(std::holds_alternative<PreparedRequest>(prepared)) << std::get<ApiError>(prepared).message;
  EXPECT_EQ(std::get<PreparedRequest>(prepared).input.images.grids.size(), 1u);
  EXPECT_EQ(std::get<PreparedRequest>(prepared).input.videos.grids.size(), 1u);
  // The same video as a file gives the same pixels.
  content[1]["video_url"]["url"] = media + "testsrc2_320x240_4s.mp4";
  r.messages = {{{"role", "user"}, {"content", content}}};
  auto from_file = Prepare(r, Options(100000));
  ASSERT_TRUE(std::holds_alternative<PreparedRequest>(from_file));
  EXPECT_EQ(testing::MaxAbsDiff(std::get<PreparedRequest>(from_file).input.videos.pixel_values,
                                std::get<PreparedRequest>(prepared).input.videos.pixel_values), 0.0f);
  // A video data URL that is not base64 is refused with a reason.
  content[1]["video_url"]["url"] = "data:video/mp4,rawbytes";
  r.messages = {{{"role", "user"}, {"content", content}}};
  auto bad = Prepare(r, Options(100000));
  ASSERT_TRUE(std::holds_alternative<ApiError>(bad));
  EXPECT_NE(std::get<ApiError>(bad).message.find("base64"), std::string::npos) << std::get<ApiError>(bad).message;
}

TEST(OpenAiParseTest, MmProcessorKwargsAreCheckedByName) {
  auto ok = ParseRequest(Endpoint::kChatCompletions,
                         Chat({{"mm_processor_kwargs", {{"fps", 1}, {"max_pixels", 1 << 20}, {"max_frames", 64}}}}));
  ASSERT_TRUE(std::holds_alternative<ApiRequest>(ok));
  const auto& kw = std::get<ApiRequest>(ok).mm_processor_kwargs;
  ASSERT_TRUE(kw.has_value());
  EXPECT_EQ(kw->fps, 1.0);
  EXPECT_EQ(kw->max_pixels, 1 << 20);
  EXPECT_EQ(kw->max_frames, 64);
  EXPECT_FALSE(kw->min_pixels.has_value());
  const ApiError unknown = ErrorOf(Endpoint::kChatCompletions, Chat({{"mm_processor_kwargs", {{"do_resize", false}}}}));
  EXPECT_EQ(unknown.param, "mm_processor_kwargs");
  EXPECT_NE(unknown.message.find("mm_processor_kwargs.do_resize is not supported"), std::string::npos) << unknown.message;
  EXPECT_EQ(ErrorOf(Endpoint::kChatCompletions, Chat({{"mm_processor_kwargs", {{"fps", 0}}}})).param,
            "mm_processor_kwargs.fps");
  EXPECT_EQ(ErrorOf(Endpoint::kChatCompletions, Chat({{"mm_processor_kwargs", {{"max_pixels", -5}}}})).param,
            "mm_processor_kwargs.max_pixels");
  EXPECT_EQ(ErrorOf(Endpoint::kChatCompletions, Chat({{"mm_processor_kwargs", 3}})).param, "mm_processor_kwargs");
  EXPECT_EQ(ErrorOf(Endpoint::kCompletions, {{"model", "m"}, {"prompt", "x"}, {"mm_processor_kwargs", {{"fps", 1}}}}).param,
            "mm_processor_kwargs");
}

TEST_F(OpenAiPrepareTest, MmProcessorKwargsChangeTheVideosProcessing) {
  ASSERT_NE(processor_, nullptr);
  const std::string video = testing::TestDataDir() + "/media/testsrc2_320x240_4s.mp4";
  const Json messages = {{{"role", "user"}, {"content", {{{"type", "video_url"}, {"video_url", {{"url", video}}}},
                                                         {{"type", "text"}, {"text", "what?"}}}}}};
  auto prepare = [&](Json kwargs, int64_t context = 100000) {
    Json body = Chat({{"messages", messages}});
    if (!kwargs.is_null()) body["mm_processor_kwargs"] = kwargs;
    return Prepare(std::get<ApiRequest>(ParseRequest(Endpoint::kChatCompletions, body)), Options(context));
  };
  auto plain = prepare(nullptr);
  ASSERT_TRUE(std::holds_alternative<PreparedRequest>(plain)) << std::get<ApiError>(plain).message;
  const model::GridThw base = std::get<PreparedRequest>(plain).input.videos.grids[0];
  // 1 fps instead of 2: half the frames of the 4 s clip, so half the temporal groups.
  auto slow = prepare({{"fps", 1}});
  ASSERT_TRUE(std::holds_alternative<PreparedRequest>(slow)) << std::get<ApiError>(slow).message;
  const model::GridThw half = std::get<PreparedRequest>(slow).input.videos.grids[0];
  EXPECT_EQ(half[0] * 2, base[0]);
  EXPECT_EQ(half[1], base[1]);
  // A smaller pixel budget over all frames: fewer patches per frame.
  auto small = prepare({{"max_pixels", 8 * 32 * 32 * 4}, {"min_pixels", 1024}});
  ASSERT_TRUE(std::holds_alternative<PreparedRequest>(small)) << std::get<ApiError>(small).message;
  const model::GridThw tight = std::get<PreparedRequest>(small).input.videos.grids[0];
  EXPECT_EQ(tight[0], base[0]);
  EXPECT_LT(tight[1] * tight[2], base[1] * base[2]);
  // Sampled frames (2 per temporal group) x the resized frame's pixels stay within the budget.
  EXPECT_LE((tight[0] * 2) * (tight[1] * 16) * (tight[2] * 16), 8 * 32 * 32 * 4);
  // A budget past the context is refused before any decoding, naming the numbers.
  auto huge = prepare({{"max_pixels", int64_t{1} << 40}}, 32768);
  ASSERT_TRUE(std::holds_alternative<ApiError>(huge));
  EXPECT_EQ(std::get<ApiError>(huge).param, "mm_processor_kwargs");
  EXPECT_NE(std::get<ApiError>(huge).message.find("maximum context length (32768)"), std::string::npos)
      << std::get<ApiError>(huge).message;
  // Kwargs that contradict each other or the model's config are a 400 with the reason.
  auto empty = prepare({{"min_pixels", 4096}, {"max_pixels", 1024}});
  ASSERT_TRUE(std::holds_alternative<ApiError>(empty));
  EXPECT_NE(std::get<ApiError>(empty).message.find("pixel budget"), std::string::npos) << std::get<ApiError>(empty).message;
}

TEST_F(OpenAiPrepareTest, ChoicesAndResponseShapes) {
  ASSERT_NE(processor_, nullptr);
  ApiRequest api = std::get<ApiRequest>(ParseRequest(
      Endpoint::kChatCompletions, Chat({{"n", 2}, {"seed", 5}, {"stop", "x"}, {"logprobs", true}, {"top_logprobs", 1}})));
  auto prepared = Prepare(api, Options(1000));
  ASSERT_TRUE(std::holds_alternative<PreparedRequest>(prepared));
  const std::vector<EngineRequest> choices = EngineRequests(std::get<PreparedRequest>(prepared), "abc");
  ASSERT_EQ(choices.size(), 2u);
  EXPECT_EQ(choices[0].id, "abc-0");
  EXPECT_EQ(choices[1].input.sampling.seed, 6u);
  EXPECT_EQ(choices[0].stop, std::vector<std::string>{"x"});

  const model::Tokenizer& tok = processor_->tokenizer();
  const int32_t hello = tok.Encode("Hello")[0];
  RequestOutput a{.token_ids = {hello}, .text = "Hello", .logprobs = {{.token = hello, .logprob = -0.5f, .top = {{hello, -0.5f}}}},
                  .finish = FinishReason::kStop, .stop_reason = "x", .prompt_tokens = 7, .cached_prompt_tokens = 4,
                  .completion_tokens = 1};
  RequestOutput b = a;
  b.finish = FinishReason::kLength;
  b.stop_reason.reset();
  const Json body = ResponseBody(api, "chatcmpl-1", 42, "served", {a, b}, tok);
  EXPECT_EQ(body["object"], "chat.completion");
  EXPECT_EQ(body["model"], "served");
  EXPECT_EQ(body["choices"][0]["message"]["content"], "Hello");
  EXPECT_EQ(body["choices"][0]["finish_reason"], "stop");
  EXPECT_EQ(body["choices"][0]["stop_reason"], "x");
  EXPECT_EQ(body["choices"][1]["finish_reason"], "length");
  EXPECT_EQ(body["choices"][0]["logprobs"]["content"][0]["token"], "Hello");
  EXPECT_EQ(body["choices"][0]["logprobs"]["content"][0]["top_logprobs"].size(), 1u);
  EXPECT_EQ(body["usage"]["prompt_tokens"], 7);
  EXPECT_EQ(body["usage"]["completion_tokens"], 2);
  EXPECT_EQ(body["usage"]["total_tokens"], 9);
  EXPECT_EQ(body["usage"]["prompt_tokens_details"]["cached_tokens"], 4);
  const Json usage = UsageChunk(api, "chatcmpl-1", 42, "served", 7, 4, 2);
  EXPECT_EQ(usage["usage"]["prompt_tokens_details"]["cached_tokens"], 4);
  EXPECT_TRUE(usage["choices"].empty());

  ApiRequest completion = std::get<ApiRequest>(ParseRequest(Endpoint::kCompletions, Json{{"prompt", "a"}, {"logprobs", 1}}));
  const Json text = ResponseBody(completion, "cmpl-1", 42, "served", {a}, tok);
  EXPECT_EQ(text["object"], "text_completion");
  EXPECT_EQ(text["choices"][0]["text"], "Hello");
  EXPECT_EQ(text["choices"][0]["logprobs"]["tokens"][0], "Hello");
  EXPECT_TRUE(text["choices"][0]["stop_reason"].is_null());  // "x" was not this request's stop string

  RequestOutput failed{.finish = FinishReason::kError, .error = absl::InternalError("boom")};
  ASSERT_TRUE(ChoiceError({a, failed}));
  EXPECT_EQ(ChoiceError({a, failed})->status, 500);
  EXPECT_FALSE(ChoiceError({a, b}));
}

// Scoring an answer: the conversation with the answer as an open assistant turn
// (continue_final_message), prompt_logprobs 0 from the answer's first token on; the positions
// before it are null (vLLM's shape: one entry per prompt token, {"<id>": {"logprob", ...}}).
TEST_F(OpenAiPrepareTest, PromptLogprobsOfAContinuedAssistantMessage) {
  ASSERT_NE(processor_, nullptr);
  const Json question = {{"role", "user"}, {"content", "What colour is the sky?"}};
  const Json answer = {{"role", "assistant"}, {"content", "Blue"}};
  ApiRequest ask = std::get<ApiRequest>(ParseRequest(Endpoint::kChatCompletions, Json{{"messages", {question}}}));
  const auto asked = Prepare(ask, Options(1000));
  ASSERT_TRUE(std::holds_alternative<PreparedRequest>(asked));
  const std::vector<int64_t>& asked_ids = std::get<PreparedRequest>(asked).input.input_ids;
  const int64_t start = static_cast<int64_t>(asked_ids.size());  // where the answer's tokens begin

  auto parsed = ParseRequest(Endpoint::kChatCompletions,
                             Json{{"messages", {question, answer}}, {"add_generation_prompt", false},
                                  {"continue_final_message", true}, {"max_tokens", 1}, {"prompt_logprobs", 0},
                                  {"prompt_logprobs_start", start}});
  ASSERT_TRUE(std::holds_alternative<ApiRequest>(parsed)) << std::get<ApiError>(parsed).message;
  const auto scored = Prepare(std::get<ApiRequest>(parsed), Options(1000));
  ASSERT_TRUE(std::holds_alternative<PreparedRequest>(scored)) << std::get<ApiError>(scored).message;
  const PreparedRequest& p = std::get<PreparedRequest>(scored);
  const std::vector<int64_t>& ids = p.input.input_ids;
  const model::Tokenizer& tok = processor_->tokenizer();
  ASSERT_GT(ids.size(), asked_ids.size());
  EXPECT_TRUE(std::equal(asked_ids.begin(), asked_ids.end(), ids.begin())) << "the asked prompt is a prefix";
  std::vector<int32_t> tail(ids.begin() + start, ids.end());
  EXPECT_EQ(tok.Decode(tail), "Blue") << "the answer's turn is open: no end of turn after it";
  EXPECT_TRUE(p.input.prompt_logprobs);
  EXPECT_EQ(p.input.prompt_logprobs_start, start);

  // The engine reports rows from start - 1 on: log p(ids[t]) for t = start, ...
  RequestOutput out{.token_ids = {ids[0]}, .first_prompt_row = start - 1, .finish = FinishReason::kLength,
                    .prompt_tokens = static_cast<int64_t>(ids.size()), .completion_tokens = 1};
  for (size_t t = start; t < ids.size(); ++t) out.prompt_logprobs.push_back(-0.25f * static_cast<float>(t - start + 1));
  const Json body = ResponseBody(p.api, "chatcmpl-2", 42, "served", {out}, tok);
  const Json& lp = body["prompt_logprobs"];
  ASSERT_EQ(lp.size(), ids.size());
  for (int64_t t = 0; t < start; ++t) EXPECT_TRUE(lp[t].is_null()) << t;
  for (size_t t = start; t < ids.size(); ++t) {
    const Json& entry = lp[t][absl::StrCat(ids[t])];
    EXPECT_FLOAT_EQ(entry["logprob"].get<float>(), -0.25f * static_cast<float>(t - start + 1)) << t;
    EXPECT_EQ(entry["decoded_token"], tok.Decode({static_cast<int32_t>(ids[t])})) << t;
  }

  // Refusals: a start past the prompt; a continued final message that is the user's.
  auto past = ParseRequest(Endpoint::kChatCompletions,
                           Json{{"messages", {question}}, {"prompt_logprobs", 0}, {"prompt_logprobs_start", 100000}});
  const auto refused = Prepare(std::get<ApiRequest>(past), Options(1000000));
  ASSERT_TRUE(std::holds_alternative<ApiError>(refused));
  EXPECT_EQ(std::get<ApiError>(refused).param, "prompt_logprobs_start");
  auto user_last = ParseRequest(Endpoint::kChatCompletions, Json{{"messages", {question}}, {"add_generation_prompt", false},
                                                                 {"continue_final_message", true}});
  const auto bad = Prepare(std::get<ApiRequest>(user_last), Options(1000));
  ASSERT_TRUE(std::holds_alternative<ApiError>(bad));
  EXPECT_EQ(std::get<ApiError>(bad).status, 400);
  EXPECT_NE(std::get<ApiError>(bad).message.find("assistant"), std::string::npos) << std::get<ApiError>(bad).message;
}

}  // namespace
}  // namespace q3vl::cluster::api
