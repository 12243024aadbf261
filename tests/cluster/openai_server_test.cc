// OpenAiServer over an engine with a fake runner and a fake HTTP exchange (no sockets, no
// model): the SSE stream's shape, an error in the middle of a stream (an error event, then
// [DONE]) and of a plain request (500), and that a finished request's state is freed (nothing
// keeps its exchange alive).
#include "cluster/server/openai_server.h"

#include <atomic>
#include <thread>

#include "absl/synchronization/mutex.h"
#include "gtest/gtest.h"
#include "tests/test_util.h"

namespace q3vl::cluster::server {
namespace {

using Json = nlohmann::json;

// Emits token 9707 each sampled step; fails the whole step `fail_at` (1-based) when set.
class ScriptRunner : public model::StepRunner {
 public:
  explicit ScriptRunner(int fail_at = 0) : fail_at_(fail_at) {}
  absl::Status Validate(const model::RunnerRequest&) const override { return absl::OkStatus(); }
  absl::Status Add(int64_t, model::RunnerRequest) override { return absl::OkStatus(); }
  void Remove(int64_t) override {}
  absl::StatusOr<model::StepOutput> Execute(const model::StepPlan& plan) override {
    if (++steps_ == fail_at_) return absl::InternalError("the device fell over");
    model::StepOutput out;
    for (const model::StepSequence& s : plan.seqs) {
      model::SequenceOutput o;
      if (s.sample) o.token = 9707;
      out.seqs.push_back(o);
    }
    return out;
  }

 private:
  int fail_at_;
  int steps_ = 0;
};

// Records what the server answers; Run executes at once.
class FakeExchange : public HttpExchange {
 public:
  void Respond(int status, Headers headers, std::string body) override {
    absl::MutexLock lock(&mu);
    this->status = status;
    this->headers = std::move(headers);
    this->body = std::move(body);
    ended = true;
  }
  void StartStream(int status, Headers headers) override {
    absl::MutexLock lock(&mu);
    this->status = status;
    this->headers = std::move(headers);
  }
  void Send(std::string chunk) override {
    absl::MutexLock lock(&mu);
    body += chunk;
  }
  void End() override {
    absl::MutexLock lock(&mu);
    ended = true;
  }
  void OnClose(std::function<void()>) override {}
  void Run(std::function<void()> fn) override { fn(); }

  bool Ended() {
    absl::MutexLock lock(&mu);
    return ended;
  }
  absl::Mutex mu;
  int status = 0;
  Headers headers;
  std::string body;
  bool ended = false;
};

class OpenAiServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto p = model::Processor::Load(testing::SourcePath("model/assets/qwen3"));
    ASSERT_TRUE(p.ok()) << p.status();
    processor_ = std::make_unique<model::Processor>(*std::move(p));
  }

  // Serves one POST on `runner` and steps the engine on this thread until it is answered.
  std::shared_ptr<FakeExchange> Serve(model::StepRunner& runner, const Json& body) {
    Engine engine(runner, {.scheduler = {.max_num_batched_tokens = 64, .max_num_seqs = 4, .page_size = 16,
                                         .num_pages = 64, .max_model_len = 1024}},
                  &processor_->tokenizer());
    auto exchange = std::make_shared<FakeExchange>();
    {
      EngineBackend backend(engine);
      OpenAiServer server(backend, processor_->tokenizer(),
                          {.served_names = {"m"},
                           .prepare = {.processor = processor_.get(), .max_model_len = 1024, .max_seq_tokens = 1024}});
      server.SetReady();
      server.Handle({.method = "POST", .path = "/v1/chat/completions", .body = body.dump()}, exchange);
      for (int i = 0; i < 5000 && !exchange->Ended(); ++i) {
        if (!engine.Step()) absl::SleepFor(absl::Milliseconds(1));  // the request is being prepared
      }
      EXPECT_TRUE(exchange->Ended());
      EXPECT_EQ(server.in_flight(), 0);
    }
    return exchange;
  }

  static std::vector<Json> Events(const std::string& body, bool* done) {
    std::vector<Json> events;
    *done = false;
    for (size_t at = 0; at < body.size();) {
      const size_t end = body.find("\n\n", at);
      EXPECT_NE(end, std::string::npos) << "an unterminated event: " << body.substr(at);
      if (end == std::string::npos) break;
      const std::string event = body.substr(at, end - at);
      EXPECT_EQ(event.rfind("data: ", 0), 0u) << event;
      if (event == "data: [DONE]") {
        *done = true;
        EXPECT_EQ(end + 2, body.size()) << "events after [DONE]";
      } else {
        events.push_back(Json::parse(event.substr(6)));
      }
      at = end + 2;
    }
    return events;
  }

  std::unique_ptr<model::Processor> processor_;
};

const Json kChat = {{"messages", {{{"role", "user"}, {"content", "hi"}}}}, {"max_tokens", 4}, {"ignore_eos", true}};

TEST_F(OpenAiServerTest, StreamsChunksThenUsageThenDoneAndFreesTheRequest) {
  ScriptRunner runner;
  Json body = kChat;
  body["stream"] = true;
  body["stream_options"] = {{"include_usage", true}};
  const std::shared_ptr<FakeExchange> exchange = Serve(runner, body);
  EXPECT_EQ(exchange->status, 200);
  bool done = false;
  const std::vector<Json> events = Events(exchange->body, &done);
  EXPECT_TRUE(done);
  ASSERT_EQ(events.size(), 5u);  // 4 tokens, then the usage chunk
  EXPECT_EQ(events[0]["choices"][0]["delta"]["role"], "assistant");
  EXPECT_EQ(events[3]["choices"][0]["finish_reason"], "length");
  EXPECT_TRUE(events[0]["usage"].is_null());
  EXPECT_TRUE(events[4]["choices"].empty());
  EXPECT_EQ(events[4]["usage"]["completion_tokens"], 4);
  EXPECT_EQ(exchange.use_count(), 1) << "the finished request still holds its exchange";
}

TEST_F(OpenAiServerTest, AnErrorMidStreamIsAnErrorEventThenDone) {
  ScriptRunner runner(/*fail_at=*/3);
  Json body = kChat;
  body["stream"] = true;
  const std::shared_ptr<FakeExchange> exchange = Serve(runner, body);
  EXPECT_EQ(exchange->status, 200);  // the stream had started
  bool done = false;
  const std::vector<Json> events = Events(exchange->body, &done);
  EXPECT_TRUE(done);
  ASSERT_GE(events.size(), 2u);
  EXPECT_TRUE(events[0].contains("choices"));  // tokens of the steps before the failure
  EXPECT_EQ(events.back()["error"]["message"], "the device fell over");
  EXPECT_EQ(events.back()["error"]["type"], "internal_error");
  EXPECT_EQ(exchange.use_count(), 1);
}

TEST_F(OpenAiServerTest, AnErrorInAPlainRequestIsA500) {
  ScriptRunner runner(/*fail_at=*/2);
  const std::shared_ptr<FakeExchange> exchange = Serve(runner, kChat);
  EXPECT_EQ(exchange->status, 500);
  EXPECT_EQ(Json::parse(exchange->body)["error"]["message"], "the device fell over");
  EXPECT_EQ(exchange.use_count(), 1);
}

}  // namespace
}  // namespace q3vl::cluster::server
