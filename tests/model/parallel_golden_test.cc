// Every golden case on tensor-, expert- and pipeline-parallel meshes, ranks as threads over the in-process
// communicator: each rank loads only its shards, and every rank must reproduce the single-rank
// reference (position ids and greedy tokens exact, logits within 2e-3). The same code runs under
// mpirun in tests/launcher (multirank label).
#include <omp.h>

#include <cstdio>
#include <functional>
#include <mutex>
#include <string>
#include <tuple>
#include <vector>

#include "core/backend.h"
#include "core/npy.h"
#include "gtest/gtest.h"
#include "launcher/eval_case.h"
#include "model/generator.h"
#include "model/qwen3_vl.h"
#include "parallel/comm_groups.h"
#include "parallel/inprocess_comm.h"
#include "parallel/topology.h"
#include "tests/mesh_util.h"
#include "tests/test_util.h"

namespace q3vl {
namespace {

using testing::OnMesh;
using testing::Plane;

struct RankOutcome {
  bool vision_rank = false;  // served the tower; no logits
  Tensor logits;
  std::vector<int64_t> tokens;
  uint64_t bytes_read = 0;
  std::string error;
};

// Runs `case_dir` on `mesh`; returns every rank's outcome.
std::vector<RankOutcome> RunMesh(const std::string& case_dir, const std::string& mesh, Plane plane = Plane::kCpu) {
  std::vector<RankOutcome> outcomes(parallel::ParallelConfig::FromString(mesh)->world_size());
  const std::vector<std::string> errors =
      OnMesh(case_dir, mesh, [&](int rank, const model::Qwen3VL& model, const launcher::GoldenCase& golden) {
        RankOutcome& out = outcomes[rank];
        out.bytes_read = model.bytes_read();
        if (model.is_vision_rank()) {
          out.vision_rank = true;
          model::ServeVisionFor(model, {golden.request});
          return;
        }
        auto result = launcher::RunGoldenCaseWithGenerator(model, golden);
        if (!result.ok()) return void(out.error = result.status().ToString());
        out.logits = result->result.prefill_logits;
        out.tokens = result->result.tokens;
      },
      plane);
  for (size_t r = 0; r < errors.size(); ++r) {
    if (!errors[r].empty()) outcomes[r].error = errors[r];
  }
  return outcomes;
}

void ExpectEveryRankMatchesTheReference(const std::string& mesh, const std::string& name, Plane plane) {
  const std::string dir = testing::GoldenCaseDir(name);
  ASSERT_FALSE(dir.empty()) << "golden case " << name << " missing";
  auto expected_logits = ReadNpy(dir + "/expected/logits.npy");
  auto expected_tokens = ReadNpy(dir + "/expected/greedy_tokens.npy");
  ASSERT_TRUE(expected_logits.ok() && expected_tokens.ok());
  const std::vector<int64_t> want(expected_tokens->data<int64_t>(),
                                  expected_tokens->data<int64_t>() + expected_tokens->numel());
  const std::vector<RankOutcome> outcomes = RunMesh(dir, mesh, plane);
  for (size_t r = 0; r < outcomes.size(); ++r) {
    SCOPED_TRACE("rank " + std::to_string(r));
    ASSERT_EQ(outcomes[r].error, "");
    if (outcomes[r].vision_rank) continue;
    EXPECT_LE(testing::MaxAbsDiff(outcomes[r].logits, *expected_logits), 2e-3f);
    EXPECT_EQ(outcomes[r].tokens, want);
  }
}

// (plane, mesh, case)
class ParallelGoldenTest : public ::testing::TestWithParam<std::tuple<Plane, std::string, std::string>> {};

TEST_P(ParallelGoldenTest, EveryRankMatchesTheReference) {
  const auto& [plane, mesh, name] = GetParam();
  ExpectEveryRankMatchesTheReference(mesh, name, plane);
}

// Every golden case on each of `meshes`.
std::vector<std::tuple<Plane, std::string, std::string>> Params(Plane plane, std::vector<std::string> meshes) {
  std::vector<std::tuple<Plane, std::string, std::string>> params;
  for (const std::string& mesh : meshes) {
    for (const std::string& name : testing::GoldenCaseNames()) {
      // 07 has 4 layers, 3 of them DeepStack layers that stage 0 must own: pp <= 2.
      if (mesh == "pp=3" && name == "07_realvocab_image") continue;
      params.emplace_back(plane, mesh, name);
    }
  }
  return params;
}

std::string ParamName(const ::testing::TestParamInfo<std::tuple<Plane, std::string, std::string>>& info) {
  std::string mesh = std::get<1>(info.param);
  for (char& c : mesh) c = (c == '=' || c == ',') ? '_' : c;
  return mesh + "_" + std::get<2>(info.param);
}

INSTANTIATE_TEST_SUITE_P(Meshes, ParallelGoldenTest,
                         ::testing::ValuesIn(Params(Plane::kCpu, {"tp=2", "ep=2", "tp=2,ep=2", "tp=4", "tp=2,ep=4",
                                                                  "tp=4,ep=2", "pp=2", "pp=3", "pp=2,tp=2",
                                                                  "pp=2,tp=2,ep=2", "vision=1,tp=2", "vision=2",
                                                                  "vision=3,pp=2", "vision=2,pp=2,tp=2", "dp=2",
                                                                  "dp=2,vision=1,tp=2"})),
                         ParamName);

// The same on a device backend (DeviceSimBackend: the host may not touch its memory) with NCCL's
// split of the planes: every tensor a collective moves is the backend's, every host value goes
// over the host communicators. One mesh per kind of exchange: tensor-parallel partial sums and
// vocab-parallel logits, the expert all-to-all with and without data-parallel attention,
// pipeline sends and broadcasts, the vision stage's gathers and DeepStack broadcast, replicas.
INSTANTIATE_TEST_SUITE_P(DeviceMeshes, ParallelGoldenTest,
                         ::testing::ValuesIn(Params(Plane::kDeviceSim,
                                                    {"tp=2", "ep=2", "tp=2,ep=4", "pp=2,tp=2,ep=2",
                                                     "vision=2,pp=2,tp=2", "dp=2,vision=1,tp=2"})),
                         ParamName);

// Generation on a mesh samples without gathering logits (vocab-parallel argmax / top-k
// candidates, the last stage broadcasting tokens): greedy, top-k and top-p sampling must pick
// exactly the single-rank tokens on every rank. One request per entry of `sampling`, all with
// the case's prompt; returns every rank's tokens of all requests, concatenated.
std::vector<std::vector<int64_t>> Generate(const std::string& case_dir, const std::string& mesh,
                                           const std::vector<model::SamplingParams>& sampling,
                                           std::vector<model::GeneratorStats>* stats = nullptr,
                                           Plane plane = Plane::kCpu) {
  std::vector<std::vector<int64_t>> tokens(parallel::ParallelConfig::FromString(mesh)->world_size());
  if (stats) stats->assign(tokens.size(), {});
  const std::vector<std::string> errors =
      OnMesh(case_dir, mesh, [&](int rank, const model::Qwen3VL& model, const launcher::GoldenCase& golden) {
        std::vector<model::GenerationRequest> requests(sampling.size(), golden.request);
        for (size_t i = 0; i < sampling.size(); ++i) requests[i].sampling = sampling[i];
        if (model.is_vision_rank()) return model::ServeVisionFor(model, requests);
        std::vector<std::pair<size_t, int64_t>> streamed;
        // Pipelines decode as micro-batches (one per stage), which must not change a token.
        model::Generator generator(model, {.on_token = [&](size_t i, int64_t t) { streamed.emplace_back(i, t); },
                                           .micro_batches = 4});
        auto results = generator.Generate(requests);
        Q3VL_CHECK_OK(results.status());
        if (stats) (*stats)[rank] = generator.stats();
        size_t count = 0;
        for (const model::GenerationResult& r : *results) {
          tokens[rank].insert(tokens[rank].end(), r.tokens.begin(), r.tokens.end());
          count += r.tokens.size();
        }
        EXPECT_EQ(streamed.size(), count) << "rank " << rank << ": every token reaches on_token once";
      },
      plane);
  for (const std::string& e : errors) EXPECT_EQ(e, "");
  return tokens;
}

TEST(ParallelSamplingTest, MeshesSampleTheSingleRankTokens) {
  const std::string dir = testing::GoldenCaseDir("07_realvocab_image");
  ASSERT_FALSE(dir.empty());
  model::SamplingParams greedy{.max_new_tokens = 6};
  model::SamplingParams top_k{.temperature = 1.5f, .top_k = 40, .seed = 11, .max_new_tokens = 6};
  model::SamplingParams top_p{.temperature = 1.5f, .top_p = 0.9f, .seed = 5, .max_new_tokens = 6};
  for (const model::SamplingParams& sp : {greedy, top_k, top_p}) {
    const std::vector<int64_t> want = Generate(dir, "tp=1", {sp, sp})[0];  // two sequences, one seed
    ASSERT_EQ(want.size(), 12u);
    for (const char* mesh : {"tp=2", "tp=4", "pp=2", "pp=2,tp=2", "pp=2,ep=2", "tp=2,ep=2", "ep=2", "tp=2,ep=4"}) {
      const auto got = Generate(dir, mesh, {sp, sp});
      for (size_t r = 0; r < got.size(); ++r) {
        EXPECT_EQ(got[r], want) << mesh << " rank " << r << " temperature " << sp.temperature << " top_k " << sp.top_k;
      }
    }
    // Device meshes: candidates and tokens over the control planes, pipelined micro-batches.
    for (const char* mesh : {"tp=2", "pp=2,tp=2", "pp=2,ep=2"}) {
      const auto got = Generate(dir, mesh, {sp, sp}, nullptr, Plane::kDeviceSim);
      for (size_t r = 0; r < got.size(); ++r) {
        EXPECT_EQ(got[r], want) << "device " << mesh << " rank " << r << " temperature " << sp.temperature;
      }
    }
  }
}

// Data-parallel attention (ep > tp): each attention group runs its own requests and keeps only
// their KV cache. Requests of unequal lengths leave one group idle (stepping with zero tokens
// in the MoE exchanges) while another decodes, and more groups than requests leave some idle
// throughout; every rank must still return the single-rank tokens of every request.
TEST(ParallelSamplingTest, DataParallelAttentionGroupsRunTheirOwnRequests) {
  const std::string dir = testing::GoldenCaseDir("07_realvocab_image");
  ASSERT_FALSE(dir.empty());
  const std::vector<model::SamplingParams> sampling = {
      {.max_new_tokens = 6},
      {.temperature = 1.5f, .top_k = 40, .seed = 11, .max_new_tokens = 2},
      {.temperature = 1.5f, .top_p = 0.9f, .seed = 5, .max_new_tokens = 1}};
  const std::vector<int64_t> want = Generate(dir, "tp=1", sampling)[0];
  ASSERT_EQ(want.size(), 9u);
  // Requests go to the group with the fewest tokens so far: 0 -> group 0, 1 and 2 -> group 1
  // when there are two groups, one each when there are more.
  // Group 0's request decodes 6 tokens: 5 steps after the prefill. Under pp=2 the decode is
  // micro-batched: items alternate between 2 micro-batches, and group 0's second one is empty,
  // so its 5 steps take 10 items; the groups stop at the same item.
  struct Want {
    const char* mesh;
    std::vector<int64_t> sequences;  // per rank (-1: the vision rank)
    int64_t decode_steps;
  };
  const Want meshes[] = {{"ep=2", {1, 2}, 5},
                         {"ep=4", {1, 1, 1, 0}, 5},
                         {"tp=2,ep=4", {1, 1, 2, 2}, 5},
                         {"pp=2,ep=2", {1, 2, 1, 2}, 10},
                         {"pp=2,ep=4", {1, 1, 1, 0, 1, 1, 1, 0}, 5},  // one request per group at most: not micro-batched
                         {"vision=1,ep=2", {-1, 1, 2}, 5}};
  for (Plane plane : {Plane::kCpu, Plane::kDeviceSim}) {
    for (const Want& m : meshes) {
      if (plane == Plane::kDeviceSim && std::string(m.mesh) != "tp=2,ep=4" && std::string(m.mesh) != "pp=2,ep=2") {
        continue;  // two meshes suffice on the device planes
      }
      std::vector<model::GeneratorStats> stats;
      const auto got = Generate(dir, m.mesh, sampling, &stats, plane);
      for (size_t r = 0; r < got.size(); ++r) {
        if (m.sequences[r] < 0) continue;
        const char* where = plane == Plane::kDeviceSim ? "device " : "";
        EXPECT_EQ(got[r], want) << where << m.mesh << " rank " << r;
        EXPECT_EQ(stats[r].sequences, m.sequences[r]) << where << m.mesh << " rank " << r;
        EXPECT_EQ(stats[r].decode_steps, m.decode_steps) << where << m.mesh << " rank " << r;
      }
    }
  }
}

// Sharded loading reads about 1/ranks of the sharded tensors: on tp=2,ep=2 of the
// real-vocabulary case (LM head and experts dominate) each rank reads well under the whole.
TEST(ParallelLoadTest, EachRankReadsItsShare) {
  const std::string dir = testing::GoldenCaseDir("07_realvocab_image");
  ASSERT_FALSE(dir.empty());
  const std::vector<RankOutcome> single = RunMesh(dir, "tp=1");
  const std::vector<RankOutcome> split = RunMesh(dir, "tp=2,ep=2");
  ASSERT_EQ(single[0].error, "");
  for (size_t r = 0; r < split.size(); ++r) {
    const RankOutcome& o = split[r];
    ASSERT_EQ(o.error, "");
    std::printf("tp=2,ep=2 rank %zu read %llu of %llu bytes (%.2f)\n", r,
                static_cast<unsigned long long>(o.bytes_read),
                static_cast<unsigned long long>(single[0].bytes_read),
                static_cast<double>(o.bytes_read) / single[0].bytes_read);
    EXPECT_LT(o.bytes_read, single[0].bytes_read * 0.7) << o.bytes_read << " of " << single[0].bytes_read;
  }
  // With a vision stage, the vision rank reads only the tower and the decoder ranks everything
  // but the tower: together they read each tensor once (the tp-split ones once in total).
  const std::vector<RankOutcome> staged = RunMesh(dir, "vision=1,tp=2");
  ASSERT_EQ(staged[0].error, "");
  ASSERT_TRUE(staged[0].vision_rank);
  for (size_t r = 0; r < staged.size(); ++r) {
    std::printf("vision=1,tp=2 rank %zu read %llu bytes\n", r, static_cast<unsigned long long>(staged[r].bytes_read));
  }
  EXPECT_LE(staged[0].bytes_read + staged[1].bytes_read + staged[2].bytes_read, single[0].bytes_read * 1.2);
  EXPECT_LT(staged[1].bytes_read, split[0].bytes_read);
}

TEST(ParallelLoadTest, InvalidMeshesAreRejectedBeforeAnyWeightIsRead) {
  const std::string dir = testing::GoldenCaseDir("01_text_only");
  auto config = model::ModelConfig::FromFile(dir + "/model/config.json");
  ASSERT_TRUE(config.ok());
  auto bad_tp = model::PlanShards(*config, *parallel::ParallelConfig::FromString("tp=3"));
  ASSERT_FALSE(bad_tp.ok());
  EXPECT_NE(bad_tp.status().message().find("tp"), absl::string_view::npos) << bad_tp.status();
  auto bad_ep = model::PlanShards(*config, *parallel::ParallelConfig::FromString("ep=3"));
  EXPECT_FALSE(bad_ep.ok());
  auto deep = model::PlanShards(*config, *parallel::ParallelConfig::FromString("pp=6"));
  EXPECT_FALSE(deep.ok());  // 5 layers
  auto replicas = model::PlanShards(*config, *parallel::ParallelConfig::FromString("dp=2,tp=3"));
  EXPECT_FALSE(replicas.ok());
}

}  // namespace
}  // namespace q3vl
