#include "cluster/server/openai_server.h"

#include <openssl/crypto.h>

#include <utility>  // Boost 1.74 under C++20 needs it before its headers

#include <boost/asio/post.hpp>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/strip.h"

namespace q3vl::cluster::server {
namespace {

using Json = api::Json;

using api::Dump;

// The client's X-Request-Id when it gives a usable one, else a new id.
std::string RequestIdOf(const HttpRequest& request) {
  std::string id = request.Header("X-Request-Id");
  return id.empty() || id.size() > 128 ? api::NewRequestId() : id;
}

std::string Event(const Json& j) { return absl::StrCat("data: ", Dump(j), "\n\n"); }

bool KeyMatches(absl::string_view given, const std::vector<std::string>& keys) {
  bool ok = false;
  for (const std::string& k : keys) {  // every key compared, in time independent of the contents
    ok |= given.size() == k.size() && CRYPTO_memcmp(given.data(), k.data(), k.size()) == 0;
  }
  return ok;
}

}  // namespace

// One completion request in flight: its choices' streams, and how their outputs reach the client.
struct OpenAiServer::Call {
  OpenAiServer* server = nullptr;
  std::shared_ptr<HttpExchange> exchange;
  std::string request_id;  // X-Request-Id
  std::string key;         // in calls_
  std::string response_id;
  std::string model;
  int64_t created = 0;
  api::ApiRequest api;
  std::vector<std::shared_ptr<RequestStream>> streams;

  absl::Mutex mu;
  std::vector<RequestOutput> outputs ABSL_GUARDED_BY(mu);  // merged (non-streaming) or usage only
  std::vector<bool> started ABSL_GUARDED_BY(mu);
  int remaining ABSL_GUARDED_BY(mu) = 0;
  bool failed ABSL_GUARDED_BY(mu) = false;  // an error event was sent

  void OnOutput(size_t i) {
    bool finished_now = false;
    {
      absl::MutexLock lock(&mu);
      if (remaining == 0) return;
      while (std::optional<RequestOutput> o = streams[i]->Next(absl::ZeroDuration())) {
        const bool last = o->finish.has_value();
        if (api.stream && !failed) {
          if (last && *o->finish == FinishReason::kError) {
            failed = true;
            exchange->Send(Event(api::FromStatus(o->error).Body()));
          } else if (!(last && *o->finish == FinishReason::kAbort)) {
            exchange->Send(Event(api::StreamChunk(api, response_id, created, model, static_cast<int>(i), *o, !started[i],
                                                  server->tokenizer_)));
            started[i] = true;
          }
        }
        Append(outputs[i], *std::move(o));
        if (last) finished_now = --remaining == 0;
      }
    }
    if (finished_now) Finish();
  }

