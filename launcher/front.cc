#include "launcher/front.h"

#include <signal.h>

#include <cstdlib>
#include <fstream>
#include <iostream>

#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"

namespace q3vl::launcher {
namespace {

std::atomic<int> g_signal{0};
void OnSignal(int signo) {
  if (g_signal.exchange(signo) != 0) {  // a second signal: leave now
    signal(signo, SIG_DFL);
    raise(signo);
  }
}

std::vector<std::string> Strings(const po::variables_map& vm, const char* name) {
  return vm.count(name) ? vm[name].as<std::vector<std::string>>() : std::vector<std::string>{};
}

}  // namespace

void FrontOptions::AddTo(po::options_description& options, int default_port) {
  options.add_options()
      ("host", po::value<std::string>()->default_value("127.0.0.1"), "address to listen on (0.0.0.0: every interface)")
      ("port", po::value<int>()->default_value(default_port), "port to listen on (0: any free port; the one chosen is printed)")
      ("served-model-name", po::value<std::vector<std::string>>()->composing(), "model name(s) requests may give (default: --model as given); the first is reported")
      ("api-key-file", po::value<std::string>(), "file with the API keys clients must send (Authorization: Bearer KEY), one per line; else the Q3VL_API_KEY variable; neither: no key needed")
      ("allowed-local-media-path", po::value<std::vector<std::string>>()->composing(), "directory whose files requests may name as images and videos (file:// URLs or paths; repeatable; default: none, only data: URLs)")
      ("allowed-media-domains", po::value<std::vector<std::string>>()->composing(), "hosts whose http(s) image and video URLs may be fetched (repeatable; default: none)")
      ("media-fetch-timeout", po::value<double>()->default_value(10.0), "seconds a remote image or video may take to fetch")
      ("max-media-bytes", po::value<int64_t>()->default_value(64 << 20), "largest remote image or video fetched")
      ("drain-timeout", po::value<double>()->default_value(30.0), "seconds in-flight requests get to finish after SIGTERM or SIGINT")
      ("http-threads", po::value<int>()->default_value(2), "HTTP I/O threads (connections, SSE writes)")
      ("prepare-threads", po::value<int>()->default_value(2), "threads that prepare completions requests (parse, fetch remote media, chat template, decode images and videos)")
      ("max-body-bytes", po::value<int64_t>()->default_value(64 << 20), "largest request body (413 beyond it)");
}

absl::StatusOr<FrontOptions> FrontOptions::From(const po::variables_map& vm, const std::string& model_dir) {
  FrontOptions o;
  o.host = vm["host"].as<std::string>();
  o.port = vm["port"].as<int>();
  if (o.port < 0 || o.port > 65535) return absl::InvalidArgumentError("--port must be in [0, 65535]");
  o.http_threads = vm["http-threads"].as<int>();
  if (o.http_threads < 1) return absl::InvalidArgumentError("--http-threads must be >= 1");
  o.prepare_threads = vm["prepare-threads"].as<int>();
  if (o.prepare_threads < 1) return absl::InvalidArgumentError("--prepare-threads must be >= 1");
  o.drain_timeout = vm["drain-timeout"].as<double>();
  if (!(o.drain_timeout >= 0)) return absl::InvalidArgumentError("--drain-timeout must be >= 0");
  o.max_body_bytes = vm["max-body-bytes"].as<int64_t>();
  if (o.max_body_bytes < 1024) return absl::InvalidArgumentError("--max-body-bytes must be >= 1024");
  const double fetch_timeout = vm["media-fetch-timeout"].as<double>();
  if (!(fetch_timeout > 0)) return absl::InvalidArgumentError("--media-fetch-timeout must be > 0");
  const int64_t max_media = vm["max-media-bytes"].as<int64_t>();
  if (max_media < 1) return absl::InvalidArgumentError("--max-media-bytes must be >= 1");
  auto keys = ApiKeys(vm);
  if (!keys.ok()) return absl::InvalidArgumentError(keys.status().message());
  o.api_keys = *std::move(keys);
  o.served_names = Strings(vm, "served-model-name");
  if (o.served_names.empty()) o.served_names.push_back(model_dir);
  o.allowed_media_dirs = Strings(vm, "allowed-local-media-path");
  o.fetch = {.allowed_domains = Strings(vm, "allowed-media-domains"),
             .timeout = absl::Seconds(fetch_timeout),
             .max_bytes = max_media};
  return o;
}

absl::StatusOr<std::unique_ptr<cluster::server::HttpServer>> StartFront(
    const char* command, const FrontOptions& options, std::atomic<cluster::server::OpenAiServer*>& live) {
  auto http = cluster::server::HttpServer::Start(
      {.host = options.host, .port = options.port, .threads = options.http_threads,
       .max_body_bytes = static_cast<size_t>(options.max_body_bytes)},
      [&live](cluster::server::HttpRequest r, std::shared_ptr<cluster::server::HttpExchange> e) {
        if (cluster::server::OpenAiServer* s = live.load()) return s->Handle(std::move(r), std::move(e));
        cluster::server::OpenAiServer::AnswerLoading(r, *e);
      });
  if (http.ok()) {
    std::cerr << "q3vl " << command << ": listening on http://" << options.host << ":" << (*http)->port()
              << " (503 until ready)" << std::endl;
  }
  return http;
}

absl::StatusOr<std::unique_ptr<grpc::Server>> StartGrpcServer(const std::string& host, int port,
                                                              const std::vector<grpc::Service*>& services,
                                                              int* bound_port) {
  grpc::EnableDefaultHealthCheckService(true);
  grpc::ServerBuilder builder;
  builder.AddListeningPort(absl::StrCat(host, ":", port), grpc::InsecureServerCredentials(), bound_port);
  builder.SetMaxReceiveMessageSize(256 << 20);
  builder.SetMaxSendMessageSize(256 << 20);
  for (grpc::Service* s : services) builder.RegisterService(s);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || *bound_port == 0) {
    return absl::UnavailableError(absl::StrCat("cannot serve gRPC on ", host, ":", port, " (in use?)"));
  }
  return server;
}

void InstallStopSignals() {
  signal(SIGINT, OnSignal);
  signal(SIGTERM, OnSignal);
}

bool StopRequested() { return g_signal.load() != 0; }

void ServeUntilStopped(const char* command, const FrontOptions& options, cluster::server::OpenAiServer& service,
                       cluster::server::HttpServer& http) {
  while (!StopRequested()) absl::SleepFor(absl::Milliseconds(100));
  // Drain: /health turns 503, new requests get 503, those in flight finish (bounded).
  service.Drain();
  const absl::Time deadline = absl::Now() + absl::Seconds(options.drain_timeout);
  std::cerr << "q3vl " << command << ": draining " << service.in_flight() << " requests in flight..." << std::endl;
  while (service.in_flight() > 0 && absl::Now() < deadline) absl::SleepFor(absl::Milliseconds(50));
  const int64_t left = service.in_flight();
  if (left > 0) {
    service.CancelAll();
    const absl::Time grace = absl::Now() + absl::Seconds(5);
    while (service.in_flight() > 0 && absl::Now() < grace) absl::SleepFor(absl::Milliseconds(20));
  }
  http.Stop();
  std::cerr << "q3vl " << command << ": stopped (" << left << " requests cut off by --drain-timeout)" << std::endl;
}

}  // namespace q3vl::launcher
