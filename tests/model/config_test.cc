#include "model/config.h"

#include <fstream>
#include <sstream>

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/test_util.h"

namespace q3vl::model {
namespace {

nlohmann::json CaseConfig() {
  std::ifstream in(testing::TestDataDir() + "/golden/01_text_only/model/config.json");
  std::stringstream s;
  s << in.rdbuf();
  return nlohmann::json::parse(s.str());
}

TEST(ConfigTest, ParsesOfficialLayout) {
  auto c = ModelConfig::FromJson(CaseConfig().dump(), "config.json");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->text.hidden_size, 64);
  EXPECT_EQ(c->text.mrope_section[0], 6);
  EXPECT_EQ(c->vision.deepstack_visual_indexes.size(), 3u);
  EXPECT_EQ(c->text.eos_token_ids, std::vector<int64_t>{392});
}

TEST(ConfigTest, ParsesRopeParametersLayout) {
  nlohmann::json j = CaseConfig();
  auto& t = j["text_config"];
  t["rope_parameters"] = {{"rope_theta", 1e6}, {"mrope_section", {6, 5, 5}}, {"mrope_interleaved", true},
                          {"rope_type", "default"}};
  t.erase("rope_scaling");
  t.erase("rope_theta");
  auto c = ModelConfig::FromJson(j.dump(), "config.json");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->text.rope_theta, 1e6);
}

TEST(ConfigTest, ParsesYarnRopeScaling) {
  nlohmann::json j = CaseConfig();
  j["text_config"]["rope_scaling"] = {{"mrope_interleaved", true}, {"mrope_section", {6, 5, 5}}, {"rope_type", "yarn"},
                                      {"factor", 4.0}, {"original_max_position_embeddings", 16}};
  auto c = ModelConfig::FromJson(j.dump(), "config.json");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_TRUE(c->text.yarn.enabled);
  EXPECT_EQ(c->text.yarn.factor, 4.0);
  EXPECT_EQ(c->text.yarn.original_max_position_embeddings, 16);
  EXPECT_EQ(c->text.yarn.beta_fast, 32.0);  // Hugging Face's defaults
  EXPECT_EQ(c->text.yarn.beta_slow, 1.0);
  EXPECT_TRUE(c->text.yarn.truncate);
  EXPECT_EQ(c->text.mrope_section[1], 5);

  // The newer layout: rope_parameters with rope_theta inside.
  nlohmann::json n = CaseConfig();
  n["text_config"]["rope_parameters"] = {{"rope_theta", 1e6}, {"mrope_interleaved", true}, {"mrope_section", {6, 5, 5}},
                                         {"rope_type", "yarn"}, {"factor", 4.0}, {"original_max_position_embeddings", 262144},
                                         {"beta_fast", 16}, {"attention_factor", 1.2}};
  n["text_config"].erase("rope_scaling");
  auto p = ModelConfig::FromJson(n.dump(), "config.json");
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_TRUE(p->text.yarn.enabled);
  EXPECT_EQ(p->text.rope_theta, 1e6);
  EXPECT_EQ(p->text.yarn.original_max_position_embeddings, 262144);
  EXPECT_EQ(p->text.yarn.beta_fast, 16.0);
  EXPECT_EQ(p->text.yarn.attention_factor, 1.2);

  // Without the default-rope types nothing changes.
  auto plain = ModelConfig::FromJson(CaseConfig().dump(), "config.json");
  ASSERT_TRUE(plain.ok());
  EXPECT_FALSE(plain->text.yarn.enabled);
}

void ExpectError(const nlohmann::json& j, const std::string& fragment) {
  auto c = ModelConfig::FromJson(j.dump(), "cfg.json");
  ASSERT_FALSE(c.ok()) << j.dump();
  EXPECT_NE(std::string(c.status().message()).find(fragment), std::string::npos) << c.status();
  EXPECT_NE(std::string(c.status().message()).find("cfg.json"), std::string::npos) << c.status();
}

TEST(ConfigTest, RejectsBadYarnAndUnknownRopeTypes) {
  nlohmann::json j = CaseConfig();
  j["text_config"]["rope_scaling"]["rope_type"] = "yarn";
  ExpectError(j, "factor");  // required
  j["text_config"]["rope_scaling"]["factor"] = 0.5;
  ExpectError(j, "yarn factor must be >= 1");
  j["text_config"]["rope_scaling"]["factor"] = 4.0;
  j["text_config"]["rope_scaling"]["beta_fast"] = -1;
  ExpectError(j, "beta_fast");
  nlohmann::json other = CaseConfig();
  other["text_config"]["rope_scaling"]["rope_type"] = "longrope";
  ExpectError(other, "rope_type \"longrope\" is not supported (default, yarn)");
}

TEST(ConfigTest, RejectsMalformedConfigs) {
  EXPECT_FALSE(ModelConfig::FromJson("{not json", "x").ok());
  EXPECT_FALSE(ModelConfig::FromJson("[]", "x").ok());
  nlohmann::json j = CaseConfig();
  j["text_config"].erase("hidden_size");
  ExpectError(j, "hidden_size");
  j = CaseConfig();
  j["text_config"]["num_key_value_heads"] = 3;
  ExpectError(j, "multiple of num_key_value_heads");
  j = CaseConfig();
  j["text_config"]["rope_scaling"]["mrope_section"] = {6, 5, 4};
  ExpectError(j, "mrope_section");
  j = CaseConfig();
  j["text_config"]["num_experts_per_tok"] = 99;
  ExpectError(j, "num_experts_per_tok");
  j = CaseConfig();
  j["text_config"]["hidden_size"] = "64";
  ExpectError(j, "wrong type");
  j = CaseConfig();
  j["vision_config"]["deepstack_visual_indexes"] = {1, 9};
  ExpectError(j, "deepstack_visual_indexes");
  j = CaseConfig();
  j["model_type"] = "llama";
  ExpectError(j, "model_type");
  j = CaseConfig();
  j["vision_config"]["out_hidden_size"] = 65;
  ExpectError(j, "out_hidden_size");
  j = CaseConfig();
  j["text_config"]["mlp_only_layers"] = {7};
  ExpectError(j, "mlp_only_layers");
}

// Sizes a hostile config could use to overflow products or spin in loops are bounded.
TEST(ConfigTest, RejectsAbsurdSizes) {
  nlohmann::json j = CaseConfig();
  j["vision_config"]["num_position_embeddings"] = int64_t{1} << 62;
  ExpectError(j, "num_position_embeddings must be in [1, ");
  j = CaseConfig();
  j["text_config"]["hidden_size"] = int64_t{1} << 40;
  ExpectError(j, "text_config.hidden_size must be in [1, ");
  j = CaseConfig();
  j["text_config"]["rope_scaling"]["mrope_section"] = {int64_t{1} << 62, int64_t{1} << 62, 8};
  ExpectError(j, "mrope_section");
  j = CaseConfig();
  j["text_config"]["num_hidden_layers"] = 0;
  ExpectError(j, "num_hidden_layers must be in [1, ");
}

}  // namespace
}  // namespace q3vl::model
