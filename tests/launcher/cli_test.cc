// The q3vl binary as users run it: eval-case writes the golden contract files, make-model +
// generate work end to end, chat-template and preprocess reproduce the input goldens, and bad
// input exits non-zero with one line naming the problem.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "core/cpu/bf16_gemm.h"
#include "core/npy.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/model/input_test_util.h"
#include "tests/test_util.h"

namespace q3vl {
namespace {

using testing::CommandResult;

CommandResult RunQ3vl(const std::string& args) {
  return testing::RunCommand(std::string(Q3VL_BINARY) + " " + args + " 2>&1");
}

TEST(CliTest, EvalCaseWritesTheContractFiles) {
  const std::string dir = testing::GoldenCaseDir("02_image_single");
  const std::string out = ::q3vl::testing::ScratchDir() + "/eval02";
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
  const std::string dir = ::q3vl::testing::ScratchDir() + "/demo";
  ASSERT_EQ(RunQ3vl("make-model --out " + dir + " --shards 2").code, 0);
  const CommandResult r = RunQ3vl("generate --model " + dir + " --ids 151644,872,198,9707,151645 --max-new-tokens 5 --json");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("\"generated_ids\""), std::string::npos) << r.output;
  // --threads sets the compute threads (reported in the stats) without changing the tokens;
  // a negative count is a usage error.
  const CommandResult one = RunQ3vl("generate --model " + dir + " --ids 151644,872,198,9707,151645 --max-new-tokens 5 "
                                    "--json --threads 1");
  ASSERT_EQ(one.code, 0) << one.output;
  const auto parsed = nlohmann::json::parse(one.output.substr(one.output.find('{')));
  EXPECT_EQ(parsed["stats"]["threads"], 1);
  EXPECT_EQ(parsed["generated_ids"], nlohmann::json::parse(r.output.substr(r.output.find('{')))["generated_ids"]);
  const CommandResult negative = RunQ3vl("generate --model " + dir + " --ids 1 --threads -1");
  EXPECT_EQ(negative.code, 2);
  EXPECT_NE(negative.output.find("--threads must be >= 0"), std::string::npos) << negative.output;
  // --cpu-compute: f32 or bf16 (where the processor multiplies bf16); anything else, or bf16
  // without the instructions, is a usage error naming the flag.
  const CommandResult unknown = RunQ3vl("generate --model " + dir + " --ids 1 --cpu-compute fp16");
  EXPECT_EQ(unknown.code, 2);
  EXPECT_NE(unknown.output.find("--cpu-compute must be f32 or bf16"), std::string::npos) << unknown.output;
  const CommandResult bf16 = RunQ3vl("generate --model " + dir + " --ids 151644,872,198,9707,151645 --max-new-tokens 5 "
                                     "--json --cpu-compute bf16");
  if (cpu::CpuBf16Support().native) {
    ASSERT_EQ(bf16.code, 0) << bf16.output;
    EXPECT_NE(bf16.output.find("\"generated_ids\""), std::string::npos) << bf16.output;
  } else {
    EXPECT_EQ(bf16.code, 2);
    EXPECT_NE(bf16.output.find("no bf16 instructions"), std::string::npos) << bf16.output;
  }
}

// make-model never silently replaces a directory's contents; --prompt-file (here: standard
// input) gives the same prompt as --prompt; --version answers.
TEST(CliTest, MakeModelGuardsItsOutputAndPromptFileReadsStdin) {
  const std::string dir = ::q3vl::testing::ScratchDir() + "/guarded";
  ASSERT_EQ(RunQ3vl("make-model --out " + dir).code, 0);
  CommandResult again = RunQ3vl("make-model --out " + dir + " --seed 3");
  EXPECT_EQ(again.code, 2) << again.output;
  EXPECT_NE(again.output.find("is not empty (it holds a checkpoint)"), std::string::npos) << again.output;
  EXPECT_EQ(RunQ3vl("make-model --out " + dir + " --seed 3 --force").code, 0);

  const CommandResult inline_prompt = RunQ3vl("generate --model " + dir + " --prompt 'Hello there' --max-new-tokens 2 --json");
  const CommandResult from_stdin = testing::RunCommand("printf 'Hello there' | " + std::string(Q3VL_BINARY) + " generate --model " +
                                                       dir + " --prompt-file - --max-new-tokens 2 --json 2>&1");
  ASSERT_EQ(inline_prompt.code, 0) << inline_prompt.output;
  ASSERT_EQ(from_stdin.code, 0) << from_stdin.output;
  auto ids = [](const std::string& out) { return nlohmann::json::parse(out.substr(out.find('{')))["input_ids"]; };
  EXPECT_EQ(ids(inline_prompt.output), ids(from_stdin.output));
  EXPECT_EQ(RunQ3vl("generate --model " + dir + " --prompt a --prompt-file - --max-new-tokens 2").code, 2);

  const CommandResult version = RunQ3vl("--version");
  EXPECT_EQ(version.code, 0);
  EXPECT_EQ(version.output.rfind("q3vl 0.1.0", 0), 0u) << version.output;
}

// The README's main job: make-model ships the real tokenizer and chat template, and generate
// takes a chat prompt with an image and a video through the whole pipeline.
TEST(CliTest, MakeModelThenGenerateFromPromptImageAndVideo) {
  const std::string dir = ::q3vl::testing::ScratchDir() + "/demo_chat";
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
  const std::string bad = ::q3vl::testing::ScratchDir() + "/badcase";
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
  const std::string in = ::q3vl::testing::ScratchDir() + "/tokenize_in.jsonl";
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

// A make-model directory (real tokenizer and chat template, processor configs), made once.
const std::string& InputModelDir() {
  static const std::string dir = [] {
    const std::string d = ::q3vl::testing::ScratchDir() + "/input_model";
    const CommandResult r = RunQ3vl("make-model --out " + d);
    EXPECT_EQ(r.code, 0) << r.output;
    return d;
  }();
  return dir;
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

TEST(CliTest, ChatTemplateRendersTheGoldenCases) {
  using OrderedJson = nlohmann::ordered_json;  // tool definitions must keep their key order
  const OrderedJson cases =
      OrderedJson::parse(ReadFile(testing::TestDataDir() + "/inputs/chat_template/cases.json"));
  const std::string in = ::q3vl::testing::ScratchDir() + "/chat_template_in.json";
  int checked = 0;
  for (const OrderedJson& c : cases) {
    const std::string name = c["name"].get<std::string>();
    if (name != "tools_call_and_response" && name != "image_video_with_vision_id" &&
        name != "special_tokens_and_unicode_in_text" && name != "full_exchange_no_generation_prompt") {
      continue;
    }
    std::ofstream(in) << OrderedJson{{"messages", c["messages"]}, {"kwargs", c["kwargs"]}}.dump();
    const CommandResult r = RunQ3vl("chat-template --model " + InputModelDir() + " < " + in);
    ASSERT_EQ(r.code, 0) << name << ": " << r.output;
    const auto out = nlohmann::json::parse(r.output, nullptr, false);
    ASSERT_TRUE(out.is_object()) << name << ": " << r.output;
    EXPECT_EQ(out["text"], c["text"].get<std::string>()) << name;
    EXPECT_EQ(out["ids"].get<std::vector<int64_t>>(), c["ids"].get<std::vector<int64_t>>()) << name;
    ++checked;
  }
  EXPECT_EQ(checked, 4);

  std::ofstream(in) << R"({"messages": [{"role": "user", "content": [{"type": "image"}]}]})";
  CommandResult r = RunQ3vl("chat-template --model " + InputModelDir() + " < " + in);
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.output.find("q3vl chat-template: messages[0].content[0]"), std::string::npos) << r.output;
  std::ofstream(in) << R"({"messages": [{"role": "user", "content": "hi"}], "kwargs": {"add_vision_id": 1}})";
  r = RunQ3vl("chat-template --model " + InputModelDir() + " < " + in);
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.output.find("kwargs.add_vision_id must be true or false"), std::string::npos) << r.output;
  std::ofstream(in) << "[1, 2";
  r = RunQ3vl("chat-template --model " + InputModelDir() + " < " + in);
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.output.find("not valid JSON"), std::string::npos) << r.output;
  r = RunQ3vl("chat-template --model /nonexistent < " + in);
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.output.find("/nonexistent/tokenizer.json"), std::string::npos) << r.output;
  EXPECT_EQ(RunQ3vl("chat-template").code, 2);
  EXPECT_EQ(RunQ3vl("chat-template --help").code, 0);
}

