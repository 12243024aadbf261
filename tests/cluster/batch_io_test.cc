// The batch job's files: input lines and their keys, duplicate custom_ids refused, an output
// file recovered after a kill (partial last line cut), failed results dropped for a retry.
#include "cluster/batch/batch_io.h"

#include <filesystem>
#include <fstream>
#include <sstream>

#include "gtest/gtest.h"
#include "tests/test_util.h"

namespace q3vl::cluster::batch {
namespace {

std::string Write(const std::string& name, const std::string& text) {
  const std::string path = testing::ScratchDir() + "/" + name;
  std::ofstream(path, std::ios::binary) << text;
  return path;
}

std::string Read(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

TEST(BatchInputTest, LinesKeysAndDuplicates) {
  const std::string path = Write("in.jsonl", "{\"custom_id\": \"a\"}\n\nnot json\n{\"custom_id\": 7}\r\n{\"custom_id\": \"b\"}");
  auto lines = ReadInput(path);
  ASSERT_TRUE(lines.ok()) << lines.status();
  ASSERT_EQ(lines->size(), 4u);  // the blank line is skipped
  EXPECT_EQ((*lines)[0].Key(), "a");
  EXPECT_EQ((*lines)[1].number, 3);
  EXPECT_EQ((*lines)[1].Key(), "line-3");
  EXPECT_EQ((*lines)[2].Key(), "line-4");  // a custom_id that is not a string
  EXPECT_EQ((*lines)[3].Key(), "b");

  auto dup = ReadInput(Write("dup.jsonl", "{\"custom_id\": \"a\"}\n{\"custom_id\": \"b\"}\n{\"custom_id\": \"a\"}\n"));
  ASSERT_FALSE(dup.ok());
  EXPECT_EQ(dup.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(dup.status().message().find("\"a\" (lines 1 and 3)"), std::string::npos) << dup.status();
  EXPECT_EQ(ReadInput(testing::ScratchDir() + "/absent.jsonl").status().code(), absl::StatusCode::kNotFound);
}

TEST(BatchOutputTest, ResultLinesHaveVllmsShape) {
  const auto ok = nlohmann::json::parse(SuccessLine("a", "r1", api::Json{{"object", "chat.completion"}}));
  EXPECT_EQ(ok["custom_id"], "a");
  EXPECT_EQ(ok["response"]["status_code"], 200);
  EXPECT_EQ(ok["response"]["request_id"], "r1");
  EXPECT_EQ(ok["response"]["body"]["object"], "chat.completion");
  EXPECT_TRUE(ok["error"].is_null());
  const InputLine no_id{.number = 9, .text = "x"};
  const auto err = nlohmann::json::parse(ErrorLine(no_id, "r2", api::InvalidRequest("line 9 is not valid JSON")));
  EXPECT_TRUE(err["custom_id"].is_null());
  EXPECT_EQ(err["id"], "line-9");
  EXPECT_EQ(err["response"]["status_code"], 400);
  EXPECT_TRUE(err["response"]["body"].is_null());
  EXPECT_EQ(err["error"]["message"], "line 9 is not valid JSON");
  EXPECT_TRUE(err["error"].contains("param") && err["error"].contains("code") && err["error"].contains("type"));
}

TEST(BatchOutputTest, RecoveryCutsAPartialLineAndKeepsWholeOnes) {
  const std::string a = SuccessLine("a", "1", api::Json::object());
  const std::string b = ErrorLine({.number = 2, .custom_id = "b"}, "2", api::InvalidRequest("bad"));
  const std::string path = Write("out.jsonl", a + "\n" + b + "\n" + a.substr(0, 20));
  auto out = RecoverOutput(path, /*retry_failed=*/false);
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(out->torn_bytes, 20);
  EXPECT_EQ(Read(path), a + "\n" + b + "\n");
  EXPECT_TRUE(out->done.at("a"));
  EXPECT_FALSE(out->done.at("b"));

  auto retry = RecoverOutput(path, /*retry_failed=*/true);
  ASSERT_TRUE(retry.ok()) << retry.status();
  EXPECT_EQ(retry->dropped_failed, 1);
  EXPECT_FALSE(retry->done.contains("b"));
  EXPECT_EQ(Read(path), a + "\n");

  EXPECT_TRUE(RecoverOutput(testing::ScratchDir() + "/none.jsonl", false)->done.empty());
  auto wrong = RecoverOutput(Write("wrong.jsonl", "{\"hello\": 1}\n"), false);
  EXPECT_EQ(wrong.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(wrong.status().message().find("wrong.jsonl:1"), std::string::npos) << wrong.status();
}

TEST(BatchOutputTest, WriterAppendsWholeLines) {
  const std::string path = Write("w.jsonl", "first\n");
  auto w = ResultWriter::Open(path);
  ASSERT_TRUE(w.ok());
  ASSERT_TRUE((*w)->Append("second").ok());
  EXPECT_EQ(Read(path), "first\nsecond\n");  // on disk before Close
  auto rival = ResultWriter::Open(path);  // a second job on the same output is refused
  EXPECT_EQ(rival.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(rival.status().message().find("another q3vl run"), std::string::npos) << rival.status();
  ASSERT_TRUE((*w)->Close().ok());
  EXPECT_FALSE((*w)->Append("third").ok());
  EXPECT_TRUE(ResultWriter::Open(path).ok());  // the lock went with Close
  EXPECT_TRUE(CheckWritable(path).ok());
  EXPECT_EQ(CheckWritable(testing::ScratchDir() + "/no/such/dir/out.jsonl").code(), absl::StatusCode::kNotFound);
  EXPECT_FALSE(CheckWritable(testing::ScratchDir()).ok());  // a directory
}

}  // namespace
}  // namespace q3vl::cluster::batch
