// The OpenAI API as the front ends speak it (the batch runner now, the HTTP server next):
// request bodies of /v1/chat/completions and /v1/completions parsed and checked, turned into
// engine requests, and the engine's outputs turned back into OpenAI's (and vLLM's) response
// objects and error bodies. No I/O and no threads: pure functions over JSON.
#ifndef Q3VL_CLUSTER_API_OPENAI_H_
#define Q3VL_CLUSTER_API_OPENAI_H_

#include <cstdint>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include "absl/status/status.h"
#include "cluster/engine/request.h"
#include "model/processor.h"
#include "model/sampler.h"
#include "nlohmann/json.hpp"

namespace q3vl::cluster::api {

using Json = nlohmann::ordered_json;

// An error as OpenAI reports it: the HTTP status and {"error": {message, type, param, code}}.
struct ApiError {
  int status = 400;
  std::string message;
  std::string type = "invalid_request_error";
  std::string param;  // empty: null
  std::string code;   // empty: null
  Json Body() const;  // {"error": {...}}
};
ApiError InvalidRequest(std::string message, std::string param = "");
// A Status from a lower layer: InvalidArgument, NotFound, PermissionDenied, Unimplemented and
// OutOfRange are the request's fault (400); ResourceExhausted is 429; Unavailable 503; else 500.
ApiError FromStatus(const absl::Status& status, std::string param = "");

template <typename T>
using ApiResult = std::variant<T, ApiError>;

enum class Endpoint { kChatCompletions, kCompletions };
// "/v1/chat/completions" or "/v1/completions"; nullopt for any other path.
std::optional<Endpoint> EndpointOf(const std::string& url);

// A parsed request body. Fields are the OpenAI API's; vLLM's extensions that we honour are
// top_k, min_tokens, ignore_eos, stop_token_ids, skip_special_tokens, mm_processor_kwargs,
// add_generation_prompt, continue_final_message and prompt_logprobs (0 only: each prompt
// token's own log-probability). One of our own: prompt_logprobs_start, the first prompt
// position to score; the positions before it answer null and may come from the prefix cache
// (scoring an answer after a long shared prompt then costs only the answer).
struct ApiRequest {
  Endpoint endpoint = Endpoint::kChatCompletions;
  std::string model;                   // as given (may be empty)
  Json messages;                       // chat: the messages array
  std::optional<std::string> prompt;   // completions: prompt text ...
  std::vector<int64_t> prompt_ids;     // ... or token ids
  int n = 1;
  std::optional<int64_t> max_tokens;   // max_tokens or max_completion_tokens
  float temperature = 1.0f;            // OpenAI's default
  float top_p = 1.0f;
  int64_t top_k = 0;                   // 0 (or -1 in the body): all
  std::optional<uint64_t> seed;
  std::vector<std::string> stop;
  std::vector<int64_t> stop_token_ids;
  int64_t min_tokens = 0;
  bool ignore_eos = false;
  bool skip_special_tokens = true;
  int top_logprobs = -1;               // -1: no logprobs; else the alternatives per token
  bool stream = false;
  bool include_usage = false;          // stream_options.include_usage
  // vLLM's mm_processor_kwargs (chat): this request's media processing over the model's
  // preprocessor configs. fps, min_frames, max_frames apply to videos; min_pixels and
  // max_pixels to images (per image) and videos (over all sampled frames, as Qwen3-VL's video
  // processor counts them).
  struct MediaKwargs {
    std::optional<double> fps;
    std::optional<int64_t> min_pixels, max_pixels, min_frames, max_frames;
  };
  std::optional<MediaKwargs> mm_processor_kwargs;
  bool add_generation_prompt = true;   // chat
  bool continue_final_message = false; // chat
  bool prompt_logprobs = false;        // "prompt_logprobs": 0
  int64_t prompt_logprobs_start = 1;
  // Set by Prepare when prompt_logprobs is: the prompt's ids, to spell the scored tokens.
  std::vector<int64_t> scored_prompt_ids;
};

// Parses and checks a body. A field this server does not implement, or a value it cannot
// honour, is a 400 naming the field: nothing is silently ignored.
ApiResult<ApiRequest> ParseRequest(Endpoint endpoint, const Json& body);

// What preparing needs besides the request: the processor (template, tokenizer, media), where
// media may come from, and the limits a request must fit.
struct PrepareOptions {
  const model::Processor* processor = nullptr;
  model::ProcessOptions process;       // media root and allowed directories
  int64_t max_model_len = 0;           // prompt + completion, the model's context
  int64_t max_seq_tokens = 0;          // prompt + completion one sequence may hold in the KV cache (0: no limit)
};

// A request ready for the engine: the prompt expanded and media decoded once, shared by its
// n choices.
struct PreparedRequest {
  ApiRequest api;
  model::RunnerRequest input;  // ids, images, videos; sampling with max_new_tokens set
};
ApiResult<PreparedRequest> Prepare(ApiRequest api, const PrepareOptions& options);

// The engine requests of its n choices, ids "<id>-<choice>". Choice i of a seeded request is
// seeded seed + i; an unseeded one draws its seed at random.
std::vector<EngineRequest> EngineRequests(const PreparedRequest& request, const std::string& id);

// The response body for the merged outputs of each choice (Collect), as OpenAI returns it:
// chat.completion or text_completion, with usage. `tokenizer` spells the logprobs' tokens.
Json ResponseBody(const ApiRequest& request, const std::string& id, int64_t created, const std::string& model,
                  const std::vector<RequestOutput>& choices, const model::Tokenizer& tokenizer);

// Streaming (server-sent events): the chunk for one delta of choice `index`, as OpenAI sends
// it: chat.completion.chunk (its first chunk carries the assistant role) or text_completion;
// finish_reason (and stop_reason) on the choice's last. With include_usage, "usage": null.
Json StreamChunk(const ApiRequest& request, const std::string& id, int64_t created, const std::string& model,
                 int index, const RequestOutput& delta, bool first, const model::Tokenizer& tokenizer);
// The chunk after the last choice ended, with include_usage: "choices": [] and the usage.
// Usage everywhere carries prompt_tokens_details.cached_tokens (the prompt tokens the prefix
// cache held at admission), as OpenAI reports it.
Json UsageChunk(const ApiRequest& request, const std::string& id, int64_t created, const std::string& model,
                int64_t prompt_tokens, int64_t cached_tokens, int64_t completion_tokens);

// A new request id: 16 random hex digits.
std::string NewRequestId();
// Compact JSON text; invalid UTF-8 in strings is replaced, never an exception.
std::string Dump(const Json& json);

// The first error among the choices' outputs (a choice that ended in error), if any.
std::optional<ApiError> ChoiceError(const std::vector<RequestOutput>& choices);

}  // namespace q3vl::cluster::api

#endif  // Q3VL_CLUSTER_API_OPENAI_H_
