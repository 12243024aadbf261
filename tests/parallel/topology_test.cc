// Topology: mesh parsing, rank layouts and named groups for the meshes DESIGN.md names, the
// shard plan against Qwen3-VL sizes, and invalid meshes rejected with useful messages.
#include "parallel/topology.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "parallel/comm_factory.h"
#include "parallel/inprocess_comm.h"
#include "parallel/shard_plan.h"

namespace q3vl::parallel {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using Groups = std::vector<std::vector<int>>;

Topology Make(absl::string_view mesh, int rank = 0) {
  auto config = ParallelConfig::FromString(mesh);
  EXPECT_TRUE(config.ok()) << config.status();
  auto topology = Topology::Create(*config, config->world_size(), rank);
  EXPECT_TRUE(topology.ok()) << topology.status();
  return *topology;
}

Groups GroupsOf(absl::string_view mesh, absl::string_view name) {
  auto groups = Make(mesh).Groups(name);
  EXPECT_TRUE(groups.ok()) << groups.status();
  return *groups;
}

std::string MeshError(absl::string_view mesh) {
  auto config = ParallelConfig::FromString(mesh);
  EXPECT_FALSE(config.ok()) << mesh;
  return std::string(config.status().message());
}

TEST(ParallelConfigTest, ParsesMeshStrings) {
  auto config = ParallelConfig::FromString("vision=1,pp=1,tp=8,ep=8");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->ToString(), "vision=1,pp=1,tp=8,ep=8,dp=1");
  EXPECT_EQ(config->world_size(), 9);
  auto spaced = ParallelConfig::FromString(" ep = 4 , tp=2, DP=2 ");
  ASSERT_TRUE(spaced.ok()) << spaced.status();
  EXPECT_EQ(spaced->ToString(), "vision=0,pp=1,tp=2,ep=4,dp=2");
  EXPECT_EQ(spaced->world_size(), 8);
  auto single = ParallelConfig::FromString("");
  ASSERT_TRUE(single.ok());
  EXPECT_EQ(single->world_size(), 1);
}

TEST(ParallelConfigTest, RejectsInvalidMeshesWithUsefulMessages) {
  EXPECT_THAT(MeshError("tp=0"), HasSubstr("tp=0 is out of range"));
  EXPECT_THAT(MeshError("vision=-1"), HasSubstr("vision must be in [0"));
  EXPECT_THAT(MeshError("tp=3,ep=2"), HasSubstr("the smaller of tp and ep must divide the larger"));
  EXPECT_THAT(MeshError("cp=2"), HasSubstr("unknown size 'cp' (expected vision, pp, tp, ep, dp"));
  EXPECT_THAT(MeshError("tp=2,tp=4"), HasSubstr("'tp' given twice"));
  EXPECT_THAT(MeshError("tp=two"), HasSubstr("is not key=integer"));
  EXPECT_THAT(MeshError("tp"), HasSubstr("is not key=integer"));
  EXPECT_THAT(MeshError("tp=65536,pp=65536"), HasSubstr("limit"));
}

TEST(TopologyTest, WorldSizeMismatchSaysWhatIsNeeded) {
  auto config = ParallelConfig::FromString("vision=1,tp=2");
  ASSERT_TRUE(config.ok());
  auto topology = Topology::Create(*config, 4, 0);
  ASSERT_FALSE(topology.ok());
  EXPECT_THAT(topology.status().message(), HasSubstr("needs 3 ranks"));
  EXPECT_THAT(topology.status().message(), HasSubstr("mpirun -np 3"));
  EXPECT_FALSE(Topology::Create(*config, 3, 3).ok());
}

TEST(TopologyTest, TensorParallel) {
  EXPECT_EQ(GroupsOf("tp=2", "tp"), (Groups{{0, 1}}));
  EXPECT_EQ(GroupsOf("tp=2", "etp"), (Groups{{0, 1}}));  // TP MoE: experts split over both
  EXPECT_EQ(GroupsOf("tp=2", "ep"), (Groups{{0}, {1}}));
  EXPECT_EQ(GroupsOf("tp=2", "vision"), Groups{});
  EXPECT_EQ(GroupsOf("tp=2", "vision_bcast"), (Groups{{0, 1}}));
  const RankCoords c = Make("tp=2", 1).coords();
  EXPECT_EQ(c.tp_rank, 1);
  EXPECT_EQ(c.etp_rank, 1);
  EXPECT_EQ(c.ep_rank, 0);
  EXPECT_EQ(c.attn_dp_rank, 0);
}

TEST(TopologyTest, ExpertParallelWithDataParallelAttention) {
  EXPECT_EQ(GroupsOf("ep=2", "tp"), (Groups{{0}, {1}}));
  EXPECT_EQ(GroupsOf("ep=2", "ep"), (Groups{{0, 1}}));
  EXPECT_EQ(GroupsOf("ep=2", "etp"), (Groups{{0}, {1}}));
  EXPECT_EQ(Make("ep=2", 1).coords().attn_dp_rank, 1);
}

