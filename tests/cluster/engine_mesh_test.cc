// The engine driving a whole replica on meshes, ranks as threads (in-process communicators):
// the leader's engine sends each step's plan through a ReplicaExecutor, every other rank
// follows (decoder ranks with a ModelRunner, vision ranks with a VisionStageRunner), and a mixed
// workload arriving at different steps with chunked prefill gives exactly the single-rank
// engine's tokens on tp, ep, tp+ep, pp and vision-stage meshes, with and without an encoder
// cache (the two media requests share their items, so stage 0 and the vision ranks must agree
// on every hit).
#include <algorithm>
#include <map>

#include "cluster/engine/executor.h"
#include "gtest/gtest.h"
#include "tests/cluster/engine_test_util.h"
#include "tests/mesh_util.h"
#include "tests/test_util.h"

namespace q3vl::cluster {
namespace {

constexpr int64_t kBudget = 16, kPages = 64;
const std::vector<int> kArrival = {0, 2, 3, 5, 9};

std::map<std::string, RequestOutput> SingleRank(const std::string& dir) {
  std::unique_ptr<Backend> backend = *CreateBackend(BackendKind::kCpu);
  auto golden = launcher::ReadGoldenCase(dir);
  Q3VL_CHECK_OK(golden.status());
  auto model = model::Qwen3VL::Load(dir + "/model", *backend);
  Q3VL_CHECK_OK(model.status());
  Replica replica(**model, kBudget, kPages);
  return Staggered(replica.engine, MixedRequests(golden->request), kArrival);
}

class EngineMeshTest : public ::testing::TestWithParam<std::tuple<testing::Plane, std::string, int64_t>> {};

TEST_P(EngineMeshTest, ReplicaGivesTheSingleRankTokens) {
  const auto& [plane, mesh, encoder_cache_tokens] = GetParam();
  const std::string dir = testing::GoldenCaseDir("06_image_and_video");
  const std::map<std::string, RequestOutput> want = SingleRank(dir);
  const int world = parallel::ParallelConfig::FromString(mesh)->world_size();
  const int leader = parallel::ParallelConfig::FromString(mesh)->vision;  // local rank of stage 0's first rank
  std::vector<const parallel::CommGroups*> groups(world);
  std::map<std::string, RequestOutput> got;
  int64_t prefix_hits = 0;
  std::vector<std::string> follower_errors(world);
  std::vector<int64_t> tokens_run(world, -1);  // decoder ranks: tokens through their attention
  std::vector<int> attn_group(world, -1);
  const std::vector<std::string> errors = testing::OnMesh(
      dir, mesh,
      [&](int rank, const model::Qwen3VL& model, const launcher::GoldenCase& golden) {
        parallel::Communicator& replica = *groups[rank]->group("replica").host;
        std::unique_ptr<model::StepRunner> runner;
        if (model.is_vision_rank()) {
          runner = std::make_unique<model::VisionStageRunner>(model, encoder_cache_tokens);
        } else {
          runner = std::make_unique<model::ModelRunner>(
              model, model::ModelRunnerOptions{.page_size = 16, .num_pages = kPages, .kv_dtype = DType::kF32,
                                               .encoder_cache_tokens = encoder_cache_tokens});
        }
        auto* decoder_runner = dynamic_cast<model::ModelRunner*>(runner.get());
        if (decoder_runner != nullptr) attn_group[rank] = model.decoder().shard().attn_group;
        if (replica.rank() != leader) {
          const absl::Status s = FollowReplica(replica, leader, *runner);
          if (!s.ok()) follower_errors[rank] = s.ToString();
          if (decoder_runner != nullptr) tokens_run[rank] = decoder_runner->tokens_run();
          return;
        }
        ReplicaExecutor executor(replica, *runner);
        Engine engine(executor, {.scheduler = {.max_num_batched_tokens = kBudget, .max_num_seqs = 16, .page_size = 16,
                                               .num_pages = kPages,
                                               .max_model_len = model.config().text.max_position_embeddings,
                                               .num_groups = model.decoder().shard().attn_groups}});
        got = Staggered(engine, MixedRequests(golden.request), kArrival);
        prefix_hits = engine.metrics().Snapshot().prefix_cache_hits_total;
        Q3VL_CHECK_OK(executor.Stop());
        tokens_run[rank] = decoder_runner->tokens_run();
      },
      plane, [&](int rank, const parallel::CommGroups& g) { groups[rank] = &g; });
  for (int r = 0; r < world; ++r) {
    EXPECT_EQ(errors[r], "") << "rank " << r;
    EXPECT_EQ(follower_errors[r], "") << "rank " << r;
  }
  // Data-parallel attention splits the work: with G attention groups each rank runs a share,
  // and the groups' shares add up to what one group would run.
  const int num_groups = 1 + *std::max_element(attn_group.begin(), attn_group.end());
  std::map<int, int64_t> per_group;
  int64_t most = 0;
  for (int r = 0; r < world; ++r) {
    if (attn_group[r] < 0) continue;
    per_group[attn_group[r]] = tokens_run[r];  // equal within a group (checked by the results)
    most = std::max(most, tokens_run[r]);
  }
  int64_t sum = 0;
  for (const auto& [g, n] : per_group) sum += n;
  if (num_groups > 1) {
    for (const auto& [g, n] : per_group) EXPECT_LT(n, sum) << "group " << g << " ran every token";
  } else {
    EXPECT_EQ(sum, most);
  }
  // The sampled copy of the media request arrives after the greedy one filled pages: it
  // starts after the shared prefix on every rank (the plans carry the pages).
  EXPECT_GT(prefix_hits, 0);
  ASSERT_EQ(got.size(), want.size());
  for (const auto& [id, w] : want) {
    EXPECT_EQ(got.at(id).token_ids, w.token_ids) << id;
    EXPECT_EQ(got.at(id).finish, FinishReason::kLength) << id;
  }
}

INSTANTIATE_TEST_SUITE_P(
    Meshes, EngineMeshTest,
    ::testing::Values(std::tuple{testing::Plane::kCpu, "tp=2", int64_t{0}},
                      std::tuple{testing::Plane::kCpu, "ep=2", int64_t{0}},
                      std::tuple{testing::Plane::kCpu, "tp=2,ep=2", int64_t{0}},
                      std::tuple{testing::Plane::kCpu, "pp=2", int64_t{0}},
                      std::tuple{testing::Plane::kCpu, "vision=1,tp=2", int64_t{0}},
                      std::tuple{testing::Plane::kDeviceSim, "vision=1,pp=2,tp=2", int64_t{0}},
                      std::tuple{testing::Plane::kCpu, "tp=2,ep=2", int64_t{100000}},
                      std::tuple{testing::Plane::kCpu, "vision=1,tp=2", int64_t{100000}},
                      std::tuple{testing::Plane::kDeviceSim, "vision=1,pp=2,tp=2", int64_t{100000}},
                      // Data-parallel attention: 2 and 4 groups, with a pipeline, with a vision
                      // stage whose collective encoding every group joins.
                      std::tuple{testing::Plane::kCpu, "ep=4", int64_t{0}},
                      std::tuple{testing::Plane::kCpu, "pp=2,ep=2", int64_t{0}},
                      std::tuple{testing::Plane::kCpu, "vision=1,ep=2", int64_t{0}},
                      std::tuple{testing::Plane::kCpu, "vision=1,ep=2", int64_t{100000}}),
    [](const auto& info) {
      std::string name = std::string(std::get<0>(info.param) == testing::Plane::kCpu ? "cpu_" : "device_") +
                         std::get<1>(info.param) + (std::get<2>(info.param) > 0 ? "_encoder_cache" : "");
      for (char& c : name) {
        if (c == '=' || c == ',') c = '_';
      }
      return name;
    });

}  // namespace
}  // namespace q3vl::cluster
