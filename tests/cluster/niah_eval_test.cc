// NIAH scoring, needles files and the resumable results file.
#include "cluster/niah/eval.h"

#include "cluster/niah/client.h"

#include <filesystem>
#include <fstream>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/test_util.h"

namespace q3vl::cluster::niah {
namespace {

using ::testing::HasSubstr;

TEST(NiahEvalTest, AnswersAndTimes) {
  EXPECT_TRUE(AnswerMatches("It is Red.", {"red"}));
  EXPECT_TRUE(AnswerMatches("a crimson frame", {"red", " Crimson "}));
  EXPECT_FALSE(AnswerMatches("blue", {"red"}));
  EXPECT_FALSE(AnswerMatches("anything", {""}));
  EXPECT_EQ(ParseSeconds("At 12.5 seconds."), 12.5);
  EXPECT_EQ(ParseSeconds("around 1:05"), 65.0);
  EXPECT_EQ(ParseSeconds("2:03.5 into it"), 123.5);
  EXPECT_EQ(ParseSeconds("never"), std::nullopt);
  EXPECT_TRUE(TimeMatches("10 s", 10.25, 1.0));
  EXPECT_TRUE(TimeMatches("11.25", 10.25, 1.0));
  EXPECT_FALSE(TimeMatches("11.3", 10.25, 1.0));
  EXPECT_FALSE(TimeMatches("no idea", 10.25, 1.0));
}

// The harness reads the server's vision seconds from /metrics around each cell.
TEST(NiahEvalTest, PrometheusValueReadsTheFirstSample) {
  const std::string text =
      "# HELP q3vl:vision_encode_seconds_total Seconds.\n# TYPE q3vl:vision_encode_seconds_total counter\n"
      "q3vl:vision_encode_seconds_total_extra 9\n"
      "q3vl:vision_encode_seconds_total{model_name=\"a b}\"} 12.5\n"
      "plain 3 1700000000\nbroken{x=\"1\"} many\n";
  EXPECT_EQ(PrometheusValue(text, "q3vl:vision_encode_seconds_total"), 12.5);
  EXPECT_EQ(PrometheusValue(text, "plain"), 3.0);
  EXPECT_EQ(PrometheusValue(text, "broken"), std::nullopt);
  EXPECT_EQ(PrometheusValue(text, "absent"), std::nullopt);
}

TEST(NiahEvalTest, DefaultNeedlesAskWhatAndWhen) {
  const std::vector<Needle> needles = DefaultNeedles();
  ASSERT_EQ(needles.size(), 3u);
  for (const Needle& n : needles) {
    EXPECT_EQ(n.image.width, 256);
    ASSERT_EQ(n.questions.size(), 2u);
    EXPECT_EQ(n.questions[0].kind, QuestionKind::kWhat);
    EXPECT_THAT(n.questions[0].answers, ::testing::ElementsAre(n.id));
    EXPECT_EQ(n.questions[1].kind, QuestionKind::kWhen);
  }
}

TEST(NiahEvalTest, NeedlesFiles) {
  const std::string dir = testing::ScratchDir() + "/needles";
  std::filesystem::create_directories(dir);
  std::filesystem::copy_file(testing::TestDataDir() + "/media/shapes_333x517.jpg", dir + "/shapes.jpg",
                             std::filesystem::copy_options::overwrite_existing);
  auto write = [&](const std::string& text) {
    std::ofstream(dir + "/needles.json") << text;
    return LoadNeedles(dir + "/needles.json");
  };
  auto ok = write(R"({"needles": [{"id": "shapes", "image": "shapes.jpg", "questions": [
      {"question": "What shapes?", "answers": ["circle", "square"]}, {"question": "When?", "kind": "when"}]}]})");
  ASSERT_TRUE(ok.ok()) << ok.status();
  ASSERT_EQ(ok->size(), 1u);
  EXPECT_EQ((*ok)[0].image.width, 333);
  EXPECT_EQ((*ok)[0].questions[1].kind, QuestionKind::kWhen);
  EXPECT_THAT(write(R"({"needles": [{"image": "missing.jpg", "questions": [{"question": "q", "answers": ["a"]}]}]})")
                  .status()
                  .message(),
              HasSubstr("needle 1"));
  EXPECT_THAT(write(R"({"needles": [{"image": "shapes.jpg", "questions": [{"question": "q"}]}]})").status().message(),
              HasSubstr("needle 1 question 1 needs \"answers\""));
  EXPECT_THAT(write(R"({"needles": []})").status().message(), HasSubstr("at least one needle"));
  EXPECT_EQ(LoadNeedles(dir + "/nope.json").status().code(), absl::StatusCode::kNotFound);
}

TEST(NiahEvalTest, ResultsSurviveAKillMidLine) {
  const std::string path = testing::ScratchDir() + "/results.jsonl";
  std::filesystem::remove(path);
  EXPECT_TRUE(RecoverResults(path)->empty());
  const CellKey a{.length = 8192, .depth = 0.5, .needle = "red", .question = 0};
  const CellKey b{.length = 8192, .depth = 1.0, .needle = "red", .question = 1};
  ASSERT_TRUE(AppendResult(path, {{"key", a.ToString()}, {"correct", true}}).ok());
  ASSERT_TRUE(AppendResult(path, {{"key", b.ToString()}, {"correct", false}}).ok());
  std::ofstream(path, std::ios::app) << R"({"key": "8192/0.0000)";  // killed mid-write
  auto keys = RecoverResults(path);
  ASSERT_TRUE(keys.ok()) << keys.status();
  EXPECT_EQ(*keys, (std::set<std::string>{a.ToString(), b.ToString()}));
  EXPECT_EQ(a.ToString(), "8192/0.500000/red/0");
  // The partial line is gone: appending continues whole lines.
  ASSERT_TRUE(AppendResult(path, {{"key", "x"}}).ok());
  EXPECT_EQ(RecoverResults(path)->size(), 3u);
  std::ofstream(path, std::ios::app) << "garbage\n{\"key\": \"y\"}\n";
  EXPECT_THAT(RecoverResults(path).status().message(), HasSubstr("line 4 is not a result line"));
}

}  // namespace
}  // namespace q3vl::cluster::niah
