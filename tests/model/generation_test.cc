// Generation: KV-cached decoding equals recomputing the whole prefix, batching does not change
// results, sampling is seeded and validated, and the KV cache reports exhaustion.
#include "model/generator.h"

#include "core/backend.h"
#include "gtest/gtest.h"
#include "launcher/eval_case.h"
#include "tests/test_util.h"

namespace q3vl::model {
namespace {

class GenerationTest : public ::testing::Test {
 protected:
  void SetUp() override {
    backend_ = *CreateBackend(BackendKind::kCpu);
    auto golden = launcher::ReadGoldenCase(testing::GoldenCaseDir("06_image_and_video"));
    ASSERT_TRUE(golden.ok()) << golden.status();
    golden_ = *golden;
    auto model = Qwen3VL::Load(golden_.dir + "/model", *backend_);
    ASSERT_TRUE(model.ok()) << model.status();
    model_ = std::move(*model);
  }
  std::unique_ptr<Backend> backend_;
  launcher::GoldenCase golden_;
  std::unique_ptr<Qwen3VL> model_;
};

TEST_F(GenerationTest, CachedDecodeEqualsFullRecompute) {
  Generator cached(*model_, {});
  auto with_cache = cached.Generate({golden_.request});
  ASSERT_TRUE(with_cache.ok()) << with_cache.status();
  // Recompute: feed prompt + tokens so far as one prefill and take the last row's argmax.
  Generator full(*model_, {.keep_prefill_logits = true});
  GenerationRequest r = golden_.request;
  r.sampling.max_new_tokens = 1;
  for (int64_t step = 0; step < 4; ++step) {
    auto out = full.Generate({r});
    ASSERT_TRUE(out.ok()) << out.status();
    EXPECT_EQ((*out)[0].tokens[0], (*with_cache)[0].tokens[step]) << "step " << step;
    r.input_ids.push_back((*with_cache)[0].tokens[step]);
  }
}

TEST_F(GenerationTest, BatchingDoesNotChangeResults) {
  Generator gen(*model_, {});
  GenerationRequest text;
  text.input_ids = {391, 300, 302, 10, 20, 30, 392, 302, 391, 301, 302};
  text.sampling.max_new_tokens = 7;
  auto alone = gen.Generate({golden_.request});
  auto text_alone = gen.Generate({text});
  auto together = gen.Generate({text, golden_.request, text});
  ASSERT_TRUE(alone.ok() && text_alone.ok() && together.ok());
  EXPECT_EQ((*together)[1].tokens, (*alone)[0].tokens);
  EXPECT_EQ((*together)[0].tokens, (*text_alone)[0].tokens);
  EXPECT_EQ((*together)[2].tokens, (*text_alone)[0].tokens);
}

TEST_F(GenerationTest, SamplingIsSeededAndStopsOnStopTokens) {
  Generator gen(*model_, {});
  GenerationRequest r = golden_.request;
  r.sampling = {.temperature = 1.5f, .top_k = 50, .top_p = 0.9f, .seed = 7, .max_new_tokens = 12};
  auto a = gen.Generate({r});
  auto b = gen.Generate({r});
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ((*a)[0].tokens, (*b)[0].tokens);
  EXPECT_EQ((*a)[0].finish_reason, "length");
  r.sampling.stop_tokens = {(*a)[0].tokens[2]};
  auto c = gen.Generate({r});
  ASSERT_TRUE(c.ok());
  EXPECT_EQ((*c)[0].finish_reason, "stop");
  EXPECT_LE((*c)[0].tokens.size(), 3u);
  EXPECT_EQ((*c)[0].tokens.back(), (*a)[0].tokens[2]);
}

TEST_F(GenerationTest, BadRequestsAreRejectedWithReasons) {
  Generator gen(*model_, {});
  GenerationRequest r = golden_.request;
  r.sampling.top_p = 0.0f;
  EXPECT_EQ(gen.Generate({r}).status().code(), absl::StatusCode::kInvalidArgument);
  r = golden_.request;
  r.input_ids.push_back(100000);
  EXPECT_NE(std::string(gen.Generate({r}).status().message()).find("outside the vocabulary"), std::string::npos);
  r = golden_.request;
  r.images.grids.clear();
  r.images.pixel_values = Tensor();
  EXPECT_NE(std::string(gen.Generate({r}).status().message()).find("placeholder"), std::string::npos);
  r = golden_.request;
  r.images.grids[0][1] = 6;
  EXPECT_FALSE(gen.Generate({r}).ok());
  Generator tiny(*model_, {.page_size = 16, .kv_pages = 2});
  EXPECT_EQ(tiny.Generate({golden_.request}).status().code(), absl::StatusCode::kResourceExhausted);
}

}  // namespace
}  // namespace q3vl::model