// Every request of golden/inputs/e2e through `q3vl generate --messages`: the prompt ids (4.57
// video layout, the CLI's) and the 16 greedy tokens equal the reference.
TEST(CliTest, GenerateFromMessagesMatchesEveryE2eRequest) {
  namespace fs = std::filesystem;
  const fs::path e2e = testing::E2eDir();
  ASSERT_TRUE(fs::exists(e2e / "model/config.json")) << e2e;
  const fs::path model = testing::E2eModelDir();
  for (const char* name : {"e01_text", "e02_image", "e03_video", "e04_image_video"}) {
    SCOPED_TRACE(name);
    const auto c = nlohmann::json::parse(ReadFile((e2e / name / "case.json").string()));
    const nlohmann::json& want = c["expected"].contains("transformers_4_57_layout")
                                     ? c["expected"]["transformers_4_57_layout"]
                                     : c["expected"];
    const std::string messages = testing::ScratchDir() + "/" + name + "_messages.json";
    std::ofstream(messages) << c["request"]["messages"].dump();
    // Media paths in the messages are relative to the e2e folder: run from there.
    const CommandResult r = testing::RunCommand("cd " + e2e.string() + " && " + Q3VL_BINARY + " generate --model " +
                                                model.string() + " --messages " + messages +
                                                " --max-new-tokens 16 --ignore-eos --json 2>&1");
    ASSERT_EQ(r.code, 0) << r.output;
    const auto at = r.output.find('{');
    ASSERT_NE(at, std::string::npos) << r.output;
    const auto out = nlohmann::json::parse(r.output.substr(at), nullptr, false);
    ASSERT_TRUE(out.is_object()) << r.output;
    EXPECT_EQ(out["input_ids"], want["input_ids"]);
    EXPECT_EQ(out["generated_ids"], want["generated_ids"]);
    if (!c["expected"].contains("transformers_4_57_layout")) {  // the 4.57 text keeps special tokens
      EXPECT_EQ(out["text"], c["expected"]["generated_text_skip_special"]);
    }
  }
}

