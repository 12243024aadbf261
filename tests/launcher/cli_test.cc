// The q3vl binary as users run it: eval-case writes the golden contract files, make-model +
// generate work end to end, and bad input exits non-zero with one line naming the problem.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "core/npy.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/test_util.h"

namespace q3vl {
namespace {

struct CommandResult {
  int code;
  std::string output;
};

CommandResult RunQ3vl(const std::string& args) {
  const std::string cmd = std::string(Q3VL_BINARY) + " " + args + " 2>&1";
  FILE* pipe = popen(cmd.c_str(), "r");
  std::string out;
  char buf[4096];
  while (size_t n = fread(buf, 1, sizeof buf, pipe)) out.append(buf, n);
  const int status = pclose(pipe);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, out};
}

TEST(CliTest, EvalCaseWritesTheContractFiles) {
  const std::string dir = testing::GoldenCaseDir("02_image_single");
  const std::string out = ::testing::TempDir() + "/eval02";
  const CommandResult r = RunQ3vl("eval-case " + dir + " --out " + out);
  ASSERT_EQ(r.code, 0) << r.output;
  auto greedy = ReadNpy(out + "/greedy_tokens.npy");
  auto expected = ReadNpy(dir + "/expected/greedy_tokens.npy");
  ASSERT_TRUE(greedy.ok() && expected.ok());
  EXPECT_EQ(testing::MaxAbsDiff(*greedy, *expected), 0.0f);
  auto logits = ReadNpy(out + "/logits.npy");
  ASSERT_TRUE(logits.ok());
  EXPECT_LE(testing::MaxAbsDiff(*logits, *ReadNpy(dir + "/expected/logits.npy")), 2e-3f);
  EXPECT_LE(testing::MaxAbsDiff(*ReadNpy(out + "/position_ids.npy"), *ReadNpy(dir + "/expected/position_ids.npy")), 0.0f);
  std::ifstream result(out + "/result.json");
  std::string text((std::istreambuf_iterator<char>(result)), std::istreambuf_iterator<char>());
  EXPECT_NE(text.find("\"rope_delta\": -8"), std::string::npos) << text;
}

TEST(CliTest, MakeModelThenGenerate) {
  const std::string dir = ::testing::TempDir() + "/demo";
  ASSERT_EQ(RunQ3vl("make-model --out " + dir + " --shards 2").code, 0);
  const CommandResult r = RunQ3vl("generate --model " + dir + " --ids 151644,872,198,9707,151645 --max-new-tokens 5 --json");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("\"generated_ids\""), std::string::npos) << r.output;
}

// The README's main job: make-model ships the real tokenizer and chat template, and generate
// takes a chat prompt with an image and a video through the whole pipeline.
TEST(CliTest, MakeModelThenGenerateFromPromptImageAndVideo) {
  const std::string dir = ::testing::TempDir() + "/demo_chat";
  ASSERT_EQ(RunQ3vl("make-model --out " + dir).code, 0);
  const std::string media = testing::TestDataDir() + "/media/";
  const CommandResult r = RunQ3vl("generate --model " + dir + " --image " + media + "shapes_333x517.jpg --video " +
                                  media + "testsrc2_320x240_4s.mp4 --prompt 'What is shown?' --max-new-tokens 4 "
                                  "--ignore-eos --json");
  ASSERT_EQ(r.code, 0) << r.output;
  const auto json_start = r.output.find('{');
  ASSERT_NE(json_start, std::string::npos) << r.output;
  const auto out = nlohmann::json::parse(r.output.substr(json_start));
  const auto ids = out["input_ids"].get<std::vector<int64_t>>();
  const auto count = [&](int64_t id) { return std::count(ids.begin(), ids.end(), id); };
  EXPECT_EQ(count(151655), 160);  // <|image_pad|>: 512x320 after smart_resize / 32^2
  EXPECT_GT(count(151656), 0);    // <|video_pad|>
  EXPECT_EQ(out["generated_ids"].size(), 4u);
  EXPECT_TRUE(out["text"].is_string());
  // A missing image: exit 1, one line naming the file; nothing generated.
  const CommandResult bad = RunQ3vl("generate --model " + dir + " --image /nonexistent.png --prompt hi");
  EXPECT_EQ(bad.code, 1);
  EXPECT_NE(bad.output.find("/nonexistent.png"), std::string::npos) << bad.output;
  EXPECT_EQ(RunQ3vl("generate --model " + dir + " --prompt hi --ids 1,2").code, 2);
}

TEST(CliTest, BadInputExitsNonZeroWithAReason) {
  EXPECT_EQ(RunQ3vl("no-such-command").code, 2);
  EXPECT_EQ(RunQ3vl("generate --model /nonexistent --ids 1").code, 1);
  EXPECT_EQ(RunQ3vl("generate --model /tmp --ids x,y").code, 2);
  const std::string bad = ::testing::TempDir() + "/badcase";
  std::filesystem::create_directories(bad + "/inputs");
  std::ofstream(bad + "/case.json") << "{\"num_generated\": 2}";
  std::ofstream(bad + "/inputs/input_ids.npy") << "garbage";
  const CommandResult r = RunQ3vl("eval-case " + bad + " --out " + bad + "/out");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.output.find("input_ids.npy"), std::string::npos) << r.output;
  EXPECT_EQ(RunQ3vl("--help").code, 0);
  EXPECT_EQ(RunQ3vl("eval-case --help").code, 0);
}

TEST(CliTest, TokenizeEncodesAndDecodesJsonLines) {
  const std::string tokenizer = testing::SourcePath("model/assets/qwen3/tokenizer.json");
  const std::string in = ::testing::TempDir() + "/tokenize_in.jsonl";
  std::ofstream(in) << "{\"text\": \"Hello, world!\"}\n\n{\"text\": \" <|im_end|> \"}\nnot json\n{\"text\": \"ok\"}\n";
  CommandResult r = RunQ3vl("tokenize --tokenizer " + tokenizer + " < " + in);
  EXPECT_EQ(r.code, 1) << r.output;  // line 4 is bad; lines 1, 3 and 5 still answered
  EXPECT_NE(r.output.find("{\"ids\":[9707,11,1879,0]}\n{\"ids\":[220,151645,220]}\n"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("q3vl tokenize: line 4: not valid JSON"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("{\"ids\":[562]}"), std::string::npos) << r.output;

  std::ofstream(in) << "{\"ids\": [151644, 9707, 151645]}\n";
  r = RunQ3vl("tokenize --tokenizer " + tokenizer + " --decode --skip-special-tokens < " + in);
  EXPECT_EQ(r.code, 0) << r.output;
  EXPECT_EQ(r.output, "{\"text\":\"Hello\"}\n");
  std::ofstream(in) << "{\"ids\": [1, 999999]}\n";
  r = RunQ3vl("tokenize --tokenizer " + tokenizer + " --decode < " + in);
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.output.find("line 1: ids[1] = 999999 is not a token id"), std::string::npos) << r.output;
  EXPECT_EQ(RunQ3vl("tokenize --tokenizer /nonexistent/tokenizer.json < " + in).code, 1);
  EXPECT_EQ(RunQ3vl("tokenize --tokenizer " + tokenizer + " --skip-special-tokens < " + in).code, 2);
  EXPECT_EQ(RunQ3vl("tokenize --help").code, 0);
}

}  // namespace
}  // namespace q3vl