TEST(TopologyTest, ExpertParallelCarvedOutOfTheTensorParallelGroup) {
  EXPECT_EQ(GroupsOf("tp=2,ep=2", "tp"), (Groups{{0, 1}}));
  EXPECT_EQ(GroupsOf("tp=2,ep=2", "ep"), (Groups{{0, 1}}));
  EXPECT_EQ(GroupsOf("tp=4,ep=2", "tp"), (Groups{{0, 1, 2, 3}}));
  EXPECT_EQ(GroupsOf("tp=4,ep=2", "etp"), (Groups{{0, 1}, {2, 3}}));
  EXPECT_EQ(GroupsOf("tp=4,ep=2", "ep"), (Groups{{0, 2}, {1, 3}}));
  EXPECT_EQ(GroupsOf("tp=2,ep=4", "tp"), (Groups{{0, 1}, {2, 3}}));
  EXPECT_EQ(GroupsOf("tp=2,ep=4", "ep"), (Groups{{0, 1, 2, 3}}));
  const RankCoords c = Make("tp=4,ep=2", 3).coords();
  EXPECT_EQ(c.ep_rank, 1);
  EXPECT_EQ(c.etp_rank, 1);
}

TEST(TopologyTest, PipelineStages) {
  EXPECT_EQ(GroupsOf("pp=2", "pp"), (Groups{{0, 1}}));
  EXPECT_EQ(GroupsOf("pp=2", "stage"), (Groups{{0}, {1}}));
  EXPECT_EQ(GroupsOf("pp=2", "vision_bcast"), (Groups{{0}}));
  EXPECT_EQ(Make("pp=2", 1).coords().stage, 1);
  EXPECT_EQ(Make("pp=2", 1).ReplicaLeader(), 0);
}

TEST(TopologyTest, VisionRanksComeFirst) {
  const Topology vision = Make("vision=1,tp=2", 0);
  EXPECT_TRUE(vision.is_vision());
  EXPECT_EQ(vision.coords().vision_rank, 0);
  EXPECT_EQ(vision.ReplicaLeader(), 1);
  EXPECT_EQ(GroupsOf("vision=1,tp=2", "vision"), (Groups{{0}}));
  EXPECT_EQ(GroupsOf("vision=1,tp=2", "tp"), (Groups{{1, 2}}));
  EXPECT_EQ(GroupsOf("vision=1,tp=2", "vision_bcast"), (Groups{{0, 1, 2}}));
  auto tp = vision.Group("tp");
  ASSERT_TRUE(tp.ok());
  EXPECT_TRUE(tp->empty());
  EXPECT_EQ(*vision.GroupIndex("tp"), -1);
}

TEST(TopologyTest, VisionAndPipelineAndTensorParallel) {
  const absl::string_view mesh = "vision=2,pp=2,tp=2";
  EXPECT_EQ(Make(mesh).world_size(), 6);
  EXPECT_EQ(GroupsOf(mesh, "vision"), (Groups{{0, 1}}));
  EXPECT_EQ(GroupsOf(mesh, "stage"), (Groups{{2, 3}, {4, 5}}));
  EXPECT_EQ(GroupsOf(mesh, "tp"), (Groups{{2, 3}, {4, 5}}));
  EXPECT_EQ(GroupsOf(mesh, "pp"), (Groups{{2, 4}, {3, 5}}));
  EXPECT_EQ(GroupsOf(mesh, "vision_bcast"), (Groups{{0, 2, 3}}));
  const RankCoords c = Make(mesh, 5).coords();
  EXPECT_EQ(c.stage, 1);
  EXPECT_EQ(c.tp_rank, 1);
  EXPECT_EQ(Make(mesh, 5).DecoderRank(0, 1), 3);
  EXPECT_THAT(*Make(mesh, 4).Group("pp"), ElementsAre(2, 4));
}

TEST(TopologyTest, ReplicasAreOutermost) {
  const absl::string_view mesh = "vision=1,tp=2,dp=2";
  EXPECT_EQ(GroupsOf(mesh, "replica"), (Groups{{0, 1, 2}, {3, 4, 5}}));
  EXPECT_EQ(GroupsOf(mesh, "dp"), (Groups{{0, 3}, {1, 4}, {2, 5}}));
  EXPECT_EQ(GroupsOf(mesh, "tp"), (Groups{{1, 2}, {4, 5}}));
  EXPECT_EQ(GroupsOf(mesh, "world"), (Groups{{0, 1, 2, 3, 4, 5}}));
  EXPECT_EQ(Make(mesh, 4).ReplicaLeader(), 4);
  EXPECT_EQ(Make(mesh, 4).coords().replica, 1);
}

TEST(TopologyTest, EveryGroupKindPartitionsItsMembers) {
  for (absl::string_view mesh : {"tp=4,ep=2,pp=2", "vision=2,tp=2,ep=4,dp=2", "ep=8"}) {
    const Topology t = Make(mesh);
    for (absl::string_view name : Topology::GroupNames()) {
      std::vector<int> seen(t.world_size(), 0);
      const Groups groups = *t.Groups(name);
      for (const auto& group : groups)
        for (int r : group) ++seen[r];
      for (int r = 0; r < t.world_size(); ++r) EXPECT_LE(seen[r], 1) << mesh << " " << name;
    }
  }
  EXPECT_EQ(Make("tp=2").Groups("experts").status().code(), absl::StatusCode::kNotFound);
}

