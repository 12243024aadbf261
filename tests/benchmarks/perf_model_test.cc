// The perf_model program as users run it: valid JSON whose predictions obey the arithmetic it
// claims (monotone in batch and context, replicas independent, weights adding up to the model),
// meshes the runtime would reject listed with the reason, and bad flags refused.
#include <string>

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/test_util.h"

namespace q3vl {
namespace {

using testing::CommandResult;

CommandResult RunPerfModel(const std::string& args, bool with_stderr = false) {
  return testing::RunCommand(std::string(Q3VL_PERF_MODEL) + " " + args + (with_stderr ? " 2>&1" : " 2>/dev/null"));
}

const nlohmann::json& FindMesh(const nlohmann::json& out, const std::string& name) {
  for (const auto& m : out["meshes"]) {
    if (m["name"] == name) return m;
  }
  ADD_FAILURE() << "no mesh " << name;
  static const nlohmann::json kNone = nlohmann::json::object();
  return kNone;
}

TEST(PerfModelTest, PredictionsFollowTheirArithmetic) {
  const CommandResult r = RunPerfModel("--batches 1,16,64 --contexts 4096,65536 --prefill 2048,8192 --mesh bad:tp=3");
  ASSERT_EQ(r.code, 0) << r.output;
  const nlohmann::json out = nlohmann::json::parse(r.output);
  ASSERT_GE(out["meshes"].size(), 9u);
  for (const auto& m : out["meshes"]) {
    SCOPED_TRACE(m["name"].get<std::string>());
    const auto& d = m["decode"];
    ASSERT_EQ(d.size(), 6u);  // contexts x batches, context-major
    for (int c = 0; c < 2; ++c) {
      for (int b = 1; b < 3; ++b) {
        EXPECT_GT(d[c * 3 + b]["step_ms"].get<double>(), d[c * 3 + b - 1]["step_ms"].get<double>());
        EXPECT_GT(d[c * 3 + b]["tokens_per_s"].get<double>(), d[c * 3 + b - 1]["tokens_per_s"].get<double>());
      }
    }
    for (int b = 0; b < 3; ++b) EXPECT_GT(d[3 + b]["step_ms"].get<double>(), d[b]["step_ms"].get<double>());
    EXPECT_GT(m["prefill"][1]["step_ms"].get<double>(), m["prefill"][0]["step_ms"].get<double>());
  }
  // Two replicas: the same step as one, the same tokens/s per GPU.
  const auto& one = FindMesh(out, "8gpu_tp8_ep8");
  const auto& two = FindMesh(out, "16gpu_tp8_ep8_dp2");
  EXPECT_DOUBLE_EQ(one["decode"][2]["step_ms"].get<double>(), two["decode"][2]["step_ms"].get<double>());
  EXPECT_DOUBLE_EQ(one["decode"][2]["tokens_per_s_per_gpu"].get<double>(),
                   two["decode"][2]["tokens_per_s_per_gpu"].get<double>());
  // TP8/EP8 shards the whole 235B (about 236e9 bf16 parameters with embeddings) over 8 GPUs.
  const double weights = one["memory"]["weights_gb_per_gpu"].get<double>() * 8;
  EXPECT_NEAR(weights, 471.0, 10.0);
  EXPECT_EQ(one["shard"]["local_experts"], 16);
  EXPECT_EQ(one["shard"]["local_kv_heads"], 1);
  // Two pipeline stages halve the weights per GPU and give more KV room.
  const auto& pp2 = FindMesh(out, "16gpu_tp8_ep8_pp2");
  EXPECT_NEAR(pp2["memory"]["weights_gb_per_gpu"].get<double>() * 2,
              one["memory"]["weights_gb_per_gpu"].get<double>(), 1.0);
  EXPECT_GT(pp2["memory"]["kv_capacity_tokens_per_replica"].get<double>(),
            2 * one["memory"]["kv_capacity_tokens_per_replica"].get<double>());
  // Pure data-parallel attention on 8 x 80 GB holds every attention weight on every GPU.
  EXPECT_FALSE(FindMesh(out, "8gpu_dp_attention_ep8")["memory"]["fits"].get<bool>());
  // The runtime's own shard planner rejects tp=3 (64 heads).
  ASSERT_EQ(out["rejected"].size(), 1u);
  EXPECT_EQ(out["rejected"][0]["name"], "bad");
  EXPECT_NE(out["rejected"][0]["error"].get<std::string>().find("tp"), std::string::npos) << out["rejected"];
}

TEST(PerfModelTest, SmallerModelIsFaster) {
  const CommandResult big = RunPerfModel("--batches 16 --contexts 8192 --prefill 4096");
  const CommandResult small = RunPerfModel("--model 30b --batches 16 --contexts 8192 --prefill 4096");
  ASSERT_EQ(big.code, 0);
  ASSERT_EQ(small.code, 0);
  const nlohmann::json b = nlohmann::json::parse(big.output), s = nlohmann::json::parse(small.output);
  EXPECT_EQ(s["model"]["layers"], 48);
  EXPECT_LT(FindMesh(s, "8gpu_tp8_ep8")["decode"][0]["step_ms"].get<double>(),
            FindMesh(b, "8gpu_tp8_ep8")["decode"][0]["step_ms"].get<double>());
}

TEST(PerfModelTest, BadFlagsAreRefused) {
  EXPECT_EQ(RunPerfModel("--help").code, 0);
  const CommandResult unknown = RunPerfModel("--no-such-flag", true);
  EXPECT_EQ(unknown.code, 2);
  EXPECT_NE(unknown.output.find("no-such-flag"), std::string::npos) << unknown.output;
  EXPECT_EQ(RunPerfModel("--model 7b").code, 2);
  EXPECT_EQ(RunPerfModel("--batches 1,x").code, 2);
  EXPECT_EQ(RunPerfModel("--mesh nocolon").code, 2);
  EXPECT_EQ(RunPerfModel("--config /nonexistent/config.json").code, 1);
}

}  // namespace
}  // namespace q3vl
