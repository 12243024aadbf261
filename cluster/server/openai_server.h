// The OpenAI-compatible HTTP service of one replica, as an HttpHandler over the engine:
// POST /v1/chat/completions and /v1/completions (JSON or server-sent events), GET /v1/models,
// /health and /metrics (Prometheus text, vLLM's names under q3vl:). API keys (Bearer, compared
// in constant time) guard /v1/*. Every response carries X-Request-Id (the client's, else a new
// one). A client that disconnects cancels its request. Draining: /health says 503 and new
// requests get 503 while those in flight finish.
// Requests go to a CompletionBackend: this process's engine (q3vl serve), or the coordinator's
// router (q3vl coordinator), so both speak the same API with the same errors and metrics.
// Threads: Handle runs on the server's I/O threads and answers the cheap routes there; a
// completions request is parsed, its remote media fetched, templated and its media decoded on a
// pool of prepare threads (so a slow media host or a long video never stalls the I/O threads);
// outputs arrive on the engine's thread (stream listeners) and are formatted there.
#ifndef Q3VL_CLUSTER_SERVER_OPENAI_SERVER_H_
#define Q3VL_CLUSTER_SERVER_OPENAI_SERVER_H_

#include <utility>  // Boost 1.74 under C++20 needs it before its headers

#include <atomic>
#include <functional>
#include <map>
#include <set>
#include <memory>
#include <string>
#include <vector>

#include <boost/asio/thread_pool.hpp>

#include "absl/synchronization/mutex.h"
#include "cluster/api/openai.h"
#include "cluster/engine/engine.h"
#include "cluster/server/http_server.h"
#include "cluster/server/media_fetch.h"

namespace q3vl::cluster::server {

// Where the server's requests go: the replica's engine (EngineBackend), or on the coordinator the
// replica its router picks. Start and Cancel may be called from any thread.
class CompletionBackend {
 public:
  virtual ~CompletionBackend() = default;
  using Streams = std::vector<std::shared_ptr<RequestStream>>;
  // Starts every choice of `request`: one stream per choice, in choice order. `call` names the
  // call (unique among live ones, for Cancel); `path` and `body` are the request as the client
  // sent it, for a backend that forwards it (request.api.messages has the remote media fetched
  // into data: URLs).
  virtual api::ApiResult<Streams> Start(const api::PreparedRequest& request, const std::string& call,
                                        const std::string& path, const api::Json& body) = 0;
  // Ends the call's choices (abort); unknown calls are ignored.
  virtual void Cancel(const std::string& call) = 0;
  // The call is over (every stream ended, or its Start failed): drop what names it.
  virtual void Forget(const std::string& call) {}
  virtual MetricsSnapshot Metrics() const = 0;
  // More Prometheus families for /metrics (text exposition), or "".
  virtual std::string ExtraMetricsText(const std::string& model_name) const { return ""; }
  // Why the backend cannot take requests now (/health answers 503 with it), or "".
  virtual std::string Unavailable() const { return ""; }
};

// The engine of this process as a backend: one engine request per choice, ids "<call>-<i>".
class EngineBackend : public CompletionBackend {
 public:
  explicit EngineBackend(Engine& engine) : engine_(engine) {}
  api::ApiResult<Streams> Start(const api::PreparedRequest& request, const std::string& call, const std::string& path,
                                const api::Json& body) override;
  void Cancel(const std::string& call) override;
  void Forget(const std::string& call) override;
  MetricsSnapshot Metrics() const override { return engine_.metrics().Snapshot(); }

 private:
  Engine& engine_;
  absl::Mutex mu_;
  std::map<std::string, std::vector<std::string>> ids_ ABSL_GUARDED_BY(mu_);  // call -> engine ids
};

struct OpenAiServerOptions {
  std::vector<std::string> served_names;  // the first is reported; a request may name any
  std::vector<std::string> api_keys;      // empty: no key needed
  api::PrepareOptions prepare;            // processor, media directories, limits
  MediaFetchOptions fetch;                // http(s) media: allowed hosts, timeout, size cap
  int prepare_threads = 2;                // parse, fetch, template and decode completions requests
};

class OpenAiServer {
 public:
  // `backend` and `tokenizer` outlive the server.
  OpenAiServer(CompletionBackend& backend, const model::Tokenizer& tokenizer, OpenAiServerOptions options);
  ~OpenAiServer();

  void Handle(HttpRequest request, std::shared_ptr<HttpExchange> exchange);
  // The answer to any request before a server exists (the model is loading): 503, with
  // X-Request-Id, in OpenAI's error shape.
  static void AnswerLoading(const HttpRequest& request, HttpExchange& exchange);

  void SetReady() { ready_ = true; }
  // /health turns 503 and new requests are refused with 503; those in flight go on.
  void Drain() { draining_ = true; }
  bool draining() const { return draining_; }
  int64_t in_flight() const;
  // Ends every request in flight (abort).
  void CancelAll();
  // GET /metrics.
  std::string MetricsText() const;

  // A completions request taken without HTTP (the replica's gRPC Generate): parsed, checked,
  // prepared and started on the prepare threads, then `done` gets its choices' streams (or the
  // error, as the HTTP API would answer it). The call counts as in flight until Finished(call).
  struct Started {
    std::string call;
    api::ApiRequest api;
    CompletionBackend::Streams streams;
  };
  void StartAsync(std::string path, std::string body, std::string request_id,
                  std::function<void(api::ApiResult<Started>)> done);
  void Finished(const std::string& call) { Forget(call); }
  // Cancels a call started by StartAsync.
  void Cancel(const std::string& call) { backend_.Cancel(call); }

  struct Call;

 private:
  void Reply(HttpExchange& exchange, const std::string& request_id, int status, std::string body,
             const std::string& content_type = "application/json", Headers extra = {});
  void ReplyError(HttpExchange& exchange, const std::string& request_id, const api::ApiError& error, Headers extra = {});
  void Completions(api::Endpoint endpoint, const HttpRequest& request, const std::shared_ptr<HttpExchange>& exchange,
                   const std::string& request_id);
  api::ApiResult<Started> StartCall(api::Endpoint endpoint, const std::string& body, const std::string& request_id);
  void CountStatus(int status);
  void Forget(const std::string& id);

  CompletionBackend& backend_;
  const model::Tokenizer& tokenizer_;
  const OpenAiServerOptions options_;
  const int64_t created_;
  std::atomic<bool> ready_{false};
  std::atomic<bool> draining_{false};

  mutable absl::Mutex mu_;
  std::map<int, int64_t> status_counts_ ABSL_GUARDED_BY(mu_);
  std::set<std::string> calls_ ABSL_GUARDED_BY(mu_);  // in flight
  boost::asio::thread_pool prepare_pool_;  // last: joined first, while the rest is alive
};

// The engine's metrics and the HTTP status counts as Prometheus text exposition (format 0.0.4).
std::string RenderPrometheus(const MetricsSnapshot& m, const std::string& model_name,
                             const std::map<int, int64_t>& http_status_counts);

}  // namespace q3vl::cluster::server

#endif  // Q3VL_CLUSTER_SERVER_OPENAI_SERVER_H_
