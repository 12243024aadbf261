// ModelRunner: runs StepPlans (step_plan.h) on a loaded Qwen3VL. It owns the replica's paged
// KV cache (one sequence per request id) and each request's state: prompt and generated
// tokens, M-RoPE positions, seeded Rng, and the visual features, encoded once at the first
// chunk that reaches a visual token and kept until the request is removed (a recompute after
// preemption reuses them). A chunk may end anywhere, inside an image's or a frame group's span
// too: it receives exactly its slice of the visual rows and DeepStack rows.
// One step = one packed forward over every planned sequence (decode tokens and prefill chunks),
// then sampling: rows that need whole logits (logprobs, min_tokens masking, kept prompt
// logits) read them on the host; the rest sample from backend-side top-k candidates.
// Every rank of a replica that runs the same calls in the same order stays identical (the
// sampling is drawn identically everywhere). With data-parallel attention (a stage of S ranks
// in S / T attention groups of T), each planned sequence names its group (the scheduler's
// choice, StepSequence::group); a rank runs only its group's sequences (KV, attention, sampling),
// joins every MoE exchange (with no tokens if need be) and every collective vision encoding,
// and each group's outputs reach every rank of the stage, so Execute returns the whole plan's
// outputs everywhere. Not thread-safe except Validate.
#ifndef Q3VL_MODEL_MODEL_RUNNER_H_
#define Q3VL_MODEL_MODEL_RUNNER_H_

#include <memory>

#include "absl/container/flat_hash_map.h"
#include "kv/paged_kv_cache.h"
#include "model/qwen3_vl.h"
#include "model/rope.h"
#include "model/step_plan.h"
#include "model/visual_features.h"

namespace q3vl::model {

struct ModelRunnerOptions {
  int64_t page_size = 16;  // tokens per KV page
  int64_t num_pages = 0;   // KV pool size; REQUIRES: > 0
  DType kv_dtype = DType::kBF16;  // KV page storage: bf16, or f32 for the exact fp32 path
  // Encoder cache budget in visual tokens (model/encoder_cache.h); 0: none. Every rank of a
  // replica that encodes or serves the tower must use the same value.
  int64_t encoder_cache_tokens = 0;
  // Intermediates of every step that prefills (inputs_embeds, vision points, layer_hidden,
  // router_topk, final_hidden_normed of the rows whose whole logits are read): the golden
  // tests localise errors with it. Decode-only steps report nothing. Null: none.
  const TraceFn* trace = nullptr;
};

// The prefix-cache keys of a request's full prompt pages (kv::PageKeys over its ids, each
// image's and video frame group's content digest over the span of its placeholder tokens:
// the encoder cache's units, encoder_cache.h); empty when the
// request asks for prompt logits or every prompt logprob (it must compute every row), only the
// pages before row prompt_logprobs_start - 1 when it asks for logprobs from there. The runner's
// PrefixKeys, and the coordinator's: both must name the same pages alike.
std::vector<kv::PageKey> PromptPageKeys(const ModelConfig& config, const RunnerRequest& request, int64_t page_size);

class ModelRunner : public StepRunner {
 public:
  // REQUIRES: the model holds a decoder (not a vision rank).
  ModelRunner(const Qwen3VL& model, const ModelRunnerOptions& options);

  absl::Status Validate(const RunnerRequest& request) const override;
  std::vector<kv::PageKey> PrefixKeys(const RunnerRequest& request, int64_t page_size) const override;
  absl::Status Add(int64_t id, RunnerRequest request) override;
  void Remove(int64_t id) override;
  // Null without an encoder cache (options.encoder_cache_tokens == 0).
  const EncoderCache* encoder_cache() const { return encoder_cache_.get(); }
  absl::StatusOr<StepOutput> Execute(const StepPlan& plan) override;
  RunnerCounters counters() const override;

