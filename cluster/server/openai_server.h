// The OpenAI-compatible HTTP service of one replica, as an HttpHandler over the engine:
// POST /v1/chat/completions and /v1/completions (JSON or server-sent events), GET /v1/models,
// /health and /metrics (Prometheus text, vLLM's names under q3vl:). API keys (Bearer, compared
// in constant time) guard /v1/*. Every response carries X-Request-Id (the client's, else a new
// one). A client that disconnects cancels its request. Draining: /health says 503 and new
// requests get 503 while those in flight finish.
// Threads: Handle runs on the server's I/O threads and answers the cheap routes there; a
// completions request is parsed, its remote media fetched, templated and its media decoded on a
// pool of prepare threads (so a slow media host or a long video never stalls the I/O threads);
// outputs arrive on the engine's thread (stream listeners) and are formatted there.
#ifndef Q3VL_CLUSTER_SERVER_OPENAI_SERVER_H_
#define Q3VL_CLUSTER_SERVER_OPENAI_SERVER_H_

#include <utility>  // Boost 1.74 under C++20 needs it before its headers

#include <atomic>
#include <map>
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

struct OpenAiServerOptions {
  std::vector<std::string> served_names;  // the first is reported; a request may name any
  std::vector<std::string> api_keys;      // empty: no key needed
  api::PrepareOptions prepare;            // processor, media directories, limits
  MediaFetchOptions fetch;                // http(s) media: allowed hosts, timeout, size cap
  int prepare_threads = 2;                // parse, fetch, template and decode completions requests
};

class OpenAiServer {
 public:
  // `engine` and `tokenizer` outlive the server.
  OpenAiServer(Engine& engine, const model::Tokenizer& tokenizer, OpenAiServerOptions options);
  ~OpenAiServer();

  void Handle(HttpRequest request, std::shared_ptr<HttpExchange> exchange);
  // The answer to any request before a server exists (the model is loading): 503, with
  // X-Request-Id, in OpenAI's error shape.
  static void AnswerLoading(const HttpRequest& request, HttpExchange& exchange);

  void SetReady() { ready_ = true; }
  // /health turns 503 and new requests are refused with 503; those in flight go on.
  void Drain() { draining_ = true; }
  int64_t in_flight() const;
  // Ends every request in flight (abort).
  void CancelAll();
  // GET /metrics.
  std::string MetricsText() const;

  struct Call;

 private:
  void Reply(HttpExchange& exchange, const std::string& request_id, int status, std::string body,
             const std::string& content_type = "application/json", Headers extra = {});
  void ReplyError(HttpExchange& exchange, const std::string& request_id, const api::ApiError& error, Headers extra = {});
  void Completions(api::Endpoint endpoint, const HttpRequest& request, const std::shared_ptr<HttpExchange>& exchange,
                   const std::string& request_id);
  void CountStatus(int status);
  void Forget(const std::string& id);

  Engine& engine_;
  const model::Tokenizer& tokenizer_;
  const OpenAiServerOptions options_;
  const int64_t created_;
  std::atomic<bool> ready_{false};
  std::atomic<bool> draining_{false};

  mutable absl::Mutex mu_;
  std::map<int, int64_t> status_counts_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, std::shared_ptr<Call>> calls_ ABSL_GUARDED_BY(mu_);  // in flight, by request id
  boost::asio::thread_pool prepare_pool_;  // last: joined first, while the rest is alive
};

// The engine's metrics and the HTTP status counts as Prometheus text exposition (format 0.0.4).
std::string RenderPrometheus(const MetricsSnapshot& m, const std::string& model_name,
                             const std::map<int, int64_t>& http_status_counts);

}  // namespace q3vl::cluster::server

#endif  // Q3VL_CLUSTER_SERVER_OPENAI_SERVER_H_
