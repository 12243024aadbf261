// Fuzz target: a request body as a client sends it to /v1/chat/completions or /v1/completions
// (the first byte picks which), through the whole front end: JSON (no exceptions) ->
// api::ParseRequest -> api::Prepare (chat template, tokenizer, data: URL media; local files are
// never read: no directory is allowed) -> the engine requests of its choices -> a response body.
// A refusal must be a 4xx with a message; an accepted request must fit the limits it was
// prepared under and give every choice an engine request.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "cluster/api/openai.h"

namespace {

namespace api = q3vl::cluster::api;
namespace model = q3vl::model;

void Require(bool ok) {
  if (!ok) std::abort();
}

const model::Processor& TheProcessor() {
  static const model::Processor* p = [] {
    auto loaded = model::Processor::Load(Q3VL_MODEL_ASSETS_DIR);
    Require(loaded.ok());
    return new model::Processor(*std::move(loaded));
  }();
  return *p;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const api::Endpoint endpoint = data[0] & 1 ? api::Endpoint::kCompletions : api::Endpoint::kChatCompletions;
  const std::string text(reinterpret_cast<const char*>(data) + 1, size - 1);
  const api::Json body = api::Json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (body.is_discarded()) return 0;
  auto parsed = api::ParseRequest(endpoint, body);
  if (auto* e = std::get_if<api::ApiError>(&parsed)) {
    Require(e->status >= 400 && e->status < 500 && !e->message.empty());
    return 0;
  }
  api::PrepareOptions options{.processor = &TheProcessor(), .max_model_len = 4096, .max_seq_tokens = 2048};
  options.process.allowed_media_dirs = std::vector<std::string>{};
  auto prepared = api::Prepare(std::get<api::ApiRequest>(std::move(parsed)), options);
  if (auto* e = std::get_if<api::ApiError>(&prepared)) {
    Require(e->status >= 400 && e->status < 500 && !e->message.empty());
    return 0;
  }
  const api::PreparedRequest& p = std::get<api::PreparedRequest>(prepared);
  const int64_t prompt = static_cast<int64_t>(p.input.input_ids.size());
  Require(prompt > 0 && p.input.sampling.max_new_tokens >= 1 && prompt + p.input.sampling.max_new_tokens <= 2048);
  Require(p.input.sampling.Validate().ok());
  const auto choices = api::EngineRequests(p, "fuzz");
  Require(static_cast<int>(choices.size()) == p.api.n);
  std::vector<q3vl::cluster::RequestOutput> outputs(choices.size());
  const api::Json response = api::ResponseBody(p.api, "id", 0, "m", outputs, TheProcessor().tokenizer());
  Require(response["choices"].size() == choices.size());
  return 0;
}
