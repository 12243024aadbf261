// Expert-parallel MoE over the in-process communicator against the all-local MoE on one rank:
// tokens replicated over the ep group, tokens of the rank's own (data-parallel attention), and
// groups of ranks sharing tokens inside a larger ep group; uneven routing, experts that get no
// rows, every token on one expert, a batch of one token and ranks with no tokens at all.
#include "moe/ep_dispatcher.h"

#include <omp.h>

#include <memory>
#include <vector>

#include "gtest/gtest.h"
#include "moe/moe.h"
#include "parallel/inprocess_comm.h"
#include "tests/test_util.h"

namespace q3vl::moe {
namespace {

constexpr int64_t kDim = 8, kInter = 6, kExperts = 8;
constexpr int kTopK = 2;

struct Model {
  Tensor router;   // [E, D]
  Tensor gate_up;  // [E, 2I, D]
  Tensor down;     // [E, D, I]
};

Model RandomModel(uint32_t seed) {
  return {.router = testing::RandomTensor({kExperts, kDim}, seed),
          .gate_up = testing::RandomTensor({kExperts, 2 * kInter, kDim}, seed + 1, 0.5f),
          .down = testing::RandomTensor({kExperts, kDim, kInter}, seed + 2, 0.5f)};
}

// Experts [first, first + count) of `m`.
ExpertWeights Slice(const Model& m, int64_t first, int64_t count) {
  return {.router = m.router, .gate_up = m.gate_up.Slice(0, first, first + count).Clone(),
          .down = m.down.Slice(0, first, first + count).Clone(), .first_expert = first};
}

// The single-rank MoE output of `x`.
Tensor Reference(Backend& backend, const Model& m, const Tensor& x) {
  LocalDispatcher local;
  Tensor out = Tensor::Empty(DType::kF32, {x.dim(0), kDim});
  MoeForward(backend, local, Slice(m, 0, kExperts), {.x = x, .out = out, .top_k = kTopK});
  return out;
}

// Runs the MoE on `ranks` ranks; rank r holds the tokens tokens_of(r) and shares them with the
// ranks of its token group (ranks r with the same r / group_size; group_size 1: no group).
// Every rank's output must equal the single-rank output of its tokens.
void ExpectMatchesLocal(int ranks, int group_size, const Model& m, const std::function<Tensor(int)>& tokens_of) {
  auto backend = CreateBackend(BackendKind::kCpu);
  ASSERT_TRUE(backend.ok());
  std::vector<float> diff(ranks, -1.0f);
  parallel::RunInProcessRanks(ranks, {}, [&](parallel::Communicator& ep) {
    omp_set_num_threads(1);
    const int r = ep.rank();
    std::unique_ptr<parallel::Communicator> group;
    if (group_size > 1) {
      auto split = ep.Split(r / group_size, r);
      Q3VL_CHECK_OK(split.status());
      group = std::move(*split);
    }
    auto cpu = CreateBackend(BackendKind::kCpu);
    const int64_t per_rank = kExperts / ranks;
    const ExpertWeights experts = Slice(m, r * per_rank, per_rank);
    AllToAllDispatcher dispatcher(ep, ep, per_rank, group.get());
    const Tensor x = tokens_of(r);
    Tensor out = Tensor::Empty(DType::kF32, {x.dim(0), kDim});
    MoeForward(**cpu, dispatcher, experts, {.x = x, .out = out, .top_k = kTopK});
    diff[r] = testing::MaxAbsDiff(out, Reference(**cpu, m, x));
  });
  for (int r = 0; r < ranks; ++r) EXPECT_LE(diff[r], 1e-5f) << "rank " << r;
}

TEST(EpDispatcherTest, TokensReplicatedOverTheGroup) {
  const Model m = RandomModel(1);
  for (int ranks : {2, 4}) {
    for (int64_t tokens : {1, 3, 7, 16}) {  // shares of 0 or 1 token on some ranks, uneven shares
      SCOPED_TRACE(::testing::Message() << ranks << " ranks, " << tokens << " tokens");
      const Tensor x = testing::RandomTensor({tokens, kDim}, 10 + tokens);
      ExpectMatchesLocal(ranks, ranks, m, [&](int) { return x; });
    }
  }
}

TEST(EpDispatcherTest, EachRankItsOwnTokens) {
  const Model m = RandomModel(2);
  const std::vector<int64_t> counts = {5, 0, 1, 9};  // a rank with none still joins the exchanges
  ExpectMatchesLocal(4, 1, m, [&](int r) { return testing::RandomTensor({counts[r], kDim}, 20 + r); });
  ExpectMatchesLocal(2, 1, m, [&](int r) { return testing::RandomTensor({r == 0 ? 0 : 1, kDim}, 30 + r); });
}

TEST(EpDispatcherTest, GroupsOfRanksShareTokens) {
  const Model m = RandomModel(3);
  // Ranks {0, 1} hold one set of tokens, {2, 3} another (tensor-parallel attention groups of 2
  // inside an ep group of 4); the second group has one token.
  ExpectMatchesLocal(4, 2, m, [&](int r) { return testing::RandomTensor({r < 2 ? 6 : 1, kDim}, 40 + r / 2); });
  ExpectMatchesLocal(4, 2, m, [&](int r) { return testing::RandomTensor({r < 2 ? 0 : 5, kDim}, 50 + r / 2); });
}

TEST(EpDispatcherTest, EveryTokenOnOneExpert) {
  Model m = RandomModel(4);
  // Positive activations and a router that prefers experts 0 then 1 for every token: rank 0
  // gets every row, the other ranks' experts none.
  for (int64_t e = 0; e < kExperts; ++e) {
    for (int64_t j = 0; j < kDim; ++j) m.router.data<float>()[e * kDim + j] = e == 0 ? 3.0f : e == 1 ? 1.0f : -3.0f;
  }
  auto positive = [](int64_t n, uint32_t seed) {
    Tensor x = testing::RandomTensor({n, kDim}, seed);
    for (int64_t i = 0; i < x.numel(); ++i) x.data<float>()[i] = 1.0f + 0.5f * x.data<float>()[i];
    return x;
  };
  auto cpu = CreateBackend(BackendKind::kCpu);
  const Routing routing = Route(**cpu, positive(4, 60), m.router, kTopK, true);
  for (int64_t t = 0; t < 4; ++t) {
    ASSERT_EQ(routing.expert_ids.data<int32_t>()[t * kTopK], 0);
    ASSERT_EQ(routing.expert_ids.data<int32_t>()[t * kTopK + 1], 1);
  }
  const Tensor x = positive(9, 61);
  ExpectMatchesLocal(4, 4, m, [&](int) { return x; });
  ExpectMatchesLocal(4, 1, m, [&](int r) { return positive(r + 1, 70 + r); });
}

}  // namespace
}  // namespace q3vl::moe
