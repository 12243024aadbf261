#include "cluster/engine/request.h"

namespace q3vl::cluster {

const char* FinishReasonName(FinishReason reason) {
  switch (reason) {
    case FinishReason::kStop: return "stop";
    case FinishReason::kLength: return "length";
    case FinishReason::kAbort: return "abort";
    case FinishReason::kError: return "error";
  }
  return "error";
}

std::optional<RequestOutput> RequestStream::Next(absl::Duration timeout) {
  absl::MutexLock lock(&mu_);
  auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return !queue_.empty() || closed_; };
  mu_.AwaitWithTimeout(absl::Condition(&ready), timeout);
  if (queue_.empty()) {
    if (closed_) drained_ = true;
    return std::nullopt;
  }
  RequestOutput out = std::move(queue_.front());
  queue_.pop_front();
  if (closed_ && queue_.empty()) drained_ = true;
  return out;
}

bool RequestStream::done() const {
  absl::MutexLock lock(&mu_);
  return drained_;
}

void RequestStream::SetListener(std::function<void()> listener) {
  bool waiting = false;
  {
    absl::MutexLock lock(&mu_);
    listener_ = listener;
    waiting = !queue_.empty();
  }
  if (waiting && listener) listener();
}

void RequestStream::Push(RequestOutput output) {
  std::function<void()> listener;
  {
    absl::MutexLock lock(&mu_);
    if (output.finish.has_value()) closed_ = true;
    queue_.push_back(std::move(output));
    listener = listener_;
  }
  if (listener) listener();
}

void Append(RequestOutput& all, RequestOutput o) {
  all.token_ids.insert(all.token_ids.end(), o.token_ids.begin(), o.token_ids.end());
  all.text += o.text;
  all.logprobs.insert(all.logprobs.end(), o.logprobs.begin(), o.logprobs.end());
  if (all.prompt_logprobs.empty()) all.first_prompt_row = o.first_prompt_row;
  all.prompt_logprobs.insert(all.prompt_logprobs.end(), o.prompt_logprobs.begin(), o.prompt_logprobs.end());
  all.prompt_logits.insert(all.prompt_logits.end(), o.prompt_logits.begin(), o.prompt_logits.end());
  all.prompt_tokens = o.prompt_tokens;
  all.cached_prompt_tokens = o.cached_prompt_tokens;
  all.completion_tokens = o.completion_tokens;
  if (o.finish) {
    all.finish = o.finish;
    all.stop_reason = o.stop_reason;
    all.error = o.error;
    all.queue_seconds = o.queue_seconds;
    all.ttft_seconds = o.ttft_seconds;
    all.e2e_seconds = o.e2e_seconds;
  }
}

RequestOutput Collect(RequestStream& stream) {
  RequestOutput all;
  while (std::optional<RequestOutput> o = stream.Next()) Append(all, *std::move(o));
  return all;
}

}  // namespace q3vl::cluster
