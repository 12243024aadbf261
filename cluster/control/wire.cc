#include "cluster/control/wire.h"

#include <cstring>

namespace q3vl::cluster::control {

void ToProto(const RequestOutput& out, int choice, pb::Output& p) {
  p.set_choice(choice);
  for (int64_t t : out.token_ids) p.add_token_ids(t);
  p.set_text(out.text);
  for (const model::TokenLogprob& lp : out.logprobs) {
    pb::TokenLogprob* q = p.add_logprobs();
    q->set_token(lp.token);
    q->set_logprob(lp.logprob);
    for (const auto& [token, logprob] : lp.top) {
      pb::TopLogprob* t = q->add_top();
      t->set_token(token);
      t->set_logprob(logprob);
    }
  }
  p.set_first_prompt_row(out.first_prompt_row);
  for (float v : out.prompt_logprobs) p.add_prompt_logprobs(v);
  if (out.finish) p.set_finish(FinishReasonName(*out.finish));
  if (out.stop_reason) p.set_stop_reason(*out.stop_reason);
  if (!out.error.ok()) {
    p.set_error_code(static_cast<int>(out.error.code()));
    p.set_error_message(std::string(out.error.message()));
  }
  p.set_prompt_tokens(out.prompt_tokens);
  p.set_cached_prompt_tokens(out.cached_prompt_tokens);
  p.set_completion_tokens(out.completion_tokens);
  p.set_queue_seconds(out.queue_seconds);
  p.set_ttft_seconds(out.ttft_seconds);
  p.set_e2e_seconds(out.e2e_seconds);
}

RequestOutput FromProto(const pb::Output& p) {
  RequestOutput out;
  out.token_ids.assign(p.token_ids().begin(), p.token_ids().end());
  out.text = p.text();
  for (const pb::TokenLogprob& q : p.logprobs()) {
    model::TokenLogprob lp{.token = q.token(), .logprob = q.logprob()};
    for (const pb::TopLogprob& t : q.top()) lp.top.emplace_back(t.token(), t.logprob());
    out.logprobs.push_back(std::move(lp));
  }
  out.first_prompt_row = p.first_prompt_row();
  out.prompt_logprobs.assign(p.prompt_logprobs().begin(), p.prompt_logprobs().end());
  for (FinishReason r : {FinishReason::kStop, FinishReason::kLength, FinishReason::kAbort, FinishReason::kError}) {
    if (p.finish() == FinishReasonName(r)) out.finish = r;
  }
  if (!p.finish().empty() && !out.finish) out.finish = FinishReason::kError;
  if (p.has_stop_reason()) out.stop_reason = p.stop_reason();
  if (p.error_code() != 0) out.error = absl::Status(static_cast<absl::StatusCode>(p.error_code()), p.error_message());
  out.prompt_tokens = p.prompt_tokens();
  out.cached_prompt_tokens = p.cached_prompt_tokens();
  out.completion_tokens = p.completion_tokens();
  out.queue_seconds = p.queue_seconds();
  out.ttft_seconds = p.ttft_seconds();
  out.e2e_seconds = p.e2e_seconds();
  return out;
}

grpc::Status ToGrpcStatus(const api::ApiError& e) {
  grpc::StatusCode code = grpc::StatusCode::INTERNAL;
  switch (e.status) {
    case 400: code = grpc::StatusCode::INVALID_ARGUMENT; break;
    case 401: code = grpc::StatusCode::UNAUTHENTICATED; break;
    case 404: code = grpc::StatusCode::NOT_FOUND; break;
    case 429: code = grpc::StatusCode::RESOURCE_EXHAUSTED; break;
    case 503: code = grpc::StatusCode::UNAVAILABLE; break;
    default: break;
  }
  api::Json details = e.Body();
  details["status"] = e.status;
  return grpc::Status(code, e.message, api::Dump(details));
}

api::ApiError FromGrpcStatus(const grpc::Status& status) {
  if (!status.error_details().empty()) {
    try {
      const api::Json j = api::Json::parse(status.error_details());
      const api::Json& err = j.at("error");
      auto str = [&](const char* k) { return err.contains(k) && err[k].is_string() ? err[k].get<std::string>() : ""; };
      return {.status = j.at("status").get<int>(), .message = str("message"), .type = str("type"), .param = str("param"),
              .code = str("code")};
    } catch (const api::Json::exception&) {
    }
  }
  // A transport failure (the replica went away, a deadline): the replica is unavailable.
  absl::StatusCode code = absl::StatusCode::kUnavailable;
  if (status.error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED) code = absl::StatusCode::kResourceExhausted;
  if (status.error_code() == grpc::StatusCode::INVALID_ARGUMENT) code = absl::StatusCode::kInvalidArgument;
  return api::FromStatus(absl::Status(code, status.error_message()));
}

std::string KeyBytes(const kv::PageKey& key) { return std::string(reinterpret_cast<const char*>(key.bytes.data()), key.bytes.size()); }

bool KeyFromBytes(const std::string& bytes, kv::PageKey& key) {
  if (bytes.size() != key.bytes.size()) return false;
  std::memcpy(key.bytes.data(), bytes.data(), key.bytes.size());
  return true;
}

}  // namespace q3vl::cluster::control
