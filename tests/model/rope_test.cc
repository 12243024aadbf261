// The text rotary's frequencies: the default theta^(-2j/d), and YaRN against a naive float32
// transcription of its formulas (Hugging Face's _compute_yarn_parameters, step by step), its
// attention scaling on cos and sin, and the M-RoPE tables built from them.
#include <cmath>
#include <vector>

#include "gtest/gtest.h"
#include "model/config.h"
#include "model/rope.h"

namespace q3vl::model {
namespace {

TextConfig Text(int64_t head_dim, double theta) {
  TextConfig t;
  t.head_dim = head_dim;
  t.rope_theta = theta;
  t.mrope_section = {head_dim / 2 - 2 * (head_dim * 5 / 32), head_dim * 5 / 32, head_dim * 5 / 32};
  return t;
}

// YaRN as its paper and the reference code state it, in float32 like the reference.
struct Naive {
  std::vector<float> inv_freq;
  float attention = 1;
};
Naive NaiveYarn(int64_t dim, float base, float factor, float original, float beta_fast = 32, float beta_slow = 1) {
  Naive out;
  out.attention = 0.1f * std::log(factor) + 1.0f;
  auto correction = [&](float rotations) {
    return (static_cast<float>(dim) * std::log(original / (rotations * 2.0f * static_cast<float>(M_PI)))) /
           (2.0f * std::log(base));
  };
  float low = std::max(std::floor(correction(beta_fast)), 0.0f);
  float high = std::min(std::ceil(correction(beta_slow)), static_cast<float>(dim - 1));
  if (low == high) high += 0.001f;
  for (int64_t i = 0; i < dim / 2; ++i) {
    const float pos = std::pow(base, static_cast<float>(2 * i) / static_cast<float>(dim));
    const float extra = 1.0f / pos, inter = 1.0f / (factor * pos);
    const float ramp = std::min(std::max((static_cast<float>(i) - low) / (high - low), 0.0f), 1.0f);
    const float extra_share = 1.0f - ramp;
    out.inv_freq.push_back(inter * (1.0f - extra_share) + extra * extra_share);
  }
  return out;
}

TEST(TextRopeTest, DefaultIsThetaPowers) {
  const TextConfig t = Text(16, 5e6);
  const TextRopeFrequencies f = TextRope(t);
  ASSERT_EQ(f.inv_freq.size(), 8u);
  EXPECT_FLOAT_EQ(f.inv_freq[0], 1.0f);
  EXPECT_FLOAT_EQ(f.inv_freq[3], static_cast<float>(std::pow(5e6, -6.0 / 16)));
  EXPECT_EQ(f.attention_scaling, 1.0f);
}

TEST(TextRopeTest, YarnMatchesANaiveComputation) {
  for (auto [dim, base, factor, original] : {std::tuple{16, 5e6, 4.0, 16}, std::tuple{128, 5e6, 4.0, 262144},
                                             std::tuple{128, 1e6, 8.0, 32768}, std::tuple{64, 1e4, 2.0, 4096}}) {
    TextConfig t = Text(dim, base);
    t.yarn = {.enabled = true, .factor = factor, .original_max_position_embeddings = original};
    const TextRopeFrequencies f = TextRope(t);
    const Naive n = NaiveYarn(dim, static_cast<float>(base), static_cast<float>(factor), static_cast<float>(original));
    ASSERT_EQ(f.inv_freq.size(), n.inv_freq.size());
    for (size_t i = 0; i < n.inv_freq.size(); ++i) {
      EXPECT_NEAR(f.inv_freq[i], n.inv_freq[i], 2e-6f * n.inv_freq[i]) << "dim " << dim << " i " << i;
    }
    EXPECT_NEAR(f.attention_scaling, n.attention, 1e-6f);
    // The fast dimensions keep their frequency, the slowest are divided by the factor.
    EXPECT_FLOAT_EQ(f.inv_freq[0], 1.0f);
    EXPECT_NEAR(f.inv_freq.back() * factor, std::pow(base, -(dim - 2.0) / dim), 1e-6 * std::pow(base, -(dim - 2.0) / dim))
        << dim;
  }
}

TEST(TextRopeTest, YarnAttentionFactorAndMscale) {
  TextConfig t = Text(32, 1e4);
  t.yarn = {.enabled = true, .factor = 8.0, .original_max_position_embeddings = 64, .attention_factor = 0.75};
  EXPECT_FLOAT_EQ(TextRope(t).attention_scaling, 0.75f);
  t.yarn.attention_factor = 0;
  t.yarn.mscale = 1.0;
  t.yarn.mscale_all_dim = 1.0;
  EXPECT_FLOAT_EQ(TextRope(t).attention_scaling, 1.0f);  // DeepSeek's form: the ratio cancels
  t.yarn.mscale_all_dim = 0.5;
  EXPECT_NEAR(TextRope(t).attention_scaling, (0.1 * std::log(8.0) + 1) / (0.05 * std::log(8.0) + 1), 1e-6);
}

TEST(TextRopeTest, TablesCarryTheAttentionScaling) {
  TextConfig t = Text(16, 5e6);
  const std::vector<int64_t> positions = {0, 7, 0, 7, 0, 7};  // t, h, w rows for 2 tokens
  const RopeTables plain = MropeTables(t, positions, 2);
  t.yarn = {.enabled = true, .factor = 4.0, .original_max_position_embeddings = 16};
  const RopeTables yarn = MropeTables(t, positions, 2);
  const float scale = TextRope(t).attention_scaling;
  EXPECT_GT(scale, 1.0f);
  // Position 0: angle 0 for every frequency, so cos is the scaling itself and sin is 0.
  for (int j = 0; j < 16; ++j) {
    EXPECT_FLOAT_EQ(yarn.cos.data<float>()[j], scale);
    EXPECT_FLOAT_EQ(yarn.sin.data<float>()[j], 0.0f);
    EXPECT_FLOAT_EQ(plain.cos.data<float>()[j], 1.0f);
  }
  // Position 7, dimension 0 (the fastest, not interpolated): the plain angle, scaled.
  EXPECT_NEAR(yarn.cos.data<float>()[16], scale * plain.cos.data<float>()[16], 1e-6);
}

}  // namespace
}  // namespace q3vl::model
