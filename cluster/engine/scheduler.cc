#include "cluster/engine/scheduler.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "core/check.h"

namespace q3vl::cluster {

absl::Status SchedulerConfig::Validate() const {
  const struct { const char* name; int64_t value; } positive[] = {
      {"max_num_batched_tokens", max_num_batched_tokens}, {"max_num_seqs", max_num_seqs},
      {"page_size", page_size}, {"num_pages", num_pages}, {"max_model_len", max_model_len},
      {"num_groups", num_groups}};
  for (const auto& p : positive) {
    if (p.value <= 0) return absl::InvalidArgumentError(absl::StrCat(p.name, " must be > 0, got ", p.value));
  }
  return absl::OkStatus();
}

Scheduler::Scheduler(const SchedulerConfig& config) : config_(config) {
  const absl::Status valid = config.Validate();
  Q3VL_CHECK(valid.ok()) << valid;
  for (int64_t g = 0; g < config.num_groups; ++g) pools_.emplace_back(config.num_pages);
}

int64_t Scheduler::used_pages() const {
  int64_t used = 0;
  for (const kv::BlockPool& p : pools_) used += p.num_used();
  return used;
}

int64_t Scheduler::cached_pages() const {
  int64_t cached = 0;
  for (const kv::BlockPool& p : pools_) cached += p.num_cached();
  return cached;
}

std::vector<kv::KvEvent> Scheduler::TakeKvEvents() {
  std::vector<kv::KvEvent> out;
  for (kv::BlockPool& p : pools_) {
    std::vector<kv::KvEvent> events = p.TakeEvents();
    out.insert(out.end(), events.begin(), events.end());
  }
  return out;
}

void Scheduler::Grow(Entry& e, int64_t n, model::StepSequence& seq) {
  const std::vector<int32_t> fresh = pools_[e.group].Allocate(n);
  e.pages.insert(e.pages.end(), fresh.begin(), fresh.end());
  seq.pages.insert(seq.pages.end(), fresh.begin(), fresh.end());
}

absl::Status Scheduler::CheckFits(int64_t prompt_tokens, int64_t max_new_tokens) const {
  const int64_t total = prompt_tokens + max_new_tokens;
  if (total > config_.max_model_len) {
    return absl::InvalidArgumentError(absl::StrCat("prompt (", prompt_tokens, " tokens) + max_tokens (", max_new_tokens,
                                                   ") = ", total, " exceeds the model's context of ",
                                                   config_.max_model_len, " tokens"));
  }
  // The last generated token never enters the cache.
  const int64_t cached = std::max(prompt_tokens, total - 1);
  if (config_.PagesFor(cached) > config_.num_pages) {
    return absl::ResourceExhaustedError(absl::StrCat("prompt (", prompt_tokens, " tokens) + max_tokens (",
        max_new_tokens, ") needs ", cached, " tokens of KV cache; the pool holds ",
        config_.num_pages * config_.page_size, " (", config_.num_pages, " pages of ", config_.page_size, ")"));
  }
  return absl::OkStatus();
}

void Scheduler::Add(int64_t id, int64_t prompt_tokens, std::vector<kv::PageKey> keys) {
  Q3VL_CHECK(!entries_.contains(id)) << "request " << id << " added twice";
  Q3VL_CHECK_GT(prompt_tokens, 0);
  Q3VL_CHECK_LE(static_cast<int64_t>(keys.size()), prompt_tokens / config_.page_size);
  if (!config_.enable_prefix_caching) keys.clear();
  entries_[id] = Entry{.known = prompt_tokens, .keys = std::move(keys)};
  waiting_.push_back(id);
}

bool Scheduler::PreemptNewest(int64_t keep, model::StepPlan& plan, int64_t& budget) {
  const int64_t group = entries_.at(keep).group;
  auto newest = std::find_if(running_.rbegin(), running_.rend(),
                             [&](int64_t id) { return entries_.at(id).group == group; });
  Q3VL_CHECK(newest != running_.rend()) << "request " << keep << " is not running";
  const int64_t victim = *newest;
  Entry& e = entries_.at(victim);
  if (e.step >= 0) {  // already planned in this step: take it out again
    budget += plan.seqs[e.step].num_tokens;
    plan.seqs.erase(plan.seqs.begin() + e.step);
    for (size_t i = e.step; i < plan.seqs.size(); ++i) entries_.at(plan.seqs[i].request).step = static_cast<int64_t>(i);
    e.step = -1;
  }
  pools_[group].Release(e.pages);
  e.pages.clear();
  e.registered = 0;
  e.computed = 0;
  running_.erase(std::next(newest).base());
  waiting_.push_front(victim);
  plan.released.push_back(victim);
  ++num_preemptions_;
  return victim != keep;
}

bool Scheduler::ScheduleRunning(int64_t id, model::StepPlan& plan, int64_t& budget) {
  Entry& e = entries_.at(id);
  const int64_t n = std::min(e.known - e.computed, budget);
  const int64_t more = config_.PagesFor(e.computed + n) - Held(e);
  while (more > pools_[e.group].num_free()) {
    if (!PreemptNewest(id, plan, budget)) return false;
  }
  e.step = static_cast<int64_t>(plan.seqs.size());
  plan.seqs.push_back({.request = id, .begin = e.computed, .num_tokens = n, .sample = e.computed + n == e.known,
                       .group = e.group});
  Grow(e, more, plan.seqs.back());
  budget -= n;
  return true;
}

model::StepPlan Scheduler::Schedule() {
  model::StepPlan plan;
  plan.step = next_step_++;
  plan.released = std::move(released_);
  released_.clear();
  for (int64_t id : running_) entries_.at(id).step = -1;
  int64_t budget = config_.max_num_batched_tokens;
  // Running sequences, oldest first: decode tokens, then the next chunks of prefills (and of
  // recomputes). Preemption removes a newer request of the same group (after index i), or the
  // request at i itself, whose successor then takes index i.
  for (const bool decode : {true, false}) {
    for (size_t i = 0; i < running_.size() && budget > 0;) {
      const int64_t id = running_[i];
      const Entry& e = entries_.at(id);
      if (e.step >= 0 || (e.known - e.computed == 1) != decode) {
        ++i;
        continue;
      }
      if (ScheduleRunning(id, plan, budget)) ++i;
    }
  }
  // Pages that running prefills will still need for their prompts, per group: admission leaves
  // them.
  std::vector<int64_t> promised(pools_.size(), 0);
  for (int64_t id : running_) {
    const Entry& e = entries_.at(id);
    const int64_t planned = e.step >= 0 ? plan.seqs[e.step].num_tokens : 0;
    if (e.computed + planned < e.known) promised[e.group] += config_.PagesFor(e.known) - Held(e);
  }
  while (!waiting_.empty() && budget > 0 && num_running() < config_.max_num_seqs) {
    const int64_t id = waiting_.front();
    Entry& e = entries_.at(id);
    // In each group: the cached prefix (whole pages, leaving the last known token to compute),
    // and the pages left once it is taken (a cached page nobody holds stops being free).
    // Admission prefers the longest hit, then the most free pages, then the lowest group, among
    // the groups where the whole prompt fits; when none fits the queue waits (FCFS).
    const int64_t max_hit = std::min<int64_t>(static_cast<int64_t>(e.keys.size()), (e.known - 1) / config_.page_size);
    int64_t group = -1, hit = 0, best_free = 0;
    for (int64_t g = 0; g < static_cast<int64_t>(pools_.size()); ++g) {
      const kv::BlockPool& pool = pools_[g];
      const int64_t h = std::min(pool.CountCached(e.keys), max_hit);
      const int64_t free = pool.num_free() - pool.CountUnreferenced(e.keys, h) - promised[g];
      if (free < config_.PagesFor(e.known) - h) continue;
      if (group < 0 || h > hit || (h == hit && free > best_free)) group = g, hit = h, best_free = free;
    }
    if (group < 0) break;
    e.group = group;
    e.pages = pools_[group].TakeCached(e.keys, hit);
    e.registered = hit;
    e.computed = hit * config_.page_size;
    prefix_queries_ += e.known;
    prefix_hits_ += e.computed;
    const int64_t n = std::min(e.known - e.computed, budget);
    e.step = static_cast<int64_t>(plan.seqs.size());
    plan.seqs.push_back({.request = id, .begin = e.computed, .num_tokens = n, .sample = e.computed + n == e.known,
                         .group = group, .pages = e.pages});
    Grow(e, config_.PagesFor(e.computed + n) - Held(e), plan.seqs.back());
    promised[group] += config_.PagesFor(e.known) - Held(e);
    budget -= n;
    waiting_.pop_front();
    running_.push_back(id);
  }
  return plan;
}

void Scheduler::Commit(const model::StepPlan& plan) {
  for (const model::StepSequence& s : plan.seqs) {
    auto it = entries_.find(s.request);
    if (it == entries_.end()) continue;
    Entry& e = it->second;
    Q3VL_CHECK_EQ(e.computed, s.begin) << "request " << s.request;
    e.computed += s.num_tokens;
    if (s.sample) ++e.known;
    e.step = -1;
    // Full prompt pages now written: other requests may share them.
    const int64_t full = std::min<int64_t>(static_cast<int64_t>(e.keys.size()), e.computed / config_.page_size);
    for (; e.registered < full; ++e.registered) pools_[e.group].Register(e.pages[e.registered], e.keys[e.registered]);
  }
}

void Scheduler::Finish(int64_t id) {
  auto it = entries_.find(id);
  if (it == entries_.end()) return;
  auto run = std::find(running_.begin(), running_.end(), id);
  if (run != running_.end()) {
    running_.erase(run);
    pools_[it->second.group].Release(it->second.pages);
  } else {
    waiting_.erase(std::find(waiting_.begin(), waiting_.end(), id));
  }
  released_.push_back(id);
  entries_.erase(it);
}

}  // namespace q3vl::cluster
