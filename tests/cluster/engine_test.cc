// The engine's request handling with a fake runner and an injected clock (no model, no sleeps):
// streamed text equals the decoded tokens and never splits a character, stop strings are cut
// out and never leak in a delta, stop tokens and ignore_eos, max_tokens, cancellation frees the
// request within one step, bad requests are refused before any work, timings and metrics follow
// the clock, and many threads can submit while the loop runs.
#include "cluster/engine/engine.h"

#include <omp.h>

#include <atomic>
#include <map>
#include <thread>

#include "core/cpu/compute_threads.h"
#include "gtest/gtest.h"
#include "tests/test_util.h"

namespace q3vl::cluster {
namespace {

class FakeClock : public Clock {
 public:
  absl::Time Now() const override {
    absl::MutexLock lock(&mu_);
    return now_;
  }
  void Advance(absl::Duration d) {
    absl::MutexLock lock(&mu_);
    now_ += d;
  }

 private:
  mutable absl::Mutex mu_;
  absl::Time now_ = absl::UnixEpoch();
};

// Generates a fixed script of tokens per request, one per sampled step; each step takes 10 ms
// of the fake clock.
class FakeRunner : public model::StepRunner {
 public:
  FakeRunner(std::vector<int64_t> script, FakeClock* clock) : script_(std::move(script)), clock_(clock) {}
  absl::Status Validate(const model::RunnerRequest& r) const override {
    return r.input_ids.empty() ? absl::InvalidArgumentError("empty prompt") : absl::OkStatus();
  }
  absl::Status Add(int64_t id, model::RunnerRequest r) override {
    generated_[id] = 0;
    return absl::OkStatus();
  }
  void Remove(int64_t id) override {
    generated_.erase(id);
    removed_.push_back(id);
  }
  absl::StatusOr<model::StepOutput> Execute(const model::StepPlan& plan) override {
    plans_.push_back(plan);
    if (clock_) clock_->Advance(absl::Milliseconds(10));
    model::StepOutput out;
    for (const model::StepSequence& s : plan.seqs) {
      model::SequenceOutput o;
      if (s.sample) o.token = script_[generated_.at(s.request)++ % script_.size()];
      out.seqs.push_back(o);
    }
    return out;
  }
  std::vector<int64_t> script_;
  FakeClock* clock_;
  std::map<int64_t, int64_t> generated_;
  std::vector<int64_t> removed_;
  std::vector<model::StepPlan> plans_;
};

bool ValidUtf8(const std::string& s) {
  for (size_t i = 0; i < s.size();) {
    const unsigned char c = s[i];
    const size_t n = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    if (n == 0 || i + n > s.size()) return false;
    for (size_t j = 1; j < n; ++j) {
      if ((static_cast<unsigned char>(s[i + j]) & 0xC0) != 0x80) return false;
    }
    i += n;
  }
  return true;
}

class EngineTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto tok = model::Tokenizer::FromFile(testing::SourcePath("model/assets/qwen3/tokenizer.json"));
    ASSERT_TRUE(tok.ok()) << tok.status();
    tokenizer_ = std::make_unique<model::Tokenizer>(std::move(*tok));
  }
  std::vector<int64_t> Ids(const std::string& text) {
    const std::vector<int32_t> ids = tokenizer_->Encode(text);
    return {ids.begin(), ids.end()};
  }
  EngineConfig Config(int64_t max_waiting = 0) {
    return {.scheduler = {.max_num_batched_tokens = 16, .max_num_seqs = 8, .page_size = 4, .num_pages = 64,
                          .max_model_len = 200},
            .eos_token_ids = {kEos},
            .max_waiting_requests = max_waiting};
  }
  EngineRequest Request(const std::string& id, int64_t max_tokens) {
    EngineRequest r{.id = id};
    r.input.input_ids = {1, 2, 3, 4, 5};
    r.input.sampling.max_new_tokens = max_tokens;
    return r;
  }
  static void RunUntilDone(Engine& engine, RequestStream& stream, std::vector<RequestOutput>* deltas) {
    for (int i = 0; i < 1000 && !stream.done(); ++i) {
      engine.Step();
      while (auto o = stream.Next(absl::ZeroDuration())) deltas->push_back(*o);
    }
  }
  static constexpr int64_t kEos = 151645;  // <|im_end|>
  std::unique_ptr<model::Tokenizer> tokenizer_;
};