constexpr ModelDims k235B = {.num_heads = 64,
                             .num_kv_heads = 4,
                             .num_experts = 128,
                             .moe_intermediate = 1536,
                             .num_layers = 94,
                             .num_deepstack = 3};

TEST(ShardPlanTest, Qwen3Vl235bOnEightRanks) {
  auto plan = ComputeShardPlan(*ParallelConfig::FromString("vision=1,tp=8,ep=8"), k235B);
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ(plan->local_heads, 8);
  EXPECT_EQ(plan->local_kv_heads, 1);
  EXPECT_EQ(plan->kv_replication, 2);  // 8 TP ranks, 4 KV heads
  EXPECT_EQ(plan->FirstKvHead(3), 1);
  EXPECT_EQ(plan->local_experts, 16);
  EXPECT_EQ(plan->FirstExpert(2), 32);
  EXPECT_EQ(plan->local_moe_intermediate, 1536);
  EXPECT_THAT(plan->layer_starts, ElementsAre(0, 94));
}

TEST(ShardPlanTest, SplitsLayersAndExpertWidth) {
  auto plan = ComputeShardPlan(*ParallelConfig::FromString("pp=4,tp=4,ep=2"), k235B);
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_THAT(plan->layer_starts, ElementsAre(0, 24, 48, 71, 94));
  EXPECT_EQ(plan->local_kv_heads, 1);
  EXPECT_EQ(plan->local_moe_intermediate, 768);  // 2 ranks per expert group
  EXPECT_EQ(plan->FirstIntermediate(1), 768);
  const ModelDims deep = {.num_heads = 8,
                          .num_kv_heads = 2,
                          .num_experts = 16,
                          .moe_intermediate = 128,
                          .num_layers = 8,
                          .num_deepstack = 3};
  auto grown = ComputeShardPlan(*ParallelConfig::FromString("pp=4"), deep);
  ASSERT_TRUE(grown.ok()) << grown.status();
  EXPECT_THAT(grown->layer_starts, ElementsAre(0, 3, 5, 7, 8));  // stage 0 owns DeepStack layers
}

std::string PlanError(absl::string_view mesh, const ModelDims& dims) {
  auto plan = ComputeShardPlan(*ParallelConfig::FromString(mesh), dims);
  EXPECT_FALSE(plan.ok()) << mesh;
  return std::string(plan.status().message());
}

TEST(ShardPlanTest, RejectsMeshesThatDoNotDivideTheModel) {
  EXPECT_THAT(PlanError("tp=3", k235B), HasSubstr("tp=3 does not divide num_heads=64 (valid tp "
                                                  "for this model: 1, 2, 4, 8, 16, 32, 64)"));
  const ModelDims odd_kv = {.num_heads = 24, .num_kv_heads = 4, .num_layers = 4};
  EXPECT_THAT(PlanError("tp=6", odd_kv), HasSubstr("neither divides num_kv_heads=4"));
  EXPECT_THAT(PlanError("ep=3", k235B), HasSubstr("valid ep: 1, 2, 4, 8, 16, 32, 64, 128"));
  EXPECT_THAT(PlanError("ep=2", odd_kv), HasSubstr("the model has no experts"));
  ModelDims narrow = k235B;
  narrow.moe_intermediate = 1535;
  EXPECT_THAT(PlanError("tp=2", narrow), HasSubstr("does not divide moe_intermediate=1535"));
  ModelDims shallow = k235B;
  shallow.num_layers = 4;
  EXPECT_THAT(PlanError("pp=3", shallow), HasSubstr("(valid pp: 1..2)"));
}

TEST(CommFactoryTest, ParsesBackendsAndReportsMissingOnes) {
  EXPECT_EQ(*ParseCommBackend("mpi"), CommBackend::kMpi);
  EXPECT_FALSE(ParseCommBackend("gloo").ok());
  EXPECT_TRUE(CommBackendBuilt(CommBackend::kMpi));
  if (!CommBackendBuilt(CommBackend::kNccl)) {
    EXPECT_EQ(DataPlaneFactoryFor(CommBackend::kNccl, {}).status().code(),
              absl::StatusCode::kUnimplemented);
    return;
  }
  // Built with NCCL: a one-rank NCCL communicator over an in-process host works on a GPU and
  // is a clean error without one.
  std::shared_ptr<Communicator> host = std::move(CreateInProcessWorld(1)[0]);
  auto nccl = CreateDataPlane(CommBackend::kNccl, host, {.timeout = absl::Seconds(30)});
  if (nccl.ok()) {
    EXPECT_EQ((*nccl)->backend_name(), "nccl");
  } else {
    EXPECT_NE(nccl.status().message(), "") << "no GPU: " << nccl.status();
  }
}

}  // namespace
}  // namespace q3vl::parallel
