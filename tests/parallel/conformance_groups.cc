// Conformance: groups (Split, SubGroup, the Topology's named groups through CommGroups),
// size-1 groups as no-ops, argument errors that stay local, and the host control-plane helpers.
#include <memory>
#include <string>

#include "gtest/gtest.h"
#include "parallel/comm_groups.h"
#include "parallel/topology.h"
#include "tests/parallel/communicator_conformance.h"
#include "tests/parallel/conformance_util.h"

namespace q3vl::parallel::testing {
namespace {

// The sum over `comm` of `value`, as an i64 via all-gather (works for any communicator).
int64_t SumOver(Communicator& comm, int64_t value) {
  auto all = AllGatherValue(comm, value);
  EXPECT_TRUE(all.ok()) << all.status();
  int64_t sum = 0;
  if (all.ok())
    for (int64_t v : *all) sum += v;
  return sum;
}

TEST_P(CommConformanceTest, SplitByParityRanksByKey) {
  RunRanks([](Communicator& world) {
    const int n = world.size(), r = world.rank();
    auto split = world.Split(/*color=*/r % 2, /*key=*/-r);  // descending world rank
    ASSERT_TRUE(split.ok()) << split.status();
    Communicator& half = **split;
    int members = 0, higher = 0, expected_sum = 0;
    for (int q = r % 2; q < n; q += 2) {
      ++members;
      higher += q > r;
      expected_sum += q;
    }
    EXPECT_EQ(half.size(), members);
    EXPECT_EQ(half.rank(), higher);
    Tensor x = Filled(DType::kF32, {3}, [&](int64_t) { return r; });
    Q3VL_ASSERT_OK(half.AllReduce({.in = x, .out = x}));
    EXPECT_EQ(FirstMismatch(x, [&](int64_t) { return expected_sum; }), -1) << "rank " << r;
    // A split of a split.
    auto single = half.Split(half.rank(), 0);
    ASSERT_TRUE(single.ok()) << single.status();
    EXPECT_EQ((*single)->size(), 1);
    Q3VL_ASSERT_OK(world.Barrier());
  });
}

TEST_P(CommConformanceTest, SizeOneGroupsAreNoOps) {
  RunRanks([](Communicator& world) {
    auto split = world.Split(world.rank() == 0 ? 0 : kNoColor, 0);
    ASSERT_TRUE(split.ok()) << split.status();
    if (world.rank() != 0) {
      EXPECT_EQ(*split, nullptr);
    } else {
      Communicator& solo = **split;
      ASSERT_EQ(solo.size(), 1);
      Tensor in = Filled(DType::kBF16, {4, 2}, [](int64_t i) { return i; });
      Tensor out = Tensor::Empty(DType::kBF16, {4, 2});
      auto same = [](int64_t i) { return static_cast<double>(i); };
      Q3VL_ASSERT_OK(solo.AllReduce({.in = in, .out = out}));
      EXPECT_EQ(FirstMismatch(out, same), -1);
      out = Tensor::Empty(DType::kBF16, {4, 2});
      Q3VL_ASSERT_OK(solo.AllGather({.in = in, .out = out}));
      EXPECT_EQ(FirstMismatch(out, same), -1);
      out = Tensor::Empty(DType::kBF16, {4, 2});
      Q3VL_ASSERT_OK(solo.ReduceScatter({.in = in, .out = out}));
      EXPECT_EQ(FirstMismatch(out, same), -1);
      out = Tensor::Empty(DType::kBF16, {4, 2});
      Q3VL_ASSERT_OK(solo.AllToAll({.in = in, .send_counts = {4}, .out = out, .recv_counts = {4}}));
      EXPECT_EQ(FirstMismatch(out, same), -1);
      Q3VL_ASSERT_OK(solo.Broadcast(in, 0));
      Q3VL_ASSERT_OK(solo.Barrier());
      EXPECT_EQ(solo.Send(in, 0).code(), absl::StatusCode::kInvalidArgument);
    }
    Q3VL_ASSERT_OK(world.Barrier());
  });
}

TEST_P(CommConformanceTest, SubGroupOfFirstAndLastRank) {
  RunRanks([](Communicator& world) {
    const int last = world.size() - 1;
    const std::vector<int> ranks = last == 0 ? std::vector<int>{0} : std::vector<int>{last, 0};
    if (world.rank() == 0 || world.rank() == last) {
      auto sub = world.SubGroup(ranks);
      ASSERT_TRUE(sub.ok()) << sub.status();
      ASSERT_EQ((*sub)->size(), static_cast<int>(ranks.size()));
      auto gathered = AllGatherValue(**sub, world.rank());
      ASSERT_TRUE(gathered.ok()) << gathered.status();
      EXPECT_EQ(*gathered, std::vector<int64_t>(ranks.begin(), ranks.end()));
    }
    Q3VL_ASSERT_OK(world.Barrier());
  });
}

TEST_P(CommConformanceTest, TopologyGroupsMatchTheirRankLists) {
  RunRanks([](Communicator& world) {
    const char* meshes[] = {"", "tp=1", "tp=2", "vision=1,tp=2", "pp=2,tp=2"};
    const std::string mesh =
        world.size() <= 4 ? meshes[world.size()] : "tp=" + std::to_string(world.size());
    auto config = ParallelConfig::FromString(mesh);
    ASSERT_TRUE(config.ok()) << config.status();
    auto topology = Topology::Create(*config, world.size(), world.rank());
    ASSERT_TRUE(topology.ok()) << topology.status();
    std::shared_ptr<Communicator> borrowed(&world, [](Communicator*) {});
    auto groups = CommGroups::Create(*topology, borrowed);
    ASSERT_TRUE(groups.ok()) << groups.status();
    for (absl::string_view name : Topology::GroupNames()) {
      const CommGroup& group = groups->group(name);
      if (!group.member()) continue;
      ASSERT_EQ(group.host->size(), group.size()) << name;
      auto gathered = AllGatherValue(*group.device, world.rank());
      ASSERT_TRUE(gathered.ok()) << name << ": " << gathered.status();
      EXPECT_EQ(*gathered, std::vector<int64_t>(group.world_ranks.begin(), group.world_ranks.end()))
          << "group " << name << " on rank " << world.rank();
    }
    Q3VL_ASSERT_OK(world.Barrier());
  });
}

TEST_P(CommConformanceTest, BadArgumentsFailLocallyAndLeaveTheGroupUsable) {
  RunRanks([](Communicator& world) {
    const int n = world.size();
    Tensor ids = Tensor::Empty(DType::kI64, {4});
    EXPECT_EQ(world.AllReduce({.in = ids, .out = ids}).code(), absl::StatusCode::kInvalidArgument);
    Tensor small = Tensor::Empty(DType::kF32, {3});
    EXPECT_EQ(world.AllGather({.in = small, .out = Tensor::Empty(DType::kF32, {3 * n + 1})}).code(),
              absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(world.ReduceScatter({.in = small, .out = Tensor::Empty(DType::kBF16, {3})}).code(),
              absl::StatusCode::kInvalidArgument);
    const std::vector<int64_t> counts(n, 1);
    EXPECT_EQ(world
                  .AllToAll({.in = Tensor::Empty(DType::kF32, {n + 1, 2}),
                             .send_counts = counts,
                             .out = Tensor::Empty(DType::kF32, {n, 2}),
                             .recv_counts = counts})
                  .code(),
              absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(world.Broadcast(small, n).code(), absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(world.Send(small, world.rank()).code(), absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(world.Recv(small, -1).code(), absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(world.Split(-2, 0).status().code(), absl::StatusCode::kInvalidArgument);
    Tensor x = Filled(DType::kF32, {2}, [](int64_t) { return 1; });
    Q3VL_ASSERT_OK(world.AllReduce({.in = x, .out = x}));
    EXPECT_EQ(FirstMismatch(x, [&](int64_t) { return n; }), -1);
  });
}

TEST_P(CommConformanceTest, HostHelpers) {
  RunRanks([](Communicator& world) {
    const int last = world.size() - 1;
    std::string text = world.rank() == last ? std::string(1000, 'q') + "request" : "";
    Q3VL_ASSERT_OK(BroadcastString(world, text, last));
    EXPECT_EQ(text, std::string(1000, 'q') + "request");
    std::string empty = world.rank() == 0 ? "" : "stale";
    Q3VL_ASSERT_OK(BroadcastString(world, empty, 0));
    EXPECT_EQ(empty, "");
    auto values = AllGatherValue(world, 7 * world.rank());
    ASSERT_TRUE(values.ok()) << values.status();
    for (int q = 0; q <= last; ++q) EXPECT_EQ((*values)[q], 7 * q);
    EXPECT_EQ(SumOver(world, 1), world.size());
    // Counts in blocks of 3 per peer (the expert-parallel exchange sends one per local expert):
    // rank r sends q (r, q, c) encoded, and receives each peer's block for r in rank order.
    std::vector<int64_t> send;
    for (int q = 0; q <= last; ++q) {
      for (int c = 0; c < 3; ++c) send.push_back(100 * world.rank() + 10 * q + c);
    }
    auto blocks = ExchangeCounts(world, send);
    ASSERT_TRUE(blocks.ok()) << blocks.status();
    ASSERT_EQ(blocks->size(), send.size());
    for (int q = 0; q <= last; ++q) {
      for (int c = 0; c < 3; ++c) EXPECT_EQ((*blocks)[3 * q + c], 100 * q + 10 * world.rank() + c);
    }
    if (world.size() > 1) {  // not a multiple of the group size: refused before any message
      send.pop_back();
      EXPECT_EQ(ExchangeCounts(world, send).status().code(), absl::StatusCode::kInvalidArgument);
    }
    EXPECT_EQ(ExchangeCounts(world, {}).status().code(), absl::StatusCode::kInvalidArgument);
  });
}

}  // namespace
}  // namespace q3vl::parallel::testing