TEST_F(EngineTest, StreamsWholeCharactersThatAddUpToTheDecodedTokens) {
  FakeRunner runner(Ids("Héllo wörld, 世界 🙂! Ünïcödé ok."), nullptr);
  Engine engine(runner, Config(), tokenizer_.get());
  auto stream = engine.Submit(Request("a", 40));
  ASSERT_TRUE(stream.ok()) << stream.status();
  std::vector<RequestOutput> deltas;
  RunUntilDone(engine, **stream, &deltas);
  ASSERT_FALSE(deltas.empty());
  std::string text;
  std::vector<int64_t> tokens;
  for (const RequestOutput& d : deltas) {
    EXPECT_TRUE(ValidUtf8(d.text)) << d.text;
    text += d.text;
    tokens.insert(tokens.end(), d.token_ids.begin(), d.token_ids.end());
  }
  EXPECT_EQ(tokens.size(), 40u);
  EXPECT_EQ(text, tokenizer_->Decode(std::vector<int32_t>(tokens.begin(), tokens.end())));
  EXPECT_EQ(deltas.back().finish, FinishReason::kLength);
  EXPECT_EQ(deltas.back().completion_tokens, 40);
  EXPECT_EQ(deltas.back().prompt_tokens, 5);
}

TEST_F(EngineTest, StopStringIsCutAndNeverStreamed) {
  FakeRunner runner(Ids("one two three STOP four five"), nullptr);
  Engine engine(runner, Config(), tokenizer_.get());
  EngineRequest r = Request("a", 50);
  r.stop = {"STOP", "never matches"};
  auto stream = engine.Submit(r);
  ASSERT_TRUE(stream.ok());
  std::vector<RequestOutput> deltas;
  RunUntilDone(engine, **stream, &deltas);
  std::string text;
  for (const RequestOutput& d : deltas) {
    EXPECT_EQ(d.text.find("ST"), std::string::npos) << "a partial stop string was streamed: " << d.text;
    text += d.text;
  }
  EXPECT_EQ(text, "one two three ");
  EXPECT_EQ(deltas.back().finish, FinishReason::kStop);
  EXPECT_EQ(deltas.back().stop_reason, "STOP");
}

TEST_F(EngineTest, StopsAtEosUnlessIgnored) {
  std::vector<int64_t> script = Ids("a b c");
  script.push_back(kEos);
  FakeRunner runner(script, nullptr);
  Engine engine(runner, Config(), tokenizer_.get());
  auto stopped = engine.Submit(Request("stops", 20));
  EngineRequest ignoring = Request("ignores", 20);
  ignoring.ignore_eos = true;
  auto ignored = engine.Submit(ignoring);
  ASSERT_TRUE(stopped.ok() && ignored.ok());
  std::vector<RequestOutput> a, b;
  for (int i = 0; i < 100 && !((*stopped)->done() && (*ignored)->done()); ++i) {
    engine.Step();
    while (auto o = (*stopped)->Next(absl::ZeroDuration())) a.push_back(*o);
    while (auto o = (*ignored)->Next(absl::ZeroDuration())) b.push_back(*o);
  }
  EXPECT_EQ(a.back().finish, FinishReason::kStop);
  EXPECT_EQ(a.back().completion_tokens, 4);
  EXPECT_EQ(a.back().token_ids.back(), kEos);
  EXPECT_EQ(b.back().finish, FinishReason::kLength);
  EXPECT_EQ(b.back().completion_tokens, 20);
}

TEST_F(EngineTest, CancelEndsTheRequestWithinOneStepAndFreesIt) {
  FakeRunner runner(Ids("x y z"), nullptr);
  Engine engine(runner, Config(), tokenizer_.get());
  auto keep = engine.Submit(Request("keep", 30));
  auto drop = engine.Submit(Request("drop", 30));
  ASSERT_TRUE(keep.ok() && drop.ok());
  for (int i = 0; i < 3; ++i) engine.Step();
  engine.Cancel("drop");
  engine.Cancel("no such request");
  engine.Step();
  RequestOutput dropped = Collect(**drop);
  EXPECT_EQ(dropped.finish, FinishReason::kAbort);
  EXPECT_EQ(dropped.completion_tokens, 3);
  ASSERT_FALSE(runner.removed_.empty());
  // The step after the cancellation no longer runs it and releases its pages.
  const model::StepPlan& last = runner.plans_.back();
  EXPECT_EQ(last.seqs.size(), 1u);
  EXPECT_EQ(last.released.size(), 1u);
  std::vector<RequestOutput> rest;
  RunUntilDone(engine, **keep, &rest);
  EXPECT_EQ(rest.back().finish, FinishReason::kLength);
  // The id can be used again once its request ended.
  EXPECT_TRUE(engine.Submit(Request("drop", 2)).ok());
}

TEST_F(EngineTest, RefusesBadRequestsBeforeAnyWork) {
  FakeRunner runner(Ids("x"), nullptr);
  Engine engine(runner, Config(/*max_waiting=*/2), tokenizer_.get());
  EXPECT_EQ(engine.Submit(Request("long", 196)).status().code(), absl::StatusCode::kInvalidArgument);
  EngineRequest empty = Request("empty", 4);
  empty.input.input_ids.clear();
  EXPECT_EQ(engine.Submit(empty).status().code(), absl::StatusCode::kInvalidArgument);
  EngineRequest bad_stop = Request("bad_stop", 4);
  bad_stop.stop = {""};
  EXPECT_EQ(engine.Submit(bad_stop).status().code(), absl::StatusCode::kInvalidArgument);
  ASSERT_TRUE(engine.Submit(Request("a", 4)).ok());
  EXPECT_EQ(engine.Submit(Request("a", 4)).status().code(), absl::StatusCode::kAlreadyExists);
  ASSERT_TRUE(engine.Submit(Request("b", 4)).ok());
  const absl::Status full = engine.Submit(Request("c", 4)).status();
  EXPECT_EQ(full.code(), absl::StatusCode::kResourceExhausted) << full;
  EXPECT_TRUE(runner.plans_.empty());
  engine.Step();  // the queue drains into the running set
  EXPECT_TRUE(engine.Submit(Request("c", 4)).ok());
}