// q3vl plan: the JSON object its --help promises, for the 235B over 8 GPUs; the table names
// the verdict; bad sizes and a missing model are usage errors naming the flag.
TEST(CliTest, PlanPrintsTheMemoryOfAReplica) {
  const std::string config = ::q3vl::testing::SourcePath("benchmarks/configs/qwen3-vl-235b-a22b.json");
  const CommandResult json = RunQ3vl("plan --config " + config + " --mesh tp=8 --device-memory 140GiB --json");
  ASSERT_EQ(json.code, 0) << json.output;
  const auto plan = nlohmann::json::parse(json.output);
  EXPECT_EQ(plan["kv_bytes_per_token_per_rank"], 94 * 2 * 1 * 128 * 2);  // a KV head per rank, bf16
  EXPECT_GT(plan["kv_pool_tokens"].get<int64_t>(), 262144);
  EXPECT_EQ(plan["fits_256k_video"], true);
  EXPECT_TRUE(plan["max_concurrent_sequences"].contains("131072"));
  const CommandResult table = RunQ3vl("plan --config " + config + " --mesh tp=8 --device-memory 80GiB");
  ASSERT_EQ(table.code, 0) << table.output;
  EXPECT_NE(table.output.find("does not fit"), std::string::npos) << table.output;
  const CommandResult bad = RunQ3vl("plan --config " + config + " --device-memory 80XB");
  EXPECT_EQ(bad.code, 2);
  EXPECT_NE(bad.output.find("--device-memory"), std::string::npos) << bad.output;
  EXPECT_EQ(RunQ3vl("plan --mesh tp=8 --device-memory 80GiB").code, 2);  // no model
  const CommandResult too_small = RunQ3vl("plan --config " + config + " --mesh tp=2 --device-memory 80GiB");
  EXPECT_EQ(too_small.code, 1);
  EXPECT_NE(too_small.output.find("needs"), std::string::npos) << too_small.output;
}

// A replica sizes its KV pool from the plan: --kv-cache-memory on the CPU over the bytes of a
// token (the demo model: 1 KiB in bf16, 2 KiB in f32), stated in one line.
TEST(CliTest, RunSizesTheKvPoolFromItsMemory) {
  const std::string dir = ::q3vl::testing::ScratchDir() + "/kv_pool_model";
  ASSERT_EQ(RunQ3vl("make-model --force --out " + dir).code, 0);
  const std::string input = ::q3vl::testing::ScratchDir() + "/kv_pool_empty.jsonl";
  std::ofstream(input).close();
  for (const auto& [dtype, tokens] : {std::pair<std::string, int>{"bf16", 65536}, {"f32", 32768}}) {
    std::filesystem::remove(input + ".out");
    const CommandResult r = RunQ3vl("run --model " + dir + " --input " + input + " --output " + input +
                                    ".out --progress none --kv-cache-memory 64MiB --kv-dtype " + dtype);
    ASSERT_EQ(r.code, 0) << r.output;
    EXPECT_NE(r.output.find("KV cache " + dtype + ": " + std::to_string(tokens) + " tokens"), std::string::npos)
        << r.output;
  }
  const CommandResult bad = RunQ3vl("run --model " + dir + " --input " + input + " --output " + input +
                                    ".out --kv-cache-memory lots");
  EXPECT_EQ(bad.code, 2) << bad.output;
  EXPECT_NE(bad.output.find("--kv-cache-memory"), std::string::npos) << bad.output;
}