  void Finish() {
    // The listeners hold this call: let them go, or call and streams keep each other alive.
    for (const std::shared_ptr<RequestStream>& stream : streams) stream->SetListener(nullptr);
    std::vector<RequestOutput> all;
    bool error_sent = false;
    {
      absl::MutexLock lock(&mu);
      all = std::move(outputs);
      error_sent = failed;
    }
    bool aborted = false;
    for (const RequestOutput& o : all) aborted |= o.finish == FinishReason::kAbort;
    if (api.stream) {
      if (aborted && !error_sent) {
        exchange->Send(Event(api::ApiError{.status = 503, .message = "the request was aborted (the server is stopping)",
                                           .type = "service_unavailable"}.Body()));
      } else if (api.include_usage && !error_sent) {
        int64_t completion = 0;
        for (const RequestOutput& o : all) completion += o.completion_tokens;
        exchange->Send(Event(api::UsageChunk(api, response_id, created, model, all.empty() ? 0 : all[0].prompt_tokens,
                                             all.empty() ? 0 : all[0].cached_prompt_tokens, completion)));
      }
      exchange->Send("data: [DONE]\n\n");
      exchange->End();
    } else if (std::optional<api::ApiError> e = api::ChoiceError(all)) {
      server->ReplyError(*exchange, request_id, *e);
    } else if (aborted) {
      server->ReplyError(*exchange, request_id,
                         {.status = 503, .message = "the request was aborted (the server is stopping)", .type = "service_unavailable"});
    } else {
      server->Reply(*exchange, request_id, 200, Dump(api::ResponseBody(api, response_id, created, model, all, server->tokenizer_)));
    }
    server->Forget(key);
  }
};

api::ApiResult<CompletionBackend::Streams> EngineBackend::Start(const api::PreparedRequest& request,
                                                                const std::string& call, const std::string& path,
                                                                const api::Json& body) {
  Streams streams;
  std::vector<std::string> ids;
  for (EngineRequest& r : api::EngineRequests(request, call)) {
    const std::string id = r.id;
    auto stream = engine_.Submit(std::move(r));
    if (!stream.ok()) {
      for (const std::string& submitted : ids) engine_.Cancel(submitted);
      return api::FromStatus(stream.status());
    }
    ids.push_back(id);
    streams.push_back(*std::move(stream));
  }
  absl::MutexLock lock(&mu_);
  ids_[call] = std::move(ids);
  return streams;
}

void EngineBackend::Cancel(const std::string& call) {
  std::vector<std::string> ids;
  {
    absl::MutexLock lock(&mu_);
    auto it = ids_.find(call);
    if (it == ids_.end()) return;
    ids = it->second;
  }
  for (const std::string& id : ids) engine_.Cancel(id);
}

void EngineBackend::Forget(const std::string& call) {
  absl::MutexLock lock(&mu_);
  ids_.erase(call);
}

OpenAiServer::OpenAiServer(CompletionBackend& backend, const model::Tokenizer& tokenizer, OpenAiServerOptions options)
    : backend_(backend),
      tokenizer_(tokenizer),
      options_(std::move(options)),
      created_(absl::ToUnixSeconds(absl::Now())),
      prepare_pool_(static_cast<size_t>(std::max(1, options_.prepare_threads))) {}

OpenAiServer::~OpenAiServer() { prepare_pool_.join(); }

int64_t OpenAiServer::in_flight() const {
  absl::MutexLock lock(&mu_);
  return static_cast<int64_t>(calls_.size());
}

void OpenAiServer::CancelAll() {
  std::set<std::string> calls;
  {
    absl::MutexLock lock(&mu_);
    calls = calls_;
  }
  for (const std::string& call : calls) backend_.Cancel(call);
}

void OpenAiServer::Forget(const std::string& key) {
  backend_.Forget(key);
  absl::MutexLock lock(&mu_);
  calls_.erase(key);
}

void OpenAiServer::CountStatus(int status) {
  absl::MutexLock lock(&mu_);
  ++status_counts_[status];
}

void OpenAiServer::Reply(HttpExchange& exchange, const std::string& request_id, int status, std::string body,
                         const std::string& content_type, Headers extra) {
  CountStatus(status);
  extra.emplace_back("Content-Type", content_type);
  extra.emplace_back("X-Request-Id", request_id);
  exchange.Respond(status, std::move(extra), std::move(body));
}

void OpenAiServer::ReplyError(HttpExchange& exchange, const std::string& request_id, const api::ApiError& error,
                              Headers extra) {
  Reply(exchange, request_id, error.status, Dump(error.Body()), "application/json", std::move(extra));
}

std::string OpenAiServer::MetricsText() const {
  std::map<int, int64_t> counts;
  {
    absl::MutexLock lock(&mu_);
    counts = status_counts_;
  }
  const std::string& name = options_.served_names.at(0);
  return RenderPrometheus(backend_.Metrics(), name, counts) + backend_.ExtraMetricsText(name);
}

void OpenAiServer::AnswerLoading(const HttpRequest& request, HttpExchange& exchange) {
  const std::string request_id = RequestIdOf(request);
  const api::ApiError e{.status = 503, .message = "loading: the model is not ready yet", .type = "service_unavailable"};
  exchange.Respond(503, {{"Content-Type", "application/json"}, {"X-Request-Id", request_id}, {"Retry-After", "5"}},
                   Dump(e.Body()));
}

void OpenAiServer::Handle(HttpRequest request, std::shared_ptr<HttpExchange> exchange) {
  const std::string request_id = RequestIdOf(request);
  const std::string& path = request.path;
  auto method_not_allowed = [&](const char* allow) {
    ReplyError(*exchange, request_id, {.status = 405, .message = absl::StrCat(request.method, " is not allowed on ", path)},
               {{"Allow", allow}});
  };
  if (path == "/health") {
    if (request.method != "GET") return method_not_allowed("GET");
    const std::string unavailable = backend_.Unavailable();
    if (ready_ && !draining_ && unavailable.empty()) return Reply(*exchange, request_id, 200, "", "text/plain");
    return ReplyError(*exchange, request_id,
                      {.status = 503, .message = draining_ ? "draining" : !ready_ ? "loading" : unavailable,
                       .type = "service_unavailable"});
  }
  if (path == "/metrics") {
    if (request.method != "GET") return method_not_allowed("GET");
    return Reply(*exchange, request_id, 200, MetricsText(), "text/plain; version=0.0.4; charset=utf-8");
  }
  const bool models = path == "/v1/models";
  const bool drain = path == "/drain";
  const std::optional<api::Endpoint> endpoint = api::EndpointOf(path);
  if (!models && !drain && !endpoint) {
    return ReplyError(*exchange, request_id, {.status = 404, .message = absl::StrCat("no route for ", path),
                                              .type = "not_found_error"});
  }
  if (!options_.api_keys.empty()) {
    const std::string auth = request.Header("Authorization");
    absl::string_view given = auth;
    if (!absl::ConsumePrefix(&given, "Bearer ") || !KeyMatches(absl::StripAsciiWhitespace(given), options_.api_keys)) {
      return ReplyError(*exchange, request_id,
                        {.status = 401, .message = auth.empty() ? "missing API key (Authorization: Bearer ...)" : "invalid API key",
                         .code = "invalid_api_key"},
                        {{"WWW-Authenticate", "Bearer"}});
    }
  }
  if (drain) {  // admin: stop taking work (a rolling update), keep serving what is in flight
    if (request.method != "POST") return method_not_allowed("POST");
    Drain();
    return Reply(*exchange, request_id, 200, Dump(Json{{"draining", true}, {"in_flight", in_flight()}}));
  }
  if (models) {
    if (request.method != "GET") return method_not_allowed("GET");
    Json data = Json::array();
    for (const std::string& name : options_.served_names) {
      data.push_back({{"id", name}, {"object", "model"}, {"created", created_}, {"owned_by", "q3vl"},
                      {"root", options_.served_names[0]}, {"max_model_len", options_.prepare.max_model_len}});
    }
    return Reply(*exchange, request_id, 200, Dump(Json{{"object", "list"}, {"data", data}}));
  }
  if (request.method != "POST") return method_not_allowed("POST");
  boost::asio::post(prepare_pool_, [this, endpoint = *endpoint, request = std::move(request), exchange, request_id] {
    Completions(endpoint, request, exchange, request_id);
  });
}

api::ApiResult<OpenAiServer::Started> OpenAiServer::StartCall(api::Endpoint endpoint, const std::string& text,
                                                               const std::string& request_id) {
  if (draining_ || !ready_) {
    return api::ApiError{.status = 503, .message = "the server is not taking requests (draining)",
                         .type = "service_unavailable"};
  }
  Json body;
  try {
    body = Json::parse(text);
  } catch (const Json::parse_error& e) {
    return api::InvalidRequest(absl::StrCat("malformed JSON: ", e.what()));
  }
  auto parsed = api::ParseRequest(endpoint, body);
  if (auto* e = std::get_if<api::ApiError>(&parsed)) return *e;
  api::ApiRequest& api = std::get<api::ApiRequest>(parsed);
  const auto& names = options_.served_names;
  if (!api.model.empty() && std::find(names.begin(), names.end(), api.model) == names.end()) {
    return api::ApiError{.status = 404, .message = absl::StrCat("The model `", api.model, "` does not exist."),
                         .type = "NotFoundError", .param = "model", .code = "model_not_found"};
  }
  if (endpoint == api::Endpoint::kChatCompletions) {  // remote images and videos become data: URLs
    if (auto fetched = FetchRemoteMedia(api.messages, options_.fetch); !fetched.ok()) {
      return api::InvalidRequest(std::string(fetched.status().message()), "messages");
    }
  }
  auto prepared = api::Prepare(std::move(api), options_.prepare);
  if (auto* e = std::get_if<api::ApiError>(&prepared)) return *e;
  api::PreparedRequest& p = std::get<api::PreparedRequest>(prepared);
  Started started{.call = absl::StrCat(request_id, "#", api::NewRequestId())};  // unique even when a client repeats its id
  {
    absl::MutexLock lock(&mu_);
    calls_.insert(started.call);
  }
  auto streams = backend_.Start(p, started.call, endpoint == api::Endpoint::kChatCompletions ? "/v1/chat/completions"
                                                                                             : "/v1/completions",
                                body);
  if (auto* e = std::get_if<api::ApiError>(&streams)) {
    Forget(started.call);
    return *e;
  }
  started.streams = std::get<CompletionBackend::Streams>(std::move(streams));
  started.api = std::move(p.api);  // the backend is done with it (its messages may hold megabytes of media)
  return started;
}

void OpenAiServer::StartAsync(std::string path, std::string body, std::string request_id,
                              std::function<void(api::ApiResult<Started>)> done) {
  boost::asio::post(prepare_pool_, [this, path = std::move(path), body = std::move(body),
                                    request_id = std::move(request_id), done = std::move(done)] {
    const std::optional<api::Endpoint> endpoint = api::EndpointOf(path);
    if (!endpoint) {
      return done(api::ApiError{.status = 404, .message = absl::StrCat("no route for ", path), .type = "not_found_error"});
    }
    done(StartCall(*endpoint, body, request_id));
  });
}

void OpenAiServer::Completions(api::Endpoint endpoint, const HttpRequest& request,
                               const std::shared_ptr<HttpExchange>& exchange, const std::string& request_id) {
  auto started = StartCall(endpoint, request.body, request_id);
  if (auto* e = std::get_if<api::ApiError>(&started)) {
    Headers extra;
    if (e->status == 429) extra.emplace_back("Retry-After", "1");
    return ReplyError(*exchange, request_id, *e, extra);
  }
  Started& s = std::get<Started>(started);
  auto call = std::make_shared<Call>();
  call->server = this;
  call->exchange = exchange;
  call->request_id = request_id;
  call->key = s.call;
  call->response_id = absl::StrCat(endpoint == api::Endpoint::kChatCompletions ? "chatcmpl-" : "cmpl-", request_id);
  call->model = options_.served_names[0];
  call->created = absl::ToUnixSeconds(absl::Now());
  call->api = std::move(s.api);
  call->streams = std::move(s.streams);
  {
    absl::MutexLock lock(&call->mu);
    call->outputs.resize(call->streams.size());
    call->started.assign(call->streams.size(), false);
    call->remaining = static_cast<int>(call->streams.size());
  }
  if (call->api.stream) {
    CountStatus(200);
    exchange->StartStream(200, {{"Content-Type", "text/event-stream"}, {"Cache-Control", "no-cache"},
                                {"X-Request-Id", request_id}});
  }
  // A client that goes away cancels its choices (their KV pages are freed at the next step).
  exchange->OnClose([this, key = call->key] { backend_.Cancel(key); });
  // Outputs are formatted on the I/O threads: the engine's thread only posts (it is also the
  // master of the compute threads, which wait while it works on anything else).
  for (size_t i = 0; i < call->streams.size(); ++i) {
    call->streams[i]->SetListener([call, i] { call->exchange->Run([call, i] { call->OnOutput(i); }); });
  }
}

namespace {

void Family(std::string& out, const char* name, const char* type, const char* help) {
  absl::StrAppend(&out, "# HELP ", name, " ", help, "\n# TYPE ", name, " ", type, "\n");
}

std::string Number(double v) { return absl::StrFormat("%.17g", v); }

void HistogramText(std::string& out, const char* name, const char* help, const Histogram& h, const std::string& labels) {
  Family(out, name, "histogram", help);
  int64_t cumulative = 0;
  for (size_t i = 0; i < h.bounds.size(); ++i) {
    cumulative += h.counts[i];
    absl::StrAppend(&out, name, "_bucket{", labels, ",le=\"", Number(h.bounds[i]), "\"} ", cumulative, "\n");
  }
  absl::StrAppend(&out, name, "_bucket{", labels, ",le=\"+Inf\"} ", h.count, "\n");
  absl::StrAppend(&out, name, "_sum{", labels, "} ", Number(h.sum), "\n", name, "_count{", labels, "} ", h.count, "\n");
}

std::string Escape(const std::string& v) {
  std::string out;
  for (char c : v) {
    if (c == '\\' || c == '"') out += '\\';
    if (c == '\n') {
      out += "\\n";
      continue;
    }
    out += c;
  }
  return out;
}

}  // namespace

std::string RenderPrometheus(const MetricsSnapshot& m, const std::string& model_name,
                             const std::map<int, int64_t>& http_status_counts) {
  const std::string labels = absl::StrCat("model_name=\"", Escape(model_name), "\"");
  std::string out;
  auto one = [&](const char* name, const char* type, const char* help, double value) {
    Family(out, name, type, help);
    absl::StrAppend(&out, name, "{", labels, "} ", Number(value), "\n");
  };
  one("q3vl:num_requests_running", "gauge", "Number of requests in model execution batches.",
      static_cast<double>(m.num_requests_running));
  one("q3vl:num_requests_waiting", "gauge", "Number of requests waiting to be processed.",
      static_cast<double>(m.num_requests_waiting));
  one("q3vl:kv_cache_usage_perc", "gauge", "KV-cache usage. 1 means 100 percent usage.", m.kv_cache_usage);
  one("q3vl:mm_cache_queries_total", "counter", "Encoder cache lookups (one per image or video frame group).",
      static_cast<double>(m.mm_cache_queries_total));
  one("q3vl:mm_cache_hits_total", "counter", "Encoder cache hits (images and video frame groups not encoded again).",
      static_cast<double>(m.mm_cache_hits_total));
  one("q3vl:vision_encode_seconds_total", "counter",
      "Seconds spent producing visual features (the vision tower, or receiving the vision ranks' rows).",
      m.vision_encode_seconds_total);
  one("q3vl:prefix_cache_queries_total", "counter", "Prefix cache queries: prompt tokens of admitted requests.",
      static_cast<double>(m.prefix_cache_queries_total));
  one("q3vl:prefix_cache_hits_total", "counter", "Prefix cache hits: prompt tokens found cached (not computed).",
      static_cast<double>(m.prefix_cache_hits_total));
  one("q3vl:prompt_tokens_total", "counter", "Number of prefill tokens processed.", static_cast<double>(m.prompt_tokens_total));
  one("q3vl:generation_tokens_total", "counter", "Number of generation tokens processed.",
      static_cast<double>(m.generation_tokens_total));
  one("q3vl:num_preemptions_total", "counter", "Cumulative number of preemptions from the engine.",
      static_cast<double>(m.num_preemptions_total));
  Family(out, "q3vl:request_success_total", "counter", "Count of successfully processed requests, by finish reason.");
  for (const char* reason : {"stop", "length", "abort", "error"}) {
    auto it = m.request_success_total.find(reason);
    absl::StrAppend(&out, "q3vl:request_success_total{", labels, ",finished_reason=\"", reason, "\"} ",
                    it == m.request_success_total.end() ? 0 : it->second, "\n");
  }
  HistogramText(out, "q3vl:time_to_first_token_seconds", "Histogram of time to first token in seconds.",
                m.time_to_first_token, labels);
  HistogramText(out, "q3vl:inter_token_latency_seconds", "Histogram of inter-token latency in seconds.",
                m.inter_token_latency, labels);
  HistogramText(out, "q3vl:e2e_request_latency_seconds", "Histogram of end-to-end request latency in seconds.",
                m.e2e_request_latency, labels);
  HistogramText(out, "q3vl:request_queue_time_seconds", "Histogram of time spent waiting in the queue in seconds.",
                m.request_queue_time, labels);
  Family(out, "q3vl:http_requests_total", "counter", "HTTP responses sent, by status code.");
  for (const auto& [status, count] : http_status_counts) {
    absl::StrAppend(&out, "q3vl:http_requests_total{", labels, ",status=\"", status, "\"} ", count, "\n");
  }
  return out;
}

}  // namespace q3vl::cluster::server
