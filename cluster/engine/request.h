// What front ends hand the engine and get back: a request (prompt ids and media, sampling, stop
// conditions, logprobs) and the stream of its outputs (new tokens, incremental text that never
// splits a UTF-8 character, logprobs, the finish reason, usage and timings). A RequestStream is
// written by the engine loop and read by one consumer thread; both sides are thread-safe.
#ifndef Q3VL_CLUSTER_ENGINE_REQUEST_H_
#define Q3VL_CLUSTER_ENGINE_REQUEST_H_

#include <cstdint>
#include <deque>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "core/tensor.h"
#include "model/step_plan.h"

namespace q3vl::cluster {

struct EngineRequest {
  std::string id;  // the caller's id; unique among the engine's live requests
  // Prompt ids, media, sampling (max_new_tokens, seed, ...; stop_tokens: extra ids that end the
  // sequence), min_tokens, top_logprobs, prompt_logprobs, keep_prompt_logits.
  model::RunnerRequest input;
  bool ignore_eos = false;         // do not stop at the model's end-of-sequence ids
  std::vector<std::string> stop;   // stop strings: matched on the text, excluded from it
  bool skip_special_tokens = true; // in the text (token ids are always complete)
};

enum class FinishReason { kStop, kLength, kAbort, kError };
const char* FinishReasonName(FinishReason reason);  // "stop", "length", "abort", "error"

// One delta of a request's output.
struct RequestOutput {
  std::vector<int64_t> token_ids;                 // new tokens (a stop token included)
  std::string text;                               // new text, whole UTF-8 characters
  std::vector<model::TokenLogprob> logprobs;      // per new token, when top_logprobs >= 0
  int64_t first_prompt_row = 0;                   // prompt position of the first entry below
  std::vector<float> prompt_logprobs;             // for positions first_prompt_row + 1, ...
  std::vector<Tensor> prompt_logits;              // [rows, V] chunks, in order (keep_prompt_logits)
  std::optional<FinishReason> finish;             // set on the last output
  std::optional<std::string> stop_reason;         // the stop string or stop token that ended it
  absl::Status error;                             // with kError (or kAbort on shutdown)
  int64_t prompt_tokens = 0;
  int64_t cached_prompt_tokens = 0;               // of them, found in the prefix cache at admission
  int64_t completion_tokens = 0;                  // so far
  // On the last output: seconds from submission to scheduling, first token, and the end.
  double queue_seconds = 0.0, ttft_seconds = 0.0, e2e_seconds = 0.0;
};

class RequestStream {
 public:
  // The next delta: blocks until one is ready, the stream ended (nullopt), or `timeout` passed
  // (nullopt with done() false).
  std::optional<RequestOutput> Next(absl::Duration timeout = absl::InfiniteDuration());
  // True once the final output has been read.
  bool done() const;
  // For consumers that must not block (an asynchronous server): `listener` is called after
  // every Push (on the engine's thread, outside the stream's lock; it must not block), and once
  // at once when outputs are already waiting. Then read with Next(absl::ZeroDuration()).
  void SetListener(std::function<void()> listener);
  // Engine side.
  void Push(RequestOutput output);

 private:
  mutable absl::Mutex mu_;
  std::function<void()> listener_ ABSL_GUARDED_BY(mu_);
  std::deque<RequestOutput> queue_ ABSL_GUARDED_BY(mu_);
  bool closed_ ABSL_GUARDED_BY(mu_) = false;  // the final output was pushed
  bool drained_ ABSL_GUARDED_BY(mu_) = false; // ... and read
};

// Merges delta `next` into `all` (what Collect does with each).
void Append(RequestOutput& all, RequestOutput next);
// Every delta of a stream merged into one (blocks until the end).
RequestOutput Collect(RequestStream& stream);

}  // namespace q3vl::cluster

#endif  // Q3VL_CLUSTER_ENGINE_REQUEST_H_