TEST_F(EngineTest, TimingsAndMetricsFollowTheClock) {
  FakeClock clock;
  FakeRunner runner(Ids("p q r s"), &clock);
  Engine engine(runner, Config(), tokenizer_.get(), &clock);
  auto stream = engine.Submit(Request("a", 5));
  ASSERT_TRUE(stream.ok());
  clock.Advance(absl::Milliseconds(30));  // queued for 30 ms
  std::vector<RequestOutput> deltas;
  RunUntilDone(engine, **stream, &deltas);
  const RequestOutput& last = deltas.back();
  EXPECT_DOUBLE_EQ(last.queue_seconds, 0.030);
  EXPECT_DOUBLE_EQ(last.ttft_seconds, 0.040);  // + one 10 ms step
  EXPECT_DOUBLE_EQ(last.e2e_seconds, 0.080);   // + four decode steps
  const MetricsSnapshot m = engine.metrics().Snapshot();
  EXPECT_EQ(m.time_to_first_token.count, 1);
  EXPECT_EQ(m.inter_token_latency.count, 4);
  EXPECT_DOUBLE_EQ(m.inter_token_latency.sum, 0.040);
  EXPECT_EQ(m.request_success_total.at("length"), 1);
  EXPECT_EQ(m.prompt_tokens_total, 5);
  EXPECT_EQ(m.generation_tokens_total, 5);
  EXPECT_EQ(m.num_requests_running, 0);
  EXPECT_EQ(m.kv_cache_usage, 0.0);
}

TEST_F(EngineTest, ManyThreadsSubmitWhileTheLoopRuns) {
  FakeRunner runner(Ids("alpha beta gamma delta"), nullptr);
  Engine engine(runner, Config(), tokenizer_.get());
  engine.Start();
  std::vector<std::thread> clients;
  std::vector<RequestOutput> results(16);
  for (int c = 0; c < 4; ++c) {
    clients.emplace_back([&, c] {
      for (int i = 0; i < 4; ++i) {
        const int k = c * 4 + i;
        auto stream = engine.Submit(Request(absl::StrCat("r", k), 3 + k));
        ASSERT_TRUE(stream.ok()) << stream.status();
        results[k] = Collect(**stream);
      }
    });
  }
  for (std::thread& t : clients) t.join();
  engine.Shutdown();
  for (int k = 0; k < 16; ++k) {
    EXPECT_EQ(results[k].finish, FinishReason::kLength) << k;
    EXPECT_EQ(results[k].completion_tokens, 3 + k);
  }
  EXPECT_EQ(engine.Submit(Request("late", 3)).status().code(), absl::StatusCode::kUnavailable);
}

// The loop thread computes with the team size the process chose (SetComputeThreads), not
// libgomp's global default, which a std::thread would otherwise start from.
TEST_F(EngineTest, TheLoopComputesWithTheChosenThreads) {
  class TeamSizeRunner : public FakeRunner {
   public:
    using FakeRunner::FakeRunner;
    absl::StatusOr<model::StepOutput> Execute(const model::StepPlan& plan) override {
      team_size = omp_get_max_threads();
      return FakeRunner::Execute(plan);
    }
    std::atomic<int> team_size{-1};
  };
  const int before = omp_get_max_threads();
  SetComputeThreads(1);
  TeamSizeRunner runner(Ids("x"), nullptr);
  {
    Engine engine(runner, Config(), tokenizer_.get());
    engine.Start();
    auto stream = engine.Submit(Request("a", 2));
    ASSERT_TRUE(stream.ok());
    EXPECT_EQ(Collect(**stream).completion_tokens, 2);
  }
  SetComputeThreads(before);
  EXPECT_EQ(runner.team_size.load(), 1);
}

TEST_F(EngineTest, ShutdownAbortsLiveRequests) {
  FakeRunner runner(Ids("x"), nullptr);
  auto engine = std::make_unique<Engine>(runner, Config(), tokenizer_.get());
  auto stream = engine->Submit(Request("a", 50));
  ASSERT_TRUE(stream.ok());
  engine->Step();
  engine.reset();
  const RequestOutput out = Collect(**stream);
  EXPECT_EQ(out.finish, FinishReason::kAbort);
  EXPECT_EQ(out.error.code(), absl::StatusCode::kCancelled);
}

}  // namespace
}  // namespace q3vl::cluster
