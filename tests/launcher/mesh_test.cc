// `mpirun -np N q3vl eval-case CASE --mesh M` on every golden case and the meshes this build
// runs: rank 0's files must equal the single-rank reference (position ids and greedy tokens
// exact, logits within 2e-3). Plus a bad mesh and a wrong world size: exit non-zero, promptly,
// with the reason. Real processes, real MPI (label multirank).
#include <sys/wait.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "core/npy.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/test_util.h"

namespace q3vl {
namespace {

struct MpiResult {
  int code;
  std::string output;
  double seconds;
};

MpiResult Mpirun(int np, const std::string& args) {
  const std::string cmd = std::string(Q3VL_MPIEXEC) + " --allow-run-as-root --oversubscribe -np " +
                          std::to_string(np) + " " + Q3VL_BINARY + " " + args + " 2>&1";
  const auto start = std::chrono::steady_clock::now();
  FILE* pipe = popen(cmd.c_str(), "r");
  std::string out;
  char buf[4096];
  while (size_t n = fread(buf, 1, sizeof buf, pipe)) out.append(buf, n);
  const int status = pclose(pipe);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, out,
          std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count()};
}

class MeshEvalCaseTest : public ::testing::TestWithParam<std::tuple<std::string, int, std::string>> {};

TEST_P(MeshEvalCaseTest, RankZeroWritesTheSingleRankResult) {
  const auto& [mesh, np, name] = GetParam();
  const std::string dir = testing::GoldenCaseDir(name);
  ASSERT_FALSE(dir.empty()) << name;
  const std::string out = ::q3vl::testing::ScratchDir() + "/mesh_" + std::to_string(np) + "_" + name;
  std::filesystem::remove_all(out);
  const MpiResult r = Mpirun(np, "eval-case " + dir + " --mesh " + mesh + " --out " + out);
  ASSERT_EQ(r.code, 0) << r.output;
  for (const char* file : {"position_ids.npy", "greedy_tokens.npy", "logits.npy"}) {
    auto got = ReadNpy(out + "/" + file);
    auto want = ReadNpy(dir + "/expected/" + file);
    ASSERT_TRUE(got.ok() && want.ok()) << file;
    EXPECT_LE(testing::MaxAbsDiff(*got, *want), std::string(file) == "logits.npy" ? 2e-3f : 0.0f) << file;
  }
}

std::vector<std::tuple<std::string, int, std::string>> Params() {
  std::vector<std::tuple<std::string, int, std::string>> params;
  const std::pair<const char*, int> meshes[] = {{"tp=2", 2}, {"ep=2", 2}, {"tp=2,ep=2", 2}, {"pp=2", 2},
                                                {"pp=2,tp=2", 4}, {"vision=1,tp=2", 3},
                                                {"vision=2,pp=2,tp=2", 6}, {"dp=2,tp=2", 4}};
  for (const auto& [mesh, np] : meshes) {
    for (const std::string& name : testing::GoldenCaseNames()) {
      params.emplace_back(mesh, np, name);
    }
  }
  return params;
}

INSTANTIATE_TEST_SUITE_P(Meshes, MeshEvalCaseTest, ::testing::ValuesIn(Params()), [](const auto& info) {
  std::string mesh = std::get<0>(info.param);
  for (char& c : mesh) c = (c == '=' || c == ',') ? '_' : c;
  return mesh + "_" + std::get<2>(info.param);
});

// `mpirun q3vl generate --mesh`: only the leader decodes the media and broadcasts the request;
// the streamed result equals the single-rank run, and a bad image stops every rank at once.
TEST(MeshTest, GenerateWithImageAndVideoMatchesOneRank) {
  const std::string dir = ::q3vl::testing::ScratchDir() + "/mesh_demo_model";
  std::filesystem::remove_all(dir);
  ASSERT_EQ(Mpirun(1, "make-model --out " + dir).code, 0);
  const std::string media = testing::TestDataDir() + "/media/";
  const std::string args = "generate --model " + dir + " --image " + media + "shapes_333x517.jpg --video " + media +
                           "testsrc2_320x240_4s.mp4 --prompt 'What happens?' --max-new-tokens 6 --ignore-eos --json";
  auto ids_of = [](const std::string& out) {
    const auto at = out.find("\"generated_ids\"");
    return at == std::string::npos ? std::string() : out.substr(at, out.find(']', at) - at);
  };
  const MpiResult one = Mpirun(1, args);
  ASSERT_EQ(one.code, 0) << one.output;
  ASSERT_FALSE(ids_of(one.output).empty()) << one.output;
  for (const auto& [mesh, np] : {std::pair{"vision=1,tp=2", 3}, std::pair{"pp=2,tp=2", 4}, std::pair{"dp=2", 2}}) {
    const MpiResult many = Mpirun(np, args + " --mesh " + mesh);
    ASSERT_EQ(many.code, 0) << many.output;
    EXPECT_EQ(ids_of(many.output), ids_of(one.output)) << mesh;
  }
  const MpiResult bad = Mpirun(3, "generate --model " + dir + " --mesh vision=1,tp=2 --image /nonexistent.png --prompt hi");
  EXPECT_NE(bad.code, 0);
  EXPECT_NE(bad.output.find("image file '/nonexistent.png' cannot be opened"), std::string::npos) << bad.output;
}

// Data-parallel attention and the micro-batched pipeline under mpirun: with ep > tp a batch of
// 3 is split over the attention groups, which step together through every MoE exchange; with
// pp > 1 the decode runs as micro-batches in flight on different stages. The leader's sequence
// equals the single-rank run, and every sequence's tokens are counted.
TEST(MeshTest, DataParallelAttentionAndPipelinedBatchMatchOneRank) {
  const std::string dir = ::q3vl::testing::ScratchDir() + "/mesh_dp_model";
  std::filesystem::remove_all(dir);
  ASSERT_EQ(Mpirun(1, "make-model --out " + dir).code, 0);
  const std::string args = "generate --model " + dir + " --prompt 'One, two, three' --max-new-tokens 5 "
                           "--ignore-eos --json --batch 3";
  auto parse = [](const MpiResult& r) {
    const auto at = r.output.find('{');
    return at == std::string::npos ? nlohmann::json() : nlohmann::json::parse(r.output.substr(at), nullptr, false);
  };
  const MpiResult one = Mpirun(1, args);
  ASSERT_EQ(one.code, 0) << one.output;
  const nlohmann::json want = parse(one);
  ASSERT_TRUE(want.is_object()) << one.output;
  ASSERT_EQ(want["stats"]["generated_tokens"], 15) << one.output;
  // The engine on every mesh; micro-batched pipelines (--micro-batches, at most pp) too.
  for (const auto& [mesh, np, extra] :
       {std::tuple{"ep=2", 2, ""}, std::tuple{"vision=1,ep=2", 3, ""}, std::tuple{"tp=2,ep=4", 4, ""},
        std::tuple{"pp=2", 2, ""}, std::tuple{"pp=2", 2, " --micro-batches 2"},
        std::tuple{"pp=2,ep=2", 4, " --micro-batches 2"}}) {
    const MpiResult many = Mpirun(np, args + " --mesh " + mesh + extra);
    ASSERT_EQ(many.code, 0) << many.output;
    const nlohmann::json got = parse(many);
    ASSERT_TRUE(got.is_object()) << many.output;
    EXPECT_EQ(got["generated_ids"], want["generated_ids"]) << mesh << extra;
    EXPECT_EQ(got["stats"]["generated_tokens"], 15) << mesh << extra;
  }
  const MpiResult too_many = Mpirun(2, args + " --mesh pp=2 --micro-batches 3");
  EXPECT_EQ(too_many.code, 2) << too_many.output;
  EXPECT_NE(too_many.output.find("exceeds the pipeline stages"), std::string::npos) << too_many.output;
}

TEST(MeshTest, BadMeshesFailFastWithTheReason) {
  const std::string dir = testing::GoldenCaseDir("01_text_only");
  const std::string out = ::q3vl::testing::ScratchDir() + "/mesh_bad";
  MpiResult r = Mpirun(2, "eval-case " + dir + " --mesh tp=4 --out " + out);
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.output.find("needs 4 ranks, this job has 2"), std::string::npos) << r.output;
  r = Mpirun(3, "eval-case " + dir + " --mesh tp=3 --out " + out);
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.output.find("valid tp for this model: 1, 2, 4"), std::string::npos) << r.output;
  EXPECT_LT(r.seconds, 30.0);
  EXPECT_FALSE(std::filesystem::exists(out + "/logits.npy"));
}

}  // namespace
}  // namespace q3vl
