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

Scheduler::Scheduler(const SchedulerConfig& config) : config_(config), used_pages_(std::max<int64_t>(config.num_groups, 1), 0) {
  const absl::Status valid = config.Validate();
  Q3VL_CHECK(valid.ok()) << valid;
}

int64_t Scheduler::used_pages() const {
  int64_t used = 0;
  for (int64_t u : used_pages_) used += u;
  return used;
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

void Scheduler::Add(int64_t id, int64_t prompt_tokens) {
  Q3VL_CHECK(!entries_.contains(id)) << "request " << id << " added twice";
  Q3VL_CHECK_GT(prompt_tokens, 0);
  entries_[id] = Entry{.known = prompt_tokens};
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
  used_pages_[group] -= e.pages;
  e.pages = 0;
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
  const int64_t more = config_.PagesFor(e.computed + n) - e.pages;
  while (more > config_.num_pages - used_pages_[e.group]) {
    if (!PreemptNewest(id, plan, budget)) return false;
  }
  e.pages += more;
  used_pages_[e.group] += more;
  e.step = static_cast<int64_t>(plan.seqs.size());
  plan.seqs.push_back({.request = id, .begin = e.computed, .num_tokens = n, .sample = e.computed + n == e.known,
                       .group = e.group});
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
  std::vector<int64_t> promised(used_pages_.size(), 0);
  for (int64_t id : running_) {
    const Entry& e = entries_.at(id);
    const int64_t planned = e.step >= 0 ? plan.seqs[e.step].num_tokens : 0;
    if (e.computed + planned < e.known) promised[e.group] += config_.PagesFor(e.known) - e.pages;
  }
  while (!waiting_.empty() && budget > 0 && num_running() < config_.max_num_seqs) {
    const int64_t id = waiting_.front();
    Entry& e = entries_.at(id);
    // The group with the most free pages (the lowest index on ties).
    int64_t group = 0;
    for (int64_t g = 1; g < static_cast<int64_t>(used_pages_.size()); ++g) {
      if (used_pages_[g] + promised[g] < used_pages_[group] + promised[group]) group = g;
    }
    if (config_.num_pages - used_pages_[group] - promised[group] < config_.PagesFor(e.known)) break;  // FCFS
    const int64_t n = std::min(e.known, budget);
    e.group = group;
    e.pages = config_.PagesFor(n);
    used_pages_[group] += e.pages;
    promised[group] += config_.PagesFor(e.known) - e.pages;
    e.step = static_cast<int64_t>(plan.seqs.size());
    plan.seqs.push_back({.request = id, .begin = 0, .num_tokens = n, .sample = n == e.known, .group = group});
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
  }
}

void Scheduler::Finish(int64_t id) {
  auto it = entries_.find(id);
  if (it == entries_.end()) return;
  auto run = std::find(running_.begin(), running_.end(), id);
  if (run != running_.end()) {
    running_.erase(run);
    used_pages_[it->second.group] -= it->second.pages;
  } else {
    waiting_.erase(std::find(waiting_.begin(), waiting_.end(), id));
  }
  released_.push_back(id);
  entries_.erase(it);
}

}  // namespace q3vl::cluster