TEST(CliTest, PreprocessImageMatchesTheGolden) {
  const nlohmann::json want = testing::ReadCaseJson("image/p02_333x517/case.json")["variants"]["jpg"];
  const std::string out = ::q3vl::testing::ScratchDir() + "/preprocess_image";
  const CommandResult r = RunQ3vl("preprocess --model " + InputModelDir() + " --image " + testing::TestDataDir() +
                                  "/media/shapes_333x517.jpg --out " + out);
  ASSERT_EQ(r.code, 0) << r.output;
  auto pixels = ReadNpy(out + "/pixel_values.npy");
  auto grid = ReadNpy(out + "/grid_thw.npy");
  ASSERT_TRUE(pixels.ok() && grid.ok()) << r.output;
  EXPECT_EQ(pixels->dtype(), DType::kF32);
  EXPECT_EQ((std::vector<int64_t>{pixels->dim(0), pixels->dim(1)}), testing::JsonInts(want["pixel_values_shape"]));
  EXPECT_EQ(testing::Sha256Of(*pixels), want["pixel_values_sha256"].get<std::string>());
  ASSERT_EQ(grid->dtype(), DType::kI64);
  ASSERT_EQ(grid->shape(), (Shape{1, 3}));
  EXPECT_EQ(std::vector<int64_t>(grid->data<int64_t>(), grid->data<int64_t>() + 3),
            testing::JsonInts(want["image_grid_thw"]));
  EXPECT_FALSE(std::filesystem::exists(out + "/timestamps.json"));
}

TEST(CliTest, PreprocessVideoMatchesTheGolden) {
  const nlohmann::json want = testing::ReadCaseJson("video/v1_testsrc2_320x240_24fps_4s/case.json");
  const std::string out = ::q3vl::testing::ScratchDir() + "/preprocess_video";
  const CommandResult r = RunQ3vl("preprocess --model " + InputModelDir() + " --video " + testing::TestDataDir() +
                                  "/media/testsrc2_320x240_4s.mp4 --out " + out);
  ASSERT_EQ(r.code, 0) << r.output;
  auto pixels = ReadNpy(out + "/pixel_values.npy");
  auto grid = ReadNpy(out + "/grid_thw.npy");
  auto indices = ReadNpy(out + "/frame_indices.npy");
  ASSERT_TRUE(pixels.ok() && grid.ok() && indices.ok()) << r.output;
  EXPECT_EQ((std::vector<int64_t>{pixels->dim(0), pixels->dim(1)}),
            testing::JsonInts(want["pixel_values_videos_shape"]));
  EXPECT_EQ(testing::Sha256Of(*pixels), want["pixel_values_videos_sha256"].get<std::string>());
  ASSERT_EQ(grid->numel(), 3);
  EXPECT_EQ(std::vector<int64_t>(grid->data<int64_t>(), grid->data<int64_t>() + 3),
            testing::JsonInts(want["video_grid_thw"]));
  ASSERT_EQ(indices->dtype(), DType::kI64);
  EXPECT_EQ(std::vector<int64_t>(indices->data<int64_t>(), indices->data<int64_t>() + indices->numel()),
            testing::JsonInts(want["sampled_frame_indices"]));
  const auto timestamps = nlohmann::json::parse(ReadFile(out + "/timestamps.json"), nullptr, false);
  EXPECT_EQ(timestamps, want["group_timestamp_strings"]);
}

TEST(CliTest, PreprocessBadInputNamesTheFile) {
  const std::string media = testing::TestDataDir() + "/media/";
  const std::string out = ::q3vl::testing::ScratchDir() + "/preprocess_bad";
  CommandResult r = RunQ3vl("preprocess --model " + InputModelDir() + " --image /nonexistent/x.jpg --out " + out);
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.output.find("/nonexistent/x.jpg"), std::string::npos) << r.output;
  r = RunQ3vl("preprocess --model " + InputModelDir() + " --video /nonexistent/x.mp4 --out " + out);
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.output.find("/nonexistent/x.mp4"), std::string::npos) << r.output;
  const std::string garbage = ::q3vl::testing::ScratchDir() + "/garbage.bin";
  std::ofstream(garbage) << "this is not an image or a video";
  for (const char* flag : {"--image", "--video"}) {
    r = RunQ3vl("preprocess --model " + InputModelDir() + " " + flag + " " + garbage + " --out " + out);
    EXPECT_EQ(r.code, 1) << flag;
    EXPECT_NE(r.output.find(garbage), std::string::npos) << flag << ": " << r.output;
  }
  r = RunQ3vl("preprocess --model " + InputModelDir() + " --image " + media + "shapes_333x517.jpg --video " + media +
              "testsrc2_320x240_4s.mp4 --out " + out);
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.output.find("exactly one of --image and --video"), std::string::npos) << r.output;
  EXPECT_EQ(RunQ3vl("preprocess --model " + InputModelDir() + " --out " + out).code, 2);
  EXPECT_EQ(RunQ3vl("preprocess --help").code, 0);
}

}  // namespace
}  // namespace q3vl
