// An HTTP/1.1 server on Boost.Beast over Boost.Asio: keep-alive, bounded header and body sizes,
// read and write timeouts, chunked responses for server-sent events, and the client's
// disconnect reported to the handler (so a request can be cancelled). It knows nothing of
// OpenAI or the engine: each request goes to one Handler with an HttpExchange to answer on.
// Threads: `threads` I/O threads run every connection (each on a strand of its own); the
// handler runs on them and must not block for long. HttpExchange may be used from any thread
// (the engine's, when a stream has output): its calls are posted to the connection's strand.
#ifndef Q3VL_CLUSTER_SERVER_HTTP_SERVER_H_
#define Q3VL_CLUSTER_SERVER_HTTP_SERVER_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace q3vl::cluster::server {

using Headers = std::vector<std::pair<std::string, std::string>>;

struct HttpRequest {
  std::string method;   // "GET", "POST", ...
  std::string path;     // the target without its query
  std::string query;    // after '?', may be empty
  Headers headers;      // as received
  std::string body;
  // The first value of header `name` (case-insensitive), or "".
  std::string Header(const std::string& name) const;
};

// One request's answer: either Respond once, or StartStream, any number of Send, then End.
class HttpExchange {
 public:
  virtual ~HttpExchange() = default;
  virtual void Respond(int status, Headers headers, std::string body) = 0;
  // A chunked response (e.g. text/event-stream); each Send is one chunk, written in order.
  virtual void StartStream(int status, Headers headers) = 0;
  // Chunks sent while an earlier one is being written go out together, as one.
  virtual void Send(std::string chunk) = 0;
  virtual void End() = 0;
  // `on_close` runs (once, on an I/O thread) if the client goes away before the answer is
  // complete; at once if it already has.
  virtual void OnClose(std::function<void()> on_close) = 0;
  // Runs `fn` on an I/O thread, in order with this connection's other work (so a caller on a
  // busy thread, the engine's, hands the formatting of its answer to the I/O threads). When the
  // connection is already gone, `fn` runs at once on the caller's thread.
  virtual void Run(std::function<void()> fn) = 0;
};

using HttpHandler = std::function<void(HttpRequest request, std::shared_ptr<HttpExchange> exchange)>;

struct HttpServerOptions {
  std::string host = "127.0.0.1";
  int port = 8000;  // 0: any free port (see HttpServer::port)
  int threads = 2;
  size_t max_header_bytes = 16 * 1024;       // larger: 431
  size_t max_body_bytes = 64 * 1024 * 1024;  // larger: 413
  absl::Duration read_timeout = absl::Seconds(60);   // a request, or an idle keep-alive connection
  absl::Duration write_timeout = absl::Seconds(60);  // each write to a client that does not read
};

class HttpServer {
 public:
  // Binds and listens, then serves on its threads. Unavailable when the address cannot be bound.
  static absl::StatusOr<std::unique_ptr<HttpServer>> Start(const HttpServerOptions& options, HttpHandler handler);
  ~HttpServer();  // Stop()
  int port() const;
  int64_t open_connections() const;
  // Stops accepting, closes every connection and joins the threads. Idempotent.
  void Stop();

 private:
  struct Impl;
  explicit HttpServer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace q3vl::cluster::server

#endif  // Q3VL_CLUSTER_SERVER_HTTP_SERVER_H_