  const ModelRunnerOptions& options() const { return options_; }
  int64_t free_pages() const { return cache_.free_pages(); }
  // Tokens this rank has run through its attention layers (its group's share of every plan).
  int64_t tokens_run() const { return tokens_run_; }

 private:
  struct Sequence {
    RunnerRequest request;
    RopeIndex rope;
    std::vector<int64_t> tokens;         // prompt, then generated tokens
    std::vector<int64_t> visual_before;  // [S + 1]: visual tokens among prompt[0, t)
    bool encoded = false;
    VisualFeatures features;             // rows in prompt order (valid once encoded)
    Rng rng;
    int64_t prompt_rows_done = 0;        // prompt rows whose logits/logprobs were reported
  };

  // The inputs of one step, packed.
  struct Batch;
  // The plan's sequences this rank runs, forward and sampling (all of them, or its attention
  // group's share; possibly none, the rank still joining the MoE exchanges).
  StepOutput ExecuteLocal(const StepPlan& plan);
  // Data-parallel attention: each group's outputs to every rank of the stage.
  void ShareOutputs(const StepPlan& plan, StepOutput& out);
  void AddSequence(const StepSequence& s, Sequence& seq, Batch& batch);
  // The request's visual features (EncodeVisualFeatures through the encoder cache), timed.
  VisualFeatures Encode(const Sequence& seq, const TraceFn* trace);
  // Whole logit rows on the host for rows that need them; samples the rest on the backend.
  void SampleAndReport(const StepPlan& plan, const Tensor& hidden, const std::vector<int64_t>& q_starts,
                       StepOutput& out);

  const Qwen3VL& model_;
  ModelRunnerOptions options_;
  kv::PagedKvCache cache_;
  std::unique_ptr<EncoderCache> encoder_cache_;  // null without a cache
  absl::flat_hash_map<int64_t, std::unique_ptr<Sequence>> seqs_;
  int64_t tokens_run_ = 0;
  double vision_seconds_ = 0.0;
  const TraceFn* step_trace_ = nullptr;  // options_.trace while a step that prefills runs
};

// The vision ranks of a mesh (they hold the tower, no decoder): runs ServeVision for each
// request's images, then videos, exactly when a ModelRunner on stage 0 executing the same plans
// encodes them (at the first chunk that reaches a visual token), and for exactly the items it
// encodes (an equal encoder cache fed the same calls), so the vision stage's collectives line
// up. Sampling and KV are not its business: Execute returns no tokens.
class VisionStageRunner : public StepRunner {
 public:
  // `encoder_cache_tokens`: the decoder ranks' ModelRunnerOptions value (the same decisions).
  explicit VisionStageRunner(const Qwen3VL& model, int64_t encoder_cache_tokens = 0)
      : model_(model), encoder_cache_(encoder_cache_tokens > 0 ? new EncoderCache(encoder_cache_tokens) : nullptr) {}
  absl::Status Validate(const RunnerRequest& request) const override;
  absl::Status Add(int64_t id, RunnerRequest request) override;
  void Remove(int64_t id) override { seqs_.erase(id); }
  absl::StatusOr<StepOutput> Execute(const StepPlan& plan) override;

 private:
  struct Sequence {
    RunnerRequest request;
    std::vector<int64_t> visual_before;  // [S + 1]
    bool encoded = false;
  };
  const Qwen3VL& model_;
  std::unique_ptr<EncoderCache> encoder_cache_;  // keys only; null without a cache
  absl::flat_hash_map<int64_t, Sequence> seqs_;
};

// [S + 1]: the visual tokens (image and video pads) among ids[0, t).
std::vector<int64_t> VisualPrefixCounts(const ModelConfig& config, const std::vector<int64_t>& ids);

// log softmax of one row; the chosen token's value and the `top` best (value descending, id
// ascending on ties).
TokenLogprob LogprobOf(const float* logits, int64_t vocab, int64_t token, int top);

}  // namespace q3vl::model

#endif  // Q3VL_MODEL_MODEL_RUNNER_H_
