// Scheduler: iteration-level (continuous) batching with chunked prefill over a paged KV pool.
// It decides, each step, which tokens of which requests run (a StepPlan) under a token budget
// and a sequence cap, and owns the KV pages (a kv::BlockPool per attention group): the plan
// names the pages each sequence appends, so every allocation the runners make is one the
// scheduler counted. With prefix caching, a request admitted with page keys (kv::PageKeys)
// starts after the longest cached prefix of its prompt, sharing those pages. It knows
// lengths, keys and pages only: no tokens, no model, no clock.
// Policy (cluster/README.md): running sequences first, oldest first: decode tokens, then the
// next chunks of unfinished prefills; then waiting requests first come first served while the
// budget, the cap and the pool allow (no skipping ahead). When a running sequence cannot grow,
// the most recently admitted one is preempted (pages freed, back to the head of the queue,
// recomputed on readmission). Not thread-safe: the engine loop owns it.
#ifndef Q3VL_CLUSTER_ENGINE_SCHEDULER_H_
#define Q3VL_CLUSTER_ENGINE_SCHEDULER_H_

#include <cstdint>
#include <deque>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "kv/block_pool.h"
#include "model/step_plan.h"

namespace q3vl::cluster {

struct SchedulerConfig {
  int64_t max_num_batched_tokens = 2048;  // tokens per step (decode tokens + prefill chunks)
  int64_t max_num_seqs = 256;             // sequences running at once
  int64_t page_size = 16;                 // tokens per KV page
  int64_t num_pages = 0;                  // KV pool (of each group)
  int64_t max_model_len = 0;              // prompt + max_tokens limit (the model's context)
  // Data-parallel attention groups, each with its own pool of num_pages: a request runs in the
  // group it is admitted to (the one with the most free pages; StepSequence::group) and a
  // sequence that cannot grow preempts the newest of its own group.
  int64_t num_groups = 1;
  // Reuse cached full prompt pages across requests (keys given to Add); the last prompt token
  // is always computed (its logits give the first output).
  bool enable_prefix_caching = true;

  absl::Status Validate() const;
  int64_t PagesFor(int64_t tokens) const { return (tokens + page_size - 1) / page_size; }
};

class Scheduler {
 public:
  // REQUIRES: config.Validate() is ok.
  explicit Scheduler(const SchedulerConfig& config);

  // Whether a request can ever run: InvalidArgument over the context, ResourceExhausted over
  // the KV pool (both name the numbers). Needs only the config: safe from any thread.
  absl::Status CheckFits(int64_t prompt_tokens, int64_t max_new_tokens) const;

  // Queues a request. `keys`: its full prompt pages' prefix-cache keys (empty: nothing shared).
  // REQUIRES: CheckFits(prompt_tokens, max_new_tokens) is ok; id is new.
  void Add(int64_t id, int64_t prompt_tokens, std::vector<kv::PageKey> keys = {});
  // The next step. Requests preempted by it and those ended since the last plan are in
  // plan.released (their KV pages are free before the step runs).
  model::StepPlan Schedule();
  // The step ran: planned tokens are in the KV cache; each sampled sequence has one more token.
  void Commit(const model::StepPlan& plan);
  // Ends a request (finished, cancelled or failed), running or waiting.
  void Finish(int64_t id);

  int64_t num_running() const { return static_cast<int64_t>(running_.size()); }
  int64_t num_waiting() const { return static_cast<int64_t>(waiting_.size()); }
  int64_t used_pages() const;    // referenced by a running request, over every group
  int64_t cached_pages() const;  // holding a registered prefix (referenced or not)
  // Prefix-cache keys registered and evicted since the last call, over every group.
  std::vector<kv::KvEvent> TakeKvEvents();
  int64_t total_pages() const { return config_.num_pages * config_.num_groups; }
  int64_t num_preemptions() const { return num_preemptions_; }
  // Prefix cache, in tokens (vLLM's prefix_cache_queries / hits): prompt tokens of admitted
  // requests, and those found cached.
  int64_t prefix_queries() const { return prefix_queries_; }
  int64_t prefix_hits() const { return prefix_hits_; }
  bool has_work() const { return !running_.empty() || !waiting_.empty() || !released_.empty(); }
  const SchedulerConfig& config() const { return config_; }

 private:
  struct Entry {
    int64_t known = 0;     // tokens of the sequence so far (prompt + generated)
    int64_t computed = 0;  // tokens in its KV cache
    std::vector<int32_t> pages;  // its pages in its group's pool (while running)
    std::vector<kv::PageKey> keys;  // its full prompt pages' keys
    int64_t registered = 0;  // leading pages registered in the prefix cache
    int64_t step = -1;     // index in the plan being built, -1 when not in it
    int64_t group = 0;     // attention group (valid while running)
  };
  // Pages `e` holds as a count.
  static int64_t Held(const Entry& e) { return static_cast<int64_t>(e.pages.size()); }
  // Appends `n` fresh pages of e's group to it and to the plan's sequence at `step`.
  void Grow(Entry& e, int64_t n, model::StepSequence& seq);
  // Frees the newest running request of `keep`'s group, moving it to the head of the queue.
  // False when that was `keep` itself.
  bool PreemptNewest(int64_t keep, model::StepPlan& plan, int64_t& budget);
  // Schedules up to `budget` of the request's remaining tokens; false when it was preempted.
  bool ScheduleRunning(int64_t id, model::StepPlan& plan, int64_t& budget);

  SchedulerConfig config_;
  absl::flat_hash_map<int64_t, Entry> entries_;
  std::vector<int64_t> running_;  // admission order, oldest first
  std::deque<int64_t> waiting_;   // FCFS; preempted requests go back to the front
  std::vector<int64_t> released_; // ended since the last plan
  std::vector<kv::BlockPool> pools_;  // per group
  int64_t num_preemptions_ = 0;
  int64_t prefix_queries_ = 0;
  int64_t prefix_hits_ = 0;
  int64_t next_step_ = 0;
};

}  // namespace q3vl::cluster

#endif  // Q3VL_CLUSTER_ENGINE_SCHEDULER_H_
