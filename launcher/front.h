// What the two HTTP front ends share (q3vl serve on one replica, q3vl coordinator over many):
// their command-line options, API keys, the listening server that answers 503 until the
// service is ready, and the signal-driven drain at the end.
#ifndef Q3VL_LAUNCHER_FRONT_H_
#define Q3VL_LAUNCHER_FRONT_H_

#include <atomic>
#include <memory>
#include <string>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "absl/status/statusor.h"
#include "cluster/server/http_server.h"
#include "cluster/server/openai_server.h"
#include "launcher/options.h"

namespace q3vl::launcher {

struct FrontOptions {
  std::string host;
  int port = 8000;
  std::vector<std::string> served_names;
  std::vector<std::string> api_keys;  // --api-key-file, else Q3VL_API_KEY, else none
  std::vector<std::string> allowed_media_dirs;
  cluster::server::MediaFetchOptions fetch;
  int http_threads = 2;
  int prepare_threads = 2;
  int64_t max_body_bytes = 64 << 20;
  double drain_timeout = 30.0;

  // `default_port`: 8000 for both today.
  static void AddTo(po::options_description& options, int default_port = 8000);
  // Checks the values; `model_dir` is the default served name. InvalidArgument names the flag.
  static absl::StatusOr<FrontOptions> From(const po::variables_map& vm, const std::string& model_dir);
};

// The HTTP server of a front end: listening at once, every request answered by `live`'s server
// once it is set, else 503 (loading). `command` names the process in its log lines.
absl::StatusOr<std::unique_ptr<cluster::server::HttpServer>> StartFront(
    const char* command, const FrontOptions& options, std::atomic<cluster::server::OpenAiServer*>& live);

// A gRPC server on host:port (0: any free port, written to *bound_port) with `services` and the
// standard health service (grpc.health.v1.Health: SERVING for "" and every service); messages up
// to 256 MiB (a KV snapshot of a large pool). Unavailable when the address cannot be bound.
absl::StatusOr<std::unique_ptr<grpc::Server>> StartGrpcServer(const std::string& host, int port,
                                                              const std::vector<grpc::Service*>& services,
                                                              int* bound_port);

// Installs SIGINT / SIGTERM handlers (a second signal kills the process at once);
// StopRequested says whether one arrived.
void InstallStopSignals();
bool StopRequested();

// Serves until SIGINT / SIGTERM, then drains: /health turns 503, new requests get 503, those in
// flight get options.drain_timeout to finish, the rest are cancelled; the HTTP server stops.
void ServeUntilStopped(const char* command, const FrontOptions& options, cluster::server::OpenAiServer& service,
                       cluster::server::HttpServer& http);

}  // namespace q3vl::launcher

#endif  // Q3VL_LAUNCHER_FRONT_H_
