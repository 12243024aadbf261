// The coordinator's routing as pure logic: the global KV index (overlaps exact for short
// prompts, within a stride for long ones; stores, removals and snapshots per replica), and the
// policies: kv goes where the prompt's pages are cached unless load says otherwise, falls back
// to the least loaded replica when imbalanced, never picks a replica that cannot hold the
// request, and refuses clearly when none can.
#include "cluster/coordinator/router.h"

#include <map>

#include "gtest/gtest.h"

namespace q3vl::cluster::coordinator {
namespace {

std::vector<IndexKey> Keys(int64_t n, uint64_t salt = 0) {
  std::vector<IndexKey> k(n);
  for (int64_t i = 0; i < n; ++i) k[i] = (salt << 32) + static_cast<uint64_t>(i) + 1;
  return k;
}

std::vector<IndexKey> Prefix(const std::vector<IndexKey>& k, int64_t n) { return {k.begin(), k.begin() + n}; }

TEST(KvIndexTest, OverlapIsTheLeadingRunEachReplicaHolds) {
  KvIndex index;
  const std::vector<IndexKey> prompt = Keys(10);
  index.Store(0, Prefix(prompt, 10));
  index.Store(2, Prefix(prompt, 4));
  index.Store(3, Keys(10, 7));  // other content
  std::vector<int64_t> o;
  index.Overlaps(prompt, o);
  ASSERT_EQ(o.size(), 4u);
  EXPECT_EQ(o[0], 10);
  EXPECT_EQ(o[1], 0);
  EXPECT_EQ(o[2], 4);
  EXPECT_EQ(o[3], 0);
  index.Remove(0, std::vector<IndexKey>(prompt.begin() + 6, prompt.end()));
  index.Overlaps(prompt, o);
  EXPECT_EQ(o[0], 6);  // its tail was evicted
  index.Drop(2);
  index.Overlaps(prompt, o);
  EXPECT_EQ(o[2], 0);
  EXPECT_EQ(index.num_keys(2), 0);
  index.Overlaps(Keys(5, 99), o);  // nobody holds its first page
  EXPECT_EQ(o, std::vector<int64_t>(4, 0));
}

TEST(KvIndexTest, CopiesAreCountedAndSnapshotsReplace) {
  KvIndex index;
  const std::vector<IndexKey> prompt = Keys(3);
  index.Store(1, prompt);
  index.Store(1, prompt);  // two attention groups hold it
  index.Remove(1, prompt);
  std::vector<int64_t> o;
  index.Overlaps(prompt, o);
  EXPECT_EQ(o[1], 3);  // one copy left
  index.Remove(1, prompt);
  index.Overlaps(prompt, o);
  EXPECT_EQ(o[1], 0);
  EXPECT_EQ(index.num_keys(), 0);
  index.Store(1, Keys(3, 5));
  index.Reset(1, prompt);  // a snapshot: exactly these
  index.Overlaps(prompt, o);
  EXPECT_EQ(o[1], 3);
  EXPECT_EQ(index.num_keys(), 3);
}

TEST(KvIndexTest, LongPromptsAreProbedWithinAStride) {
  KvIndex index;
  const std::vector<IndexKey> prompt = Keys(6400);  // stride 100
  for (int r = 0; r < 5; ++r) index.Store(r, Prefix(prompt, 1000 + 1234 * r));
  std::vector<int64_t> o;
  index.Overlaps(prompt, o);
  for (int r = 0; r < 5; ++r) {
    const int64_t truth = 1000 + 1234 * r;
    EXPECT_LE(o[r], truth) << r;
    EXPECT_GT(o[r], truth - 6400 / KvIndex::kExactPages) << r;
  }
}

TEST(KvIndexTest, AHotPromptHeldAtManyDepthsByManyReplicas) {
  // A shared system prompt on every replica, a video held whole by a few, most of it by more,
  // its start by many (as kv routing with its load fallback leaves a hot video), and replicas
  // with nothing of it: each overlap is within a stride of the truth.
  KvIndex index;
  const std::vector<IndexKey> prompt = Keys(6400);  // stride 200
  std::vector<int64_t> truth(1000, 0);
  for (int r = 0; r < 1000; ++r) {
    truth[r] = r < 3 ? 6400 : r < 100 ? 5000 : r < 400 ? 2000 : r < 900 ? 2 : 0;
    index.Store(r, truth[r] > 0 ? Prefix(prompt, truth[r]) : Keys(5, 7));
  }
  std::vector<int64_t> o;
  index.Overlaps(prompt, o);
  ASSERT_EQ(o.size(), 1000u);
  for (int r = 0; r < 1000; ++r) {
    EXPECT_LE(o[r], truth[r]) << r;
    if (truth[r] > 0) {
      EXPECT_GT(o[r], truth[r] - 6400 / KvIndex::kExactPages) << r;
      EXPECT_GE(o[r], 1) << r;
    } else {
      EXPECT_EQ(o[r], 0) << r;
    }
  }
  EXPECT_EQ(o[0], 6400);
}

struct Fleet {
  std::vector<ReplicaLoad> loads;
  explicit Fleet(int n, int64_t capacity = 100000) : loads(n, ReplicaLoad{.routable = true, .max_seq_tokens = capacity}) {}
};

TEST(RouterTest, KvGoesWhereThePromptIsCached) {
  KvIndex index;
  const std::vector<IndexKey> prompt = Keys(20);
  index.Store(2, prompt);
  Fleet fleet(4);
  Router router({.policy = RoutingPolicy::kKv});
  for (int i = 0; i < 5; ++i) {
    auto d = router.Choose({.keys = prompt, .prompt_pages = 21, .need_tokens = 400}, fleet.loads, index);
    ASSERT_TRUE(d.ok()) << d.status();
    EXPECT_EQ(d->replica, 2);
    EXPECT_EQ(d->cached_pages, 20);
  }
  // Load outweighs the cache when the cached replica is busy enough: 20 pages saved there, 250
  // pages of KV in use (x decode_weight 0.1).
  fleet.loads[2].kv_pages_used = 250;
  auto d = router.Choose({.keys = prompt, .prompt_pages = 21, .need_tokens = 400}, fleet.loads, index);
  ASSERT_TRUE(d.ok());
  EXPECT_NE(d->replica, 2);
}

TEST(RouterTest, KvSpreadsUncachedRequestsAndFallsBackWhenImbalanced) {
  KvIndex index;
  Fleet fleet(3);
  Router router({.policy = RoutingPolicy::kKv, .imbalance_ratio = 2.0, .imbalance_slack = 2});
  std::map<int, int> count;
  for (int i = 0; i < 30; ++i) {
    auto d = router.Choose({.keys = Keys(4, 100 + i), .prompt_pages = 4, .need_tokens = 64}, fleet.loads, index);
    ASSERT_TRUE(d.ok());
    ++count[d->replica];
    ++fleet.loads[d->replica].in_flight;
    fleet.loads[d->replica].pending_prefill_pages += 4;
  }
  EXPECT_EQ(count[0], 10);  // equal costs go round the replicas; pending prefill evens them out
  EXPECT_EQ(count[1], 10);
  EXPECT_EQ(count[2], 10);
  // A hot prefix cached on replica 0, which is far busier than the others: least load wins.
  const std::vector<IndexKey> hot = Keys(50, 1);
  index.Store(0, hot);
  fleet.loads = Fleet(3).loads;
  fleet.loads[0].in_flight = 9;
  auto d = router.Choose({.keys = hot, .prompt_pages = 50, .need_tokens = 900}, fleet.loads, index);
  ASSERT_TRUE(d.ok());
  EXPECT_TRUE(d->fell_back);
  EXPECT_NE(d->replica, 0);
  fleet.loads[0].in_flight = 2;  // within ratio * least + slack: the cache wins
  d = router.Choose({.keys = hot, .prompt_pages = 50, .need_tokens = 900}, fleet.loads, index);
  ASSERT_TRUE(d.ok());
  EXPECT_FALSE(d->fell_back);
  EXPECT_EQ(d->replica, 0);
}

TEST(RouterTest, CapacityIsNeverExceededAndRefusalsAreClear) {
  KvIndex index;
  const std::vector<IndexKey> prompt = Keys(8);
  index.Store(0, prompt);  // cached on the small replica
  Fleet fleet(2);
  fleet.loads[0].max_seq_tokens = 32768;
  fleet.loads[1].max_seq_tokens = 262144;
  for (RoutingPolicy p : {RoutingPolicy::kKv, RoutingPolicy::kLeastLoad, RoutingPolicy::kRoundRobin}) {
    Router router({.policy = p});
    for (int i = 0; i < 4; ++i) {
      auto d = router.Choose({.keys = prompt, .prompt_pages = 8, .need_tokens = 200000}, fleet.loads, index);
      ASSERT_TRUE(d.ok());
      EXPECT_EQ(d->replica, 1) << RoutingPolicyName(p);
    }
    auto too_long = router.Choose({.prompt_pages = 20000, .need_tokens = 300000}, fleet.loads, index);
    EXPECT_EQ(too_long.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(too_long.status().message().find("262144"), std::string::npos) << too_long.status();
  }
  Router router({});
  fleet.loads[0].routable = fleet.loads[1].routable = false;
  EXPECT_EQ(router.Choose({.need_tokens = 10}, fleet.loads, index).status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(router.Choose({.need_tokens = 10}, {}, index).status().code(), absl::StatusCode::kUnavailable);
}

TEST(RouterTest, LeastLoadAndRoundRobin) {
  KvIndex index;
  Fleet fleet(3);
  fleet.loads[0].in_flight = 3;
  fleet.loads[1].in_flight = 1;
  fleet.loads[2].in_flight = 1;
  fleet.loads[2].kv_pages_used = 10;
  Router least({.policy = RoutingPolicy::kLeastLoad});
  EXPECT_EQ(least.Choose({.need_tokens = 10}, fleet.loads, index)->replica, 1);
  Router rr({.policy = RoutingPolicy::kRoundRobin});
  fleet.loads[1].routable = false;
  std::map<int, int> count;
  for (int i = 0; i < 10; ++i) ++count[rr.Choose({.need_tokens = 10}, fleet.loads, index)->replica];
  EXPECT_EQ(count[1], 0);
  EXPECT_GE(count[0], 4);
  EXPECT_GE(count[2], 4);
  EXPECT_FALSE(ParseRoutingPolicy("random").ok());
  EXPECT_EQ(*ParseRoutingPolicy("least-load"), RoutingPolicy::kLeastLoad);
}

}  // namespace
}  // namespace q3vl::cluster::coordinator
