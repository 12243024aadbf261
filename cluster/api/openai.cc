#include "cluster/api/openai.h"

#include <algorithm>
#include <random>
#include <set>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "model/text/byte_level.h"

namespace q3vl::cluster::api {
namespace {

Json NullIfEmpty(const std::string& s) { return s.empty() ? Json(nullptr) : Json(s); }

// Fields read one by one; what is left at the end was not understood.
class Fields {
 public:
  explicit Fields(const Json& body) : body_(body) {}

  // The field when present and not null.
  const Json* Get(const char* name) {
    seen_.insert(name);
    auto it = body_.find(name);
    return it == body_.end() || it->is_null() ? nullptr : &*it;
  }

  std::optional<ApiError> Unknown() const {
    std::vector<std::string> unknown;
    for (auto it = body_.begin(); it != body_.end(); ++it) {
      if (!seen_.contains(it.key())) unknown.push_back(it.key());
    }
    if (unknown.empty()) return std::nullopt;
    return InvalidRequest(absl::StrCat("unsupported parameter", unknown.size() > 1 ? "s" : "", ": ",
                                       absl::StrJoin(unknown, ", ")),
                          unknown[0]);
  }

 private:
  const Json& body_;
  std::set<std::string, std::less<>> seen_;
};

std::optional<ApiError> Integer(const Json* v, const char* name, int64_t lo, int64_t hi, int64_t& out) {
  if (v == nullptr) return std::nullopt;
  if (!v->is_number_integer()) return InvalidRequest(absl::StrCat(name, " must be an integer"), name);
  const int64_t x = v->is_number_unsigned() && v->get<uint64_t>() > static_cast<uint64_t>(INT64_MAX)
                        ? INT64_MAX : v->get<int64_t>();
  if (x < lo || x > hi) {
    return InvalidRequest(absl::StrCat(name, " must be in [", lo, ", ", hi, "], got ", x), name);
  }
  out = x;
  return std::nullopt;
}

std::optional<ApiError> Number(const Json* v, const char* name, double lo, double hi, bool open_lo, float& out) {
  if (v == nullptr) return std::nullopt;
  if (!v->is_number()) return InvalidRequest(absl::StrCat(name, " must be a number"), name);
  const double x = v->get<double>();
  if (x < lo || x > hi || (open_lo && x == lo)) {
    return InvalidRequest(absl::StrCat(name, " must be in ", open_lo ? "(" : "[", lo, ", ", hi, "], got ", x), name);
  }
  out = static_cast<float>(x);
  return std::nullopt;
}

std::optional<ApiError> Bool(const Json* v, const char* name, bool& out) {
  if (v == nullptr) return std::nullopt;
  if (!v->is_boolean()) return InvalidRequest(absl::StrCat(name, " must be true or false"), name);
  out = v->get<bool>();
  return std::nullopt;
}

// A field we accept only at its default value (so clients that send the default still work).
std::optional<ApiError> OnlyDefault(Fields& f, const char* name, const Json& default_value, const char* what) {
  const Json* v = f.Get(name);
  if (v == nullptr || *v == default_value) return std::nullopt;
  if (v->is_number() && default_value.is_number() && v->get<double>() == default_value.get<double>()) return std::nullopt;
  return InvalidRequest(absl::StrCat(name, " is not supported (", what, ")"), name);
}

std::string TokenText(const model::Tokenizer& tokenizer, int64_t id) {
  const absl::string_view bytes = tokenizer.TokenBytes(static_cast<int32_t>(id));
  if (model::IsValidUtf8(bytes)) return std::string(bytes);
  std::string out = "bytes:";  // OpenAI's spelling of a token that is part of a character
  for (unsigned char c : bytes) absl::StrAppend(&out, "\\x", absl::Hex(c, absl::kZeroPad2));
  return out;
}

Json TokenBytesJson(const model::Tokenizer& tokenizer, int64_t id) {
  Json out = Json::array();
  for (unsigned char c : tokenizer.TokenBytes(static_cast<int32_t>(id))) out.push_back(static_cast<int>(c));
  return out;
}

Json ChatLogprobs(const std::vector<model::TokenLogprob>& logprobs, int top, const model::Tokenizer& tokenizer) {
  Json content = Json::array();
  for (const model::TokenLogprob& lp : logprobs) {
    Json alternatives = Json::array();
    for (size_t i = 0; i < lp.top.size() && static_cast<int>(i) < top; ++i) {
      alternatives.push_back({{"token", TokenText(tokenizer, lp.top[i].first)},
                              {"logprob", lp.top[i].second},
                              {"bytes", TokenBytesJson(tokenizer, lp.top[i].first)}});
    }
    content.push_back({{"token", TokenText(tokenizer, lp.token)}, {"logprob", lp.logprob},
                       {"bytes", TokenBytesJson(tokenizer, lp.token)}, {"top_logprobs", alternatives}});
  }
  return {{"content", content}};
}

Json CompletionLogprobs(const std::vector<model::TokenLogprob>& logprobs, int top, const model::Tokenizer& tokenizer) {
  Json tokens = Json::array(), token_logprobs = Json::array(), tops = Json::array(), offsets = Json::array();
  int64_t offset = 0;
  for (const model::TokenLogprob& lp : logprobs) {
    const std::string text = TokenText(tokenizer, lp.token);
    tokens.push_back(text);
    token_logprobs.push_back(lp.logprob);
    Json alternatives = Json::object();
    for (size_t i = 0; i < lp.top.size() && static_cast<int>(i) < top; ++i) {
      alternatives[TokenText(tokenizer, lp.top[i].first)] = lp.top[i].second;
    }
    tops.push_back(alternatives);
    offsets.push_back(offset);
    offset += static_cast<int64_t>(tokenizer.TokenBytes(static_cast<int32_t>(lp.token)).size());
  }
  return {{"tokens", tokens}, {"token_logprobs", token_logprobs}, {"top_logprobs", tops}, {"text_offset", offsets}};
}

// vLLM's prompt_logprobs: one entry per prompt token, null where not scored (the first token,
// positions before prompt_logprobs_start), else {"<id>": {"logprob", "rank", "decoded_token"}}
// (rank is not computed: null).
Json PromptLogprobs(const ApiRequest& request, const RequestOutput& c, const model::Tokenizer& tokenizer) {
  const std::vector<int64_t>& ids = request.scored_prompt_ids;
  Json out = Json::array();
  for (size_t t = 0; t < ids.size(); ++t) {
    const int64_t k = static_cast<int64_t>(t) - c.first_prompt_row - 1;
    if (k < 0 || k >= static_cast<int64_t>(c.prompt_logprobs.size()) ||
        static_cast<int64_t>(t) < request.prompt_logprobs_start) {
      out.push_back(nullptr);
      continue;
    }
    out.push_back({{absl::StrCat(ids[t]), {{"logprob", c.prompt_logprobs[k]}, {"rank", nullptr},
                                           {"decoded_token", TokenText(tokenizer, ids[t])}}}});
  }
  return out;
}

// vLLM's stop_reason: the stop string, or the stop token id the request named; null for EOS.
Json StopReason(const ApiRequest& request, const RequestOutput& out) {
  if (!out.stop_reason) return nullptr;
  const std::string& reason = *out.stop_reason;
  if (std::find(request.stop.begin(), request.stop.end(), reason) != request.stop.end()) return reason;
  int64_t token = 0;
  if (absl::SimpleAtoi(reason, &token) &&
      std::find(request.stop_token_ids.begin(), request.stop_token_ids.end(), token) != request.stop_token_ids.end()) {
    return token;
  }
  return nullptr;
}

}  // namespace

Json ApiError::Body() const {
  return {{"error", {{"message", message}, {"type", type}, {"param", NullIfEmpty(param)}, {"code", NullIfEmpty(code)}}}};
}

ApiError InvalidRequest(std::string message, std::string param) {
  return {.status = 400, .message = std::move(message), .param = std::move(param)};
}

ApiError FromStatus(const absl::Status& status, std::string param) {
  ApiError e{.message = std::string(status.message()), .param = std::move(param)};
  switch (status.code()) {
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kNotFound:
    case absl::StatusCode::kPermissionDenied:
    case absl::StatusCode::kUnimplemented:
    case absl::StatusCode::kOutOfRange:
    case absl::StatusCode::kFailedPrecondition:
    case absl::StatusCode::kDataLoss:  // a truncated media file
      e.status = 400;
      break;
    case absl::StatusCode::kResourceExhausted:
      e.status = 429;
      e.type = "rate_limit_error";
      break;
    case absl::StatusCode::kUnavailable:
    case absl::StatusCode::kCancelled:
      e.status = 503;
      e.type = "service_unavailable";
      break;
    default:
      e.status = 500;
      e.type = "internal_error";
      break;
  }
  return e;
}

std::optional<Endpoint> EndpointOf(const std::string& url) {
  if (url == "/v1/chat/completions") return Endpoint::kChatCompletions;
  if (url == "/v1/completions") return Endpoint::kCompletions;
  return std::nullopt;
}

ApiResult<ApiRequest> ParseRequest(Endpoint endpoint, const Json& body) {
  if (!body.is_object()) return InvalidRequest("the request body must be a JSON object");
  ApiRequest r{.endpoint = endpoint};
  const bool chat = endpoint == Endpoint::kChatCompletions;
  Fields f(body);
  if (const Json* v = f.Get("model")) {
    if (!v->is_string()) return InvalidRequest("model must be a string", "model");
    r.model = v->get<std::string>();
  }
  if (chat) {
    const Json* messages = f.Get("messages");
    if (messages == nullptr) return InvalidRequest("messages is required", "messages");
    if (!messages->is_array() || messages->empty()) {
      return InvalidRequest("messages must be a non-empty array", "messages");
    }
    r.messages = *messages;
  } else {
    const Json* prompt = f.Get("prompt");
    if (prompt == nullptr) return InvalidRequest("prompt is required", "prompt");
    if (prompt->is_array() && prompt->size() == 1 && (*prompt)[0].is_string()) prompt = &(*prompt)[0];
    if (prompt->is_string()) {
      r.prompt = prompt->get<std::string>();
    } else if (prompt->is_array() && !prompt->empty() &&
               std::all_of(prompt->begin(), prompt->end(), [](const Json& t) { return t.is_number_integer(); })) {
      r.prompt_ids = prompt->get<std::vector<int64_t>>();
    } else {
      return InvalidRequest("prompt must be a string, an array of one string or an array of token ids", "prompt");
    }
  }
  int64_t n = 1, top_k = 0, min_tokens = 0, seed = 0, max_tokens = 0;
  if (auto e = Integer(f.Get("n"), "n", 1, 16, n)) return *e;
  r.n = static_cast<int>(n);
  for (const char* name : {"max_tokens", "max_completion_tokens"}) {
    const Json* v = f.Get(name);
    if (!chat && std::string(name) == "max_completion_tokens" && v != nullptr) {
      return InvalidRequest("max_completion_tokens is a chat completions parameter; use max_tokens", name);
    }
    if (auto e = Integer(v, name, 1, INT64_MAX, max_tokens)) return *e;
    if (v != nullptr) r.max_tokens = max_tokens;
  }
  if (!chat && !r.max_tokens) r.max_tokens = 16;  // the completions API's default
  if (auto e = Number(f.Get("temperature"), "temperature", 0.0, 2.0, false, r.temperature)) return *e;
  if (auto e = Number(f.Get("top_p"), "top_p", 0.0, 1.0, true, r.top_p)) return *e;
  if (auto e = Integer(f.Get("top_k"), "top_k", -1, INT32_MAX, top_k)) return *e;
  r.top_k = top_k < 0 ? 0 : top_k;
  if (const Json* v = f.Get("seed")) {
    if (auto e = Integer(v, "seed", INT64_MIN, INT64_MAX, seed)) return *e;
    r.seed = static_cast<uint64_t>(seed);
  }
  if (const Json* v = f.Get("stop")) {
    if (v->is_string()) {
      r.stop.push_back(v->get<std::string>());
    } else if (v->is_array() && std::all_of(v->begin(), v->end(), [](const Json& s) { return s.is_string(); })) {
      r.stop = v->get<std::vector<std::string>>();
    } else {
      return InvalidRequest("stop must be a string or an array of strings", "stop");
    }
    for (const std::string& s : r.stop) {
      if (s.empty()) return InvalidRequest("stop strings must not be empty", "stop");
    }
  }
  if (const Json* v = f.Get("stop_token_ids")) {
    if (!v->is_array() || !std::all_of(v->begin(), v->end(), [](const Json& t) { return t.is_number_integer(); })) {
      return InvalidRequest("stop_token_ids must be an array of token ids", "stop_token_ids");
    }
    r.stop_token_ids = v->get<std::vector<int64_t>>();
  }
  if (auto e = Integer(f.Get("min_tokens"), "min_tokens", 0, INT64_MAX, min_tokens)) return *e;
  r.min_tokens = min_tokens;
  if (r.max_tokens && r.min_tokens > *r.max_tokens) {
    return InvalidRequest(absl::StrCat("min_tokens (", r.min_tokens, ") exceeds max_tokens (", *r.max_tokens, ")"),
                          "min_tokens");
  }
  if (auto e = Bool(f.Get("ignore_eos"), "ignore_eos", r.ignore_eos)) return *e;
  if (auto e = Bool(f.Get("skip_special_tokens"), "skip_special_tokens", r.skip_special_tokens)) return *e;
  if (chat) {
    bool logprobs = false;
    int64_t top = 0;
    if (auto e = Bool(f.Get("logprobs"), "logprobs", logprobs)) return *e;
    const Json* top_logprobs = f.Get("top_logprobs");
    if (auto e = Integer(top_logprobs, "top_logprobs", 0, model::RunnerRequest::kMaxTopLogprobs, top)) return *e;
    if (top_logprobs != nullptr && !logprobs) {
      return InvalidRequest("top_logprobs needs logprobs set to true", "top_logprobs");
    }
    if (logprobs) r.top_logprobs = static_cast<int>(top);
  } else {
    int64_t top = 0;
    const Json* logprobs = f.Get("logprobs");
    if (auto e = Integer(logprobs, "logprobs", 0, model::RunnerRequest::kMaxTopLogprobs, top)) return *e;
    if (logprobs != nullptr) r.top_logprobs = static_cast<int>(top);
    if (auto e = OnlyDefault(f, "echo", false, "the prompt is not echoed")) return *e;
    if (auto e = OnlyDefault(f, "best_of", 1, "only best_of 1")) return *e;
    if (auto e = OnlyDefault(f, "suffix", "", "no insertion")) return *e;
  }
  if (chat) {
    if (auto e = Bool(f.Get("add_generation_prompt"), "add_generation_prompt", r.add_generation_prompt)) return *e;
    if (auto e = Bool(f.Get("continue_final_message"), "continue_final_message", r.continue_final_message)) return *e;
    if (r.add_generation_prompt && r.continue_final_message) {
      return InvalidRequest("continue_final_message and add_generation_prompt cannot both be true "
                            "(set add_generation_prompt to false to continue the final message)",
                            "continue_final_message");
    }
  }
  if (const Json* v = f.Get("prompt_logprobs"); v != nullptr && !v->is_null()) {
    int64_t k = 0;
    if (auto e = Integer(v, "prompt_logprobs", 0, model::RunnerRequest::kMaxTopLogprobs, k)) return *e;
    if (k != 0) {
      return InvalidRequest("prompt_logprobs above 0 (alternatives for prompt tokens) is not supported; "
                            "0 gives each prompt token's own log-probability", "prompt_logprobs");
    }
    r.prompt_logprobs = true;
  }
  if (const Json* v = f.Get("prompt_logprobs_start")) {
    if (auto e = Integer(v, "prompt_logprobs_start", 1, INT64_MAX, r.prompt_logprobs_start)) return *e;
    if (!r.prompt_logprobs) return InvalidRequest("prompt_logprobs_start needs prompt_logprobs", "prompt_logprobs_start");
  }
  if (const Json* v = f.Get("mm_processor_kwargs")) {
    if (!chat) return InvalidRequest("mm_processor_kwargs is a chat completions parameter (media)", "mm_processor_kwargs");
    if (!v->is_object()) return InvalidRequest("mm_processor_kwargs must be an object", "mm_processor_kwargs");
    ApiRequest::MediaKwargs kw;
    for (auto it = v->begin(); it != v->end(); ++it) {
      const std::string name = absl::StrCat("mm_processor_kwargs.", it.key());
      if (it.key() == "fps") {
        float fps = 0;
        if (auto e = Number(&*it, name.c_str(), 0.0, 60.0, true, fps)) return *e;  // (0, 60]
        kw.fps = fps;
        continue;
      }
      std::optional<int64_t>* field = it.key() == "min_pixels"   ? &kw.min_pixels
                                      : it.key() == "max_pixels" ? &kw.max_pixels
                                      : it.key() == "min_frames" ? &kw.min_frames
                                      : it.key() == "max_frames" ? &kw.max_frames
                                                                 : nullptr;
      if (field == nullptr) {
        return InvalidRequest(absl::StrCat(name, " is not supported (fps, min_pixels, max_pixels, min_frames, max_frames)"),
                              "mm_processor_kwargs");
      }
      int64_t value = 0;
      if (auto e = Integer(&*it, name.c_str(), 1, INT64_MAX / 4, value)) return *e;
      *field = value;
    }
    r.mm_processor_kwargs = kw;
  }
  if (auto e = Bool(f.Get("stream"), "stream", r.stream)) return *e;
  if (r.stream && r.prompt_logprobs) {
    return InvalidRequest("prompt_logprobs is not available with stream: true", "prompt_logprobs");
  }
  if (const Json* v = f.Get("stream_options")) {
    if (!r.stream) return InvalidRequest("stream_options is only allowed when stream is true", "stream_options");
    if (!v->is_object()) return InvalidRequest("stream_options must be an object", "stream_options");
    for (auto it = v->begin(); it != v->end(); ++it) {
      if (it.key() == "include_usage") {
        if (!it->is_boolean()) return InvalidRequest("stream_options.include_usage must be true or false", "stream_options");
        r.include_usage = it->get<bool>();
      } else if (it.key() != "continuous_usage_stats" || *it != false) {
        return InvalidRequest(absl::StrCat("stream_options.", it.key(), " is not supported"), "stream_options");
      }
    }
  }
  // Accepted at their defaults only, so clients that always send them keep working.
  if (auto e = OnlyDefault(f, "frequency_penalty", 0, "penalties are not implemented")) return *e;
  if (auto e = OnlyDefault(f, "presence_penalty", 0, "penalties are not implemented")) return *e;
  if (auto e = OnlyDefault(f, "logit_bias", Json::object(), "logit bias is not implemented")) return *e;
  if (auto e = OnlyDefault(f, "response_format", Json{{"type", "text"}}, "only text output")) return *e;
  if (auto e = OnlyDefault(f, "tools", Json::array(), "tool calls are not implemented")) return *e;
  if (auto e = OnlyDefault(f, "tool_choice", "none", "tool calls are not implemented")) return *e;
  if (auto e = OnlyDefault(f, "parallel_tool_calls", false, "tool calls are not implemented")) return *e;
  if (auto e = OnlyDefault(f, "store", false, "nothing is stored")) return *e;
  (void)f.Get("user");      // an end-user id for abuse tracking: nothing to do with it here
  (void)f.Get("metadata");  // OpenAI's free-form tags (with store)
  if (auto e = f.Unknown()) return *e;
  return r;
}

namespace {

// The request's image and video configs: the model's with `kw` over them, checked, and bounded
// by the context: a pixel budget whose visual tokens could not fit max_model_len is refused
// before any frame is decoded (the budget is what decoding and resizing hold in memory).
std::optional<ApiError> ApplyMediaKwargs(const ApiRequest::MediaKwargs& kw, const model::Processor& processor,
                                         int64_t max_model_len, model::ProcessOptions& process) {
  model::VisionProcessorConfig image = processor.image_config(), video = processor.video_config();
  for (model::VisionProcessorConfig* c : {&image, &video}) {
    if (kw.min_pixels) c->min_pixels = *kw.min_pixels;
    if (kw.max_pixels) c->max_pixels = *kw.max_pixels;
  }
  if (kw.fps) video.fps = *kw.fps;
  if (kw.min_frames) video.min_frames = *kw.min_frames;
  if (kw.max_frames) video.max_frames = *kw.max_frames;
  for (const auto& [config, what] : {std::pair{&image, "images"}, std::pair{&video, "videos"}}) {
    if (absl::Status st = config->Validate(); !st.ok()) {
      return InvalidRequest(absl::StrCat("mm_processor_kwargs for ", what, ": ", st.message()), "mm_processor_kwargs");
    }
  }
  if (max_model_len > 0 && kw.max_pixels) {
    // A video's tokens are its pixels over all frames / (factor^2 * temporal patch); an
    // image's, its pixels / factor^2 (an image past the context fails the prompt check).
    const int64_t video_tokens = video.max_pixels / (video.factor() * video.factor() * video.temporal_patch_size);
    if (video_tokens > max_model_len) {
      return InvalidRequest(absl::StrCat("mm_processor_kwargs.max_pixels (", *kw.max_pixels, ") allows a video of ",
                                         video_tokens, " visual tokens, more than this model's maximum context length (",
                                         max_model_len, ")"),
                            "mm_processor_kwargs");
    }
  }
  if (kw.min_pixels || kw.max_pixels) process.image_config = image;
  process.video_config = video;
  return std::nullopt;
}

}  // namespace

ApiResult<PreparedRequest> Prepare(ApiRequest api, const PrepareOptions& options) {
  PreparedRequest out;
  model::RunnerRequest& in = out.input;
  const model::Tokenizer& tokenizer = options.processor->tokenizer();
  if (api.endpoint == Endpoint::kChatCompletions) {
    model::ProcessOptions process = options.process;
    process.add_generation_prompt = api.add_generation_prompt;
    process.continue_final_message = api.continue_final_message;
    if (api.mm_processor_kwargs) {
      if (auto e = ApplyMediaKwargs(*api.mm_processor_kwargs, *options.processor, options.max_model_len, process)) {
        return *e;
      }
    }
    auto processed = options.processor->Process(api.messages, process);
    if (!processed.ok()) return FromStatus(processed.status(), "messages");
    in.input_ids = std::move(processed->input_ids);
    in.images = std::move(processed->images);
    in.videos = std::move(processed->videos);
  } else if (api.prompt) {
    if (!model::IsValidUtf8(*api.prompt)) return InvalidRequest("prompt is not valid UTF-8", "prompt");
    const std::vector<int32_t> ids = tokenizer.Encode(*api.prompt);
    in.input_ids.assign(ids.begin(), ids.end());
  } else {
    for (int64_t id : api.prompt_ids) {
      if (id < 0 || id >= tokenizer.vocab_size()) {
        return InvalidRequest(absl::StrCat("prompt token id ", id, " is outside the vocabulary [0, ",
                                           tokenizer.vocab_size(), ")"), "prompt");
      }
    }
    in.input_ids = api.prompt_ids;
  }
  const int64_t prompt = static_cast<int64_t>(in.input_ids.size());
  if (prompt == 0) return InvalidRequest("the prompt is empty", "prompt");
  int64_t limit = options.max_model_len;
  const char* limit_name = "maximum context length";
  if (options.max_seq_tokens > 0 && options.max_seq_tokens < limit) {
    limit = options.max_seq_tokens;
    limit_name = "KV cache capacity per sequence";
  }
  if (prompt >= limit) {
    return InvalidRequest(absl::StrCat("this model's ", limit_name, " is ", limit, " tokens; the prompt has ", prompt,
                                       " tokens, which leaves no room for a completion"),
                          "input_tokens");
  }
  const int64_t max_tokens = api.max_tokens.value_or(limit - prompt);
  if (prompt + max_tokens > limit) {
    return InvalidRequest(absl::StrCat("this model's ", limit_name, " is ", limit, " tokens; you requested ",
                                       prompt + max_tokens, " tokens (", prompt, " in the prompt, ", max_tokens,
                                       " in the completion); reduce the prompt or max_tokens"),
                          "max_tokens");
  }
  if (api.min_tokens > max_tokens) {
    return InvalidRequest(absl::StrCat("min_tokens (", api.min_tokens, ") exceeds the completion's room (", max_tokens, ")"),
                          "min_tokens");
  }
  in.sampling = {.temperature = api.temperature, .top_k = api.top_k, .top_p = api.top_p,
                 .max_new_tokens = max_tokens, .stop_tokens = api.stop_token_ids};
  in.min_tokens = api.min_tokens;
  in.top_logprobs = api.top_logprobs;
  if (api.prompt_logprobs) {
    if (api.prompt_logprobs_start > prompt) {
      return InvalidRequest(absl::StrCat("prompt_logprobs_start (", api.prompt_logprobs_start,
                                         ") is past the prompt's ", prompt, " tokens"), "prompt_logprobs_start");
    }
    in.prompt_logprobs = true;
    in.prompt_logprobs_start = api.prompt_logprobs_start;
    api.scored_prompt_ids = in.input_ids;
  }
  out.api = std::move(api);
  return out;
}

std::vector<EngineRequest> EngineRequests(const PreparedRequest& request, const std::string& id) {
  std::vector<EngineRequest> out;
  uint64_t seed = 0;
  if (request.api.seed) {
    seed = *request.api.seed;
  } else {
    std::random_device device;
    seed = (static_cast<uint64_t>(device()) << 32) | device();
  }
  for (int i = 0; i < request.api.n; ++i) {
    EngineRequest r{.id = absl::StrCat(id, "-", i), .input = request.input, .ignore_eos = request.api.ignore_eos,
                    .stop = request.api.stop, .skip_special_tokens = request.api.skip_special_tokens};
    r.input.sampling.seed = seed + static_cast<uint64_t>(i);
    out.push_back(std::move(r));
  }
  return out;
}

// OpenAI's usage object; prompt_tokens_details.cached_tokens: the prompt tokens the prefix cache
// held when the (first) choice was admitted.
Json Usage(int64_t prompt_tokens, int64_t cached_tokens, int64_t completion_tokens) {
  return {{"prompt_tokens", prompt_tokens},
          {"completion_tokens", completion_tokens},
          {"total_tokens", prompt_tokens + completion_tokens},
          {"prompt_tokens_details", {{"cached_tokens", cached_tokens}}}};
}

Json ResponseBody(const ApiRequest& request, const std::string& id, int64_t created, const std::string& model,
                  const std::vector<RequestOutput>& choices, const model::Tokenizer& tokenizer) {
  const bool chat = request.endpoint == Endpoint::kChatCompletions;
  Json list = Json::array();
  int64_t prompt_tokens = 0, completion_tokens = 0;
  const int64_t cached_tokens = choices.empty() ? 0 : choices[0].cached_prompt_tokens;
  for (size_t i = 0; i < choices.size(); ++i) {
    const RequestOutput& c = choices[i];
    prompt_tokens = c.prompt_tokens;
    completion_tokens += c.completion_tokens;
    Json logprobs = nullptr;
    if (request.top_logprobs >= 0) {
      logprobs = chat ? ChatLogprobs(c.logprobs, request.top_logprobs, tokenizer)
                      : CompletionLogprobs(c.logprobs, request.top_logprobs, tokenizer);
    }
    Json choice = {{"index", i}};
    if (chat) {
      choice["message"] = {{"role", "assistant"}, {"content", c.text}};
    } else {
      choice["text"] = c.text;
    }
    choice["logprobs"] = logprobs;
    choice["finish_reason"] = c.finish ? Json(FinishReasonName(*c.finish)) : Json(nullptr);
    choice["stop_reason"] = StopReason(request, c);
    if (!chat && request.prompt_logprobs) choice["prompt_logprobs"] = PromptLogprobs(request, c, tokenizer);
    list.push_back(std::move(choice));
  }
  Json body = {{"id", id}, {"object", chat ? "chat.completion" : "text_completion"}, {"created", created},
               {"model", model}, {"choices", list}};
  if (chat && request.prompt_logprobs) {  // vLLM puts the chat's at the top: one prompt for every choice
    body["prompt_logprobs"] = choices.empty() ? Json(nullptr) : PromptLogprobs(request, choices[0], tokenizer);
  }
  body["usage"] = Usage(prompt_tokens, cached_tokens, completion_tokens);
  return body;
}

Json StreamChunk(const ApiRequest& request, const std::string& id, int64_t created, const std::string& model,
                 int index, const RequestOutput& delta, bool first, const model::Tokenizer& tokenizer) {
  const bool chat = request.endpoint == Endpoint::kChatCompletions;
  Json choice = {{"index", index}};
  if (chat) {
    Json d = Json::object();
    if (first) d["role"] = "assistant";
    if (first || !delta.text.empty()) d["content"] = delta.text;
    choice["delta"] = d;
  } else {
    choice["text"] = delta.text;
  }
  Json logprobs = nullptr;
  if (request.top_logprobs >= 0 && !delta.logprobs.empty()) {
    logprobs = chat ? ChatLogprobs(delta.logprobs, request.top_logprobs, tokenizer)
                    : CompletionLogprobs(delta.logprobs, request.top_logprobs, tokenizer);
  }
  choice["logprobs"] = logprobs;
  choice["finish_reason"] = delta.finish ? Json(FinishReasonName(*delta.finish)) : Json(nullptr);
  if (delta.finish) choice["stop_reason"] = StopReason(request, delta);
  Json chunk = {{"id", id}, {"object", chat ? "chat.completion.chunk" : "text_completion"}, {"created", created},
                {"model", model}, {"choices", Json::array({choice})}};
  if (request.include_usage) chunk["usage"] = nullptr;
  return chunk;
}

Json UsageChunk(const ApiRequest& request, const std::string& id, int64_t created, const std::string& model,
                int64_t prompt_tokens, int64_t cached_tokens, int64_t completion_tokens) {
  const bool chat = request.endpoint == Endpoint::kChatCompletions;
  return {{"id", id}, {"object", chat ? "chat.completion.chunk" : "text_completion"}, {"created", created},
          {"model", model}, {"choices", Json::array()},
          {"usage", Usage(prompt_tokens, cached_tokens, completion_tokens)}};
}

std::string NewRequestId() {
  thread_local std::mt19937_64 rng(std::random_device{}());
  return absl::StrCat(absl::Hex(rng(), absl::kZeroPad16));
}

std::string Dump(const Json& json) { return json.dump(-1, ' ', false, Json::error_handler_t::replace); }

std::optional<ApiError> ChoiceError(const std::vector<RequestOutput>& choices) {
  for (const RequestOutput& c : choices) {
    if (c.finish && *c.finish == FinishReason::kError) return FromStatus(c.error);
  }
  return std::nullopt;
}

}  // namespace q3vl::cluster::api
