// Generation: KV-cached decoding equals recomputing the whole prefix, batching does not change
// results, sampling is seeded and validated, and the KV cache reports exhaustion.
#include "model/generator.h"

#include <algorithm>

#include "core/backend.h"
#include "gtest/gtest.h"
#include "launcher/eval_case.h"
#include "tests/device_sim_backend.h"
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

// On a backend whose memory the host may not touch, a batch of an image+video request and a
// sampled text request gives the CPU backend's logits and tokens bit for bit, and reads device
// memory on the host only for sampling: per forward step, each row's top-k candidates (values
// and ids, two copies of n x k); the MoE layers group their rows by expert on the device. Kept
// prefill logits are read whole instead, once.
TEST_F(GenerationTest, DeviceBackendMatchesCpuAndSyncsOnlyToSample) {
  testing::DeviceSimBackend sim;
  auto sim_model = Qwen3VL::Load(golden_.dir + "/model", sim);
  ASSERT_TRUE(sim_model.ok()) << sim_model.status();
  GenerationRequest sampled;
  sampled.input_ids = {391, 300, 302, 10, 20, 30, 392, 302, 391, 301, 302};
  sampled.sampling = {.temperature = 0.8f, .top_k = 20, .top_p = 0.9f, .seed = 7, .max_new_tokens = 9};
  const std::vector<GenerationRequest> batch = {golden_.request, sampled};
  for (bool keep_logits : {true, false}) {
    Generator cpu(*model_, {.keep_prefill_logits = keep_logits});
    Generator dev(**sim_model, {.keep_prefill_logits = keep_logits});
    auto want = cpu.Generate(batch);
    const int64_t downloads_before = sim.downloads(), bytes_before = sim.download_bytes();
    auto got = dev.Generate(batch);
    ASSERT_TRUE(want.ok() && got.ok()) << want.status() << " / " << got.status();
    for (size_t i = 0; i < batch.size(); ++i) {
      EXPECT_EQ((*got)[i].tokens, (*want)[i].tokens) << "request " << i;
      if (keep_logits) {
        EXPECT_EQ(testing::MaxAbsDiff((*got)[i].prefill_logits, (*want)[i].prefill_logits), 0.0f);
      }
    }
    const int64_t decode_steps = dev.stats().decode_steps;
    if (keep_logits) {
      EXPECT_EQ(sim.downloads() - downloads_before, 1 + 2 * decode_steps);
    } else {
      EXPECT_EQ(sim.downloads() - downloads_before, 2 * (1 + decode_steps));
      // At most 2 rows x 20 candidates x (f32 value + i32 id) per step.
      EXPECT_LE(sim.download_bytes() - bytes_before, (1 + decode_steps) * 2 * 20 * 8);
    }
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

// Vocab-parallel sampling: the union of each chunk's top-k, sampled by SampleCandidates, draws
// exactly what Sample draws on the full row (same Rng state), ties included.
TEST(SamplerTest, CandidatesFromChunksDrawLikeTheFullRow) {
  constexpr int64_t kVocab = 1000, kChunks = 4;
  for (uint32_t seed = 0; seed < 20; ++seed) {
    Tensor row = testing::RandomTensor({kVocab}, seed, 3.0f);
    float* logits = row.data<float>();
    for (int64_t i = 0; i < kVocab; i += 97) logits[i] = 2.5f;  // ties across chunks
    for (const SamplingParams& sp : {SamplingParams{}, SamplingParams{.temperature = 0.7f, .top_k = 30},
                                     SamplingParams{.temperature = 1.3f, .top_k = 5, .top_p = 0.6f}}) {
      const int64_t k = sp.temperature == 0.0f ? 1 : sp.top_k;
      std::vector<float> cand_logit;
      std::vector<int64_t> cand_id;
      for (int64_t c = 0; c < kChunks; ++c) {  // each chunk's top k, any order
        std::vector<int64_t> ids;
        for (int64_t i = c * kVocab / kChunks; i < (c + 1) * kVocab / kChunks; ++i) ids.push_back(i);
        std::partial_sort(ids.begin(), ids.begin() + k, ids.end(), [&](int64_t a, int64_t b) {
          return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
        });
        for (int64_t j = k - 1; j >= 0; --j) cand_logit.push_back(logits[ids[j]]), cand_id.push_back(ids[j]);
      }
      Rng full(seed), parts(seed);
      for (int draw = 0; draw < 5; ++draw) {
        EXPECT_EQ(SampleCandidates(cand_logit.data(), cand_id.data(), static_cast<int64_t>(cand_id.size()), sp, parts),
                  Sample(logits, kVocab, sp, full))
            << "seed " << seed << " top_k " << sp.top_k;
      }
    }
  }
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
