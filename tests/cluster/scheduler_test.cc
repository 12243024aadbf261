// The scheduler's invariants, driven step by step with no model: the token budget and the
// sequence cap hold every step, decode tokens come before prefill chunks, chunks cover each
// prompt exactly once, pages never exceed the pool, preemption picks the newest and the
// preempted request is recomputed from the start, nothing starves, and requests that can never
// fit are refused.
#include "cluster/engine/scheduler.h"

#include <map>
#include <random>

#include "gtest/gtest.h"

namespace q3vl::cluster {
namespace {

SchedulerConfig Config(int64_t budget, int64_t pages, int64_t max_seqs = 64, int64_t page_size = 4,
                       int64_t groups = 1) {
  return {.max_num_batched_tokens = budget, .max_num_seqs = max_seqs, .page_size = page_size, .num_pages = pages,
          .max_model_len = 4096, .num_groups = groups};
}

// Plays the engine: commits each plan and ends requests after `max_new` tokens.
class Driver {
 public:
  explicit Driver(const SchedulerConfig& config) : sched_(config) {}
  void Add(int64_t id, int64_t prompt, int64_t max_new) {
    ASSERT_TRUE(sched_.CheckFits(prompt, max_new).ok());
    sched_.Add(id, prompt);
    want_[id] = max_new;
    prompt_[id] = prompt;
  }
  model::StepPlan Step() {
    model::StepPlan plan = sched_.Schedule();
    const SchedulerConfig& c = sched_.config();
    EXPECT_LE(plan.num_tokens(), c.max_num_batched_tokens);
    EXPECT_LE(static_cast<int64_t>(plan.seqs.size()), c.max_num_seqs);
    EXPECT_LE(sched_.used_pages(), c.num_pages * c.num_groups);
    for (int64_t id : plan.released) cached_[id] = 0, group_.erase(id), pages_.erase(id);
    bool seen_chunk = false;
    for (const model::StepSequence& s : plan.seqs) {
      EXPECT_EQ(s.begin, cached_[s.request]) << "request " << s.request << " step " << plan.step;
      // A decode: the one token not yet cached of a sequence that has a cache.
      const bool decode = cached_[s.request] > 0 && prompt_[s.request] + generated_[s.request] - cached_[s.request] == 1;
      EXPECT_FALSE(decode && seen_chunk) << "a decode token after a prefill chunk, step " << plan.step;
      if (!decode) seen_chunk = true;
      // A request keeps its attention group while it holds KV.
      EXPECT_TRUE(s.group >= 0 && s.group < c.num_groups);
      if (cached_[s.request] > 0) EXPECT_EQ(s.group, group_[s.request]) << "request " << s.request;
      group_[s.request] = s.group;
      cached_[s.request] += s.num_tokens;
      // The plan names the pages: enough for what the sequence holds.
      std::vector<int32_t>& held = pages_[s.request];
      held.insert(held.end(), s.pages.begin(), s.pages.end());
      EXPECT_GE(static_cast<int64_t>(held.size()) * c.page_size, cached_[s.request]) << "request " << s.request;
    }
    // Without prefix keys no page is shared: each page of a group has one holder.
    std::map<std::pair<int64_t, int32_t>, int64_t> holder;
    for (const auto& [id, held] : pages_) {
      for (int32_t p : held) {
        const auto [it, fresh] = holder.emplace(std::make_pair(group_[id], p), id);
        EXPECT_TRUE(fresh) << "page " << p << " held by " << it->second << " and " << id << ", step " << plan.step;
      }
    }
    // Each group's pool holds its own requests' pages.
    std::map<int64_t, int64_t> pages;
    for (const auto& [id, g] : group_) pages[g] += (cached_[id] + c.page_size - 1) / c.page_size;
    for (const auto& [g, n] : pages) EXPECT_LE(n, c.num_pages) << "group " << g << " step " << plan.step;
    sched_.Commit(plan);
    for (const model::StepSequence& s : plan.seqs) {
      if (!s.sample) continue;
      if (++generated_[s.request] >= want_[s.request]) {
        sched_.Finish(s.request);
        group_.erase(s.request);
        pages_.erase(s.request);
        finished_at_[s.request] = plan.step;
      }
    }
    return plan;
  }
  Scheduler sched_;
  std::map<int64_t, int64_t> want_, prompt_, cached_, generated_, finished_at_, group_;
  std::map<int64_t, std::vector<int32_t>> pages_;  // what the plans gave each running request
};

// Prefix caching: keys of a prompt of `n` tokens (the first `same` tokens shared by every
// prompt made with the same salt).
std::vector<kv::PageKey> Keys(int64_t n, int64_t page, int64_t salt = 0) {
  std::vector<int64_t> tokens(n);
  for (int64_t i = 0; i < n; ++i) tokens[i] = 1000 * salt + i;
  return kv::PageKeys(tokens, {}, page);
}

// Runs the plan's sequences until every request ended (each generates `max_new` tokens).
void Drain(Scheduler& s, const std::map<int64_t, int64_t>& max_new, std::vector<model::StepPlan>* plans = nullptr) {
  std::map<int64_t, int64_t> generated;
  for (int i = 0; i < 1000 && s.has_work(); ++i) {
    model::StepPlan plan = s.Schedule();
    s.Commit(plan);
    for (const model::StepSequence& q : plan.seqs) {
      if (q.sample && ++generated[q.request] >= max_new.at(q.request)) s.Finish(q.request);
    }
    if (plans) plans->push_back(std::move(plan));
  }
}

// A request whose prompt starts like a finished one's begins after the cached full pages (the
// last prompt token is always computed) and shares those pages; the counters say so.
TEST(SchedulerTest, PrefixHitStartsAfterTheCachedPagesAndSharesThem) {
  Scheduler s(Config(64, 16));
  s.Add(1, 14, Keys(14, 4));  // 3 full pages
  std::vector<model::StepPlan> first;
  Drain(s, {{1, 2}}, &first);
  const std::vector<int32_t> all = first.at(0).seqs.at(0).pages;
  ASSERT_EQ(all.size(), 4u);
  const std::vector<int32_t> a_pages(all.begin(), all.begin() + 3);  // the full ones
  EXPECT_EQ(s.cached_pages(), 3);
  EXPECT_EQ(s.used_pages(), 0);
  // The same prompt: 3 pages cached, 2 tokens left to compute.
  s.Add(2, 14, Keys(14, 4));
  // 12 tokens of the same prefix: only 2 pages may hit (token 11 must be computed).
  s.Add(3, 12, Keys(12, 4));
  // A different prompt of the same length: nothing.
  s.Add(4, 14, Keys(14, 4, /*salt=*/1));
  const model::StepPlan plan = s.Schedule();
  ASSERT_EQ(plan.seqs.size(), 3u);
  EXPECT_EQ(plan.seqs[0].begin, 12);
  EXPECT_EQ(plan.seqs[0].num_tokens, 2);
  EXPECT_EQ(std::vector<int32_t>(plan.seqs[0].pages.begin(), plan.seqs[0].pages.begin() + 3), a_pages);
  EXPECT_EQ(plan.seqs[0].pages.size(), 4u);  // one fresh page for tokens 12-13
  EXPECT_EQ(plan.seqs[1].begin, 8);
  EXPECT_EQ(std::vector<int32_t>(plan.seqs[1].pages.begin(), plan.seqs[1].pages.begin() + 2),
            std::vector<int32_t>(a_pages.begin(), a_pages.begin() + 2));
  EXPECT_EQ(plan.seqs[2].begin, 0);
  EXPECT_EQ(s.prefix_queries(), 14 + 14 + 12 + 14);
  EXPECT_EQ(s.prefix_hits(), 12 + 8);
  // Shared pages count once: the 3 cached ones, a fresh one each for requests 2 (tokens 12-13)
  // and 3 (tokens 8-11), 4 for request 4.
  EXPECT_EQ(s.used_pages(), 3 + 1 + 1 + 4);
  s.Commit(plan);
}

// Under pressure the least recently released cached pages go first, a prompt's tail before its
// head, so a later request still finds the head.
TEST(SchedulerTest, EvictionTakesCachedTailsFirst) {
  Scheduler s(Config(64, 6));
  s.Add(1, 17, Keys(17, 4));  // 4 full pages + 1
  Drain(s, {{1, 1}});
  EXPECT_EQ(s.cached_pages(), 4);
  s.Add(2, 12, Keys(12, 4, /*salt=*/1));  // 3 pages: the free page, then 2 evicted
  Drain(s, {{2, 1}});
  s.Add(3, 17, Keys(17, 4));
  const model::StepPlan plan = s.Schedule();
  ASSERT_EQ(plan.seqs.size(), 1u);
  EXPECT_GE(plan.seqs[0].begin, 4);   // the head survived
  EXPECT_LT(plan.seqs[0].begin, 16);  // the tail did not
}

TEST(SchedulerTest, ChunksCoverThePromptUnderTheBudget) {
  Driver d(Config(/*budget=*/8, /*pages=*/64));
  d.Add(0, 21, 3);
  std::vector<int64_t> chunks;
  for (int i = 0; i < 20 && !d.finished_at_.count(0); ++i) {
    const model::StepPlan plan = d.Step();
    ASSERT_EQ(plan.seqs.size(), 1u);
    chunks.push_back(plan.seqs[0].num_tokens);
    EXPECT_EQ(plan.seqs[0].sample, d.cached_[0] >= 21);
  }
  EXPECT_EQ(chunks, (std::vector<int64_t>{8, 8, 5, 1, 1}));  // 21 prompt tokens, then 2 decodes
  EXPECT_EQ(d.generated_[0], 3);
  EXPECT_EQ(d.sched_.used_pages(), 0);
}

TEST(SchedulerTest, DecodesGoFirstAndNewRequestsJoinBetweenSteps) {
  Driver d(Config(/*budget=*/10, /*pages=*/64));
  d.Add(0, 4, 10);
  d.Step();  // prefill of 0
  d.Add(1, 30, 2);
  model::StepPlan plan = d.Step();
  ASSERT_EQ(plan.seqs.size(), 2u);
  EXPECT_EQ(plan.seqs[0].request, 0);  // 0's decode token first
  EXPECT_EQ(plan.seqs[0].num_tokens, 1);
  EXPECT_EQ(plan.seqs[1].request, 1);  // then a chunk of 1's prompt with the rest of the budget
  EXPECT_EQ(plan.seqs[1].num_tokens, 9);
  d.Add(2, 3, 1);
  plan = d.Step();
  // 0 decodes, 1 continues its prefill, 2 waits: the budget is spent (1 + 9).
  ASSERT_EQ(plan.seqs.size(), 2u);
  EXPECT_EQ(d.sched_.num_waiting(), 1);
}

TEST(SchedulerTest, SequenceCapLimitsAdmission) {
  Driver d(Config(/*budget=*/100, /*pages=*/64, /*max_seqs=*/2));
  for (int64_t i = 0; i < 4; ++i) d.Add(i, 5, 3);
  const model::StepPlan plan = d.Step();
  EXPECT_EQ(plan.seqs.size(), 2u);
  EXPECT_EQ(d.sched_.num_running(), 2);
  EXPECT_EQ(d.sched_.num_waiting(), 2);
}

TEST(SchedulerTest, PreemptsTheNewestAndRecomputesIt) {
  // 6 pages of 4 tokens. Two requests of 8-token prompts (2 pages each) grow by decoding until
  // the pool runs out: the newer one is preempted and later recomputed from token 0.
  Driver d(Config(/*budget=*/64, /*pages=*/6));
  d.Add(0, 8, 12);
  d.Add(1, 8, 12);
  int64_t preempted_step = -1;
  for (int i = 0; i < 60 && d.finished_at_.size() < 2; ++i) {
    const model::StepPlan plan = d.Step();
    if (!plan.released.empty() && preempted_step < 0 && !d.finished_at_.count(plan.released[0])) {
      EXPECT_EQ(plan.released[0], 1);
      preempted_step = plan.step;
    }
  }
  ASSERT_GE(preempted_step, 0) << "the pool never ran out";
  EXPECT_EQ(d.sched_.num_preemptions(), 1);
  EXPECT_LT(d.finished_at_[0], d.finished_at_[1]);
  EXPECT_EQ(d.generated_[0], 12);
  EXPECT_EQ(d.generated_[1], 12);
  EXPECT_EQ(d.sched_.used_pages(), 0);
}

TEST(SchedulerTest, RefusesWhatCanNeverFit) {
  Scheduler s(Config(/*budget=*/16, /*pages=*/4));
  EXPECT_TRUE(s.CheckFits(10, 7).ok());  // 16 cached tokens = 4 pages
  const absl::Status pool = s.CheckFits(10, 8);
  EXPECT_EQ(pool.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(pool.message().find("the pool holds 16"), std::string::npos) << pool;
  const absl::Status context = s.CheckFits(4000, 100);
  EXPECT_EQ(context.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(context.message().find("4096"), std::string::npos) << context;
  EXPECT_FALSE(SchedulerConfig{}.Validate().ok());
}

TEST(SchedulerTest, FinishingAWaitingRequestReleasesIt) {
  Driver d(Config(/*budget=*/4, /*pages=*/64, /*max_seqs=*/1));
  d.Add(0, 4, 5);
  d.Add(1, 4, 5);
  d.Step();
  d.sched_.Finish(1);  // cancelled while waiting
  EXPECT_EQ(d.sched_.num_waiting(), 0);
  const model::StepPlan plan = d.sched_.Schedule();
  EXPECT_EQ(plan.released, std::vector<int64_t>{1});
}

// Random arrivals over a pool that forces preemption: every step obeys the invariants (checked
// in Driver::Step), a step is empty only when nothing is queued, and every request finishes
// with all its tokens, so nothing starves.
// Data-parallel attention: each group has its own pool. Two requests that each fill a pool run
// together with two groups, one after the other with one.
TEST(SchedulerTest, AttentionGroupsEachHaveTheirOwnPool) {
  for (const int64_t groups : {1, 2}) {
    Driver d(Config(/*budget=*/64, /*pages=*/4, /*max_seqs=*/8, /*page_size=*/4, groups));
    d.Add(0, 12, 5);  // 16 cached tokens: the whole pool of a group
    d.Add(1, 12, 5);
    const model::StepPlan first = d.Step();
    ASSERT_EQ(static_cast<int64_t>(first.seqs.size()), groups);
    if (groups == 2) EXPECT_NE(first.seqs[0].group, first.seqs[1].group);
    while (d.sched_.has_work()) d.Step();
    EXPECT_EQ(d.generated_[0], 5);
    EXPECT_EQ(d.generated_[1], 5);
    EXPECT_EQ(d.sched_.num_preemptions(), 0);
  }
}

TEST(SchedulerTest, RandomLoadNeverStarves) {
  int64_t preemptions = 0;
  for (uint32_t seed = 0; seed < 30; ++seed) {
    std::mt19937 rng(seed);
    const int64_t groups = seed < 20 ? 1 : 3;  // the last seeds with three attention groups
    Driver d(Config(/*budget=*/16, /*pages=*/groups == 1 ? 24 : 18, /*max_seqs=*/6, /*page_size=*/4, groups));
    int64_t next = 0, steps = 0;
    while ((next < 40 || d.sched_.has_work()) && steps < 5000) {
      if (next < 40 && rng() % 3 == 0) d.Add(next++, 1 + rng() % 40, 1 + rng() % 30);
      if (!d.sched_.has_work()) continue;
      const bool queued = d.sched_.num_running() + d.sched_.num_waiting() > 0;
      const model::StepPlan plan = d.Step();
      ++steps;
      EXPECT_EQ(plan.seqs.empty(), !queued) << "seed " << seed << " step " << plan.step;
    }
    EXPECT_EQ(static_cast<int64_t>(d.finished_at_.size()), 40) << "seed " << seed;
    for (const auto& [id, n] : d.generated_) {
      if (d.finished_at_.count(id)) {
        EXPECT_EQ(n, d.want_[id]) << "seed " << seed << " request " << id;
      }
    }
    EXPECT_EQ(d.sched_.used_pages(), 0);
    preemptions += d.sched_.num_preemptions();
  }
  EXPECT_GT(preemptions, 0) << "the load never filled the pool";
}

}  // namespace
}  // namespace q3vl::cluster
