// The contract between a scheduler and a model runner: one immutable StepPlan per forward step
// (which tokens of which requests run, which requests' KV is freed first) and the StepOutput it
// produces (a sampled token, logprobs and prompt logits per planned sequence). StepRunner is
// the interface the engine drives; ModelRunner (model_runner.h) runs it on a loaded model, and
// tests drive the engine with fakes. Plans and outputs are plain values: copy them freely.
#ifndef Q3VL_MODEL_STEP_PLAN_H_
#define Q3VL_MODEL_STEP_PLAN_H_

#include <cstdint>
#include <optional>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/tensor.h"
#include "kv/block_pool.h"
#include "model/encoder_cache.h"
#include "model/sampler.h"
#include "model/vision.h"

namespace q3vl::model {

// What a runner needs of a request, fixed at submission.
struct RunnerRequest {
  std::vector<int64_t> input_ids;  // expanded prompt (placeholders already repeated)
  VisionInput images;              // every image of the prompt, in order (may be empty)
  VisionInput videos;              // every video of the prompt, in order (may be empty)
  // sampling.stop_tokens are the ids that end the sequence (the engine checks them); the runner
  // masks them out until min_tokens tokens have been generated.
  SamplingParams sampling;
  int64_t min_tokens = 0;
  int top_logprobs = -1;            // -1: none; 0..kMaxTopLogprobs: chosen token + N alternatives
  bool prompt_logprobs = false;     // log p(prompt[t] | prompt[< t]) for t >= prompt_logprobs_start
  // The first prompt position whose log-probability is wanted (>= 1). Positions before it may
  // come from the prefix cache (a score of an answer after a long shared prompt reuses it).
  int64_t prompt_logprobs_start = 1;
  bool keep_prompt_logits = false;  // every prompt row's logits (eval-case's fp32 contract)
  // The media's unit digests (DigestMedia), when the submitter computed them for the prefix
  // keys: the encoder cache then looks them up without hashing the pixels again. Not sent to
  // follower ranks (they hash their own when their cache needs it).
  std::optional<MediaDigests> media_digests;

  static constexpr int kMaxTopLogprobs = 20;
};

// One sequence's part of a step: tokens [begin, begin + num_tokens) of the request's tokens
// (prompt, then what it generated). begin equals the tokens already in its KV cache: for a
// sequence the runner does not hold yet, the tokens of a prefix-cache hit (0 without one).
struct StepSequence {
  int64_t request = 0;
  int64_t begin = 0;
  int64_t num_tokens = 0;
  bool sample = false;  // the step reaches the last known token: sample the next one
  int64_t group = 0;    // the data-parallel attention group that runs it (0 without groups)
  // KV pages (of the group's pool) the sequence appends to its block table before the step:
  // on admission the cached prefix's pages, then fresh ones for the step's tokens.
  std::vector<int32_t> pages;
};

struct StepPlan {
  int64_t step = 0;
  std::vector<int64_t> released;   // requests whose KV pages are freed before the step runs
  std::vector<StepSequence> seqs;  // decode tokens first, then prefill chunks

  int64_t num_tokens() const {
    int64_t n = 0;
    for (const StepSequence& s : seqs) n += s.num_tokens;
    return n;
  }
};

struct TokenLogprob {
  int64_t token = 0;
  float logprob = 0.0f;
  std::vector<std::pair<int64_t, float>> top;  // the most likely tokens, best first
};

// Parallel to StepPlan::seqs.
struct SequenceOutput {
  std::optional<int64_t> token;          // when the plan said sample
  std::optional<TokenLogprob> logprob;   // with the token, when top_logprobs >= 0
  // Prompt positions of this chunk not reported before (a recompute after preemption reports
  // nothing twice): first_prompt_row is the first such position.
  int64_t first_prompt_row = 0;
  std::vector<float> prompt_logprobs;    // log p(prompt[t] | prompt[< t]) for t = first + 1, ...
  Tensor prompt_logits;                  // [rows, V] host tensor, when keep_prompt_logits
};

struct StepOutput {
  std::vector<SequenceOutput> seqs;
};

// Cumulative counters a runner keeps for the engine's metrics.
struct RunnerCounters {
  int64_t mm_cache_queries = 0;  // encoder cache lookups (one per image or video frame group)
  int64_t mm_cache_hits = 0;
  // Wall seconds producing requests' visual features on this rank (the tower, or waiting for
  // the vision ranks' rows; queued device work may finish after the clock stops).
  double vision_seconds = 0.0;
};

// Runs plans. Not thread-safe except Validate: one engine loop drives it.
class StepRunner {
 public:
  virtual ~StepRunner() = default;
  // InvalidArgument naming the problem; needs only the config. Thread-safe.
  virtual absl::Status Validate(const RunnerRequest& request) const = 0;
  // Prefix-cache keys of the request's full prompt pages (kv::PageKeys over its tokens and the
  // content of its images and video frame groups); none for pages whose rows the request must
  // compute (prompt logits, prompt logprobs from their start on). Thread-safe.
  virtual std::vector<kv::PageKey> PrefixKeys(const RunnerRequest& request, int64_t page_size) const {
    return {};
  }
  // Makes `id` known (before any plan names it). REQUIRES: Validate(request) was ok.
  virtual absl::Status Add(int64_t id, RunnerRequest request) = 0;
  // Forgets `id` and frees its KV pages and media features.
  virtual void Remove(int64_t id) = 0;
  virtual absl::StatusOr<StepOutput> Execute(const StepPlan& plan) = 0;
  virtual RunnerCounters counters() const { return {}; }
  // Called by an idle engine at least every EngineConfig::heartbeat: a runner whose followers
  // wait on communicators that time out tells them the leader is alive.
  virtual absl::Status Heartbeat() { return absl::OkStatus(); }
};

}  // namespace q3vl::model

#endif  // Q3VL_MODEL_STEP_PLAN_H_
