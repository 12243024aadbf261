// q3vl coordinator: the user-facing OpenAI endpoint over many replicas (q3vl serve
// --coordinator HOST:PORT), routing each request by cached KV and load; the control plane's
// gRPC service for the replicas' sessions.
#include <iostream>

#include "absl/strings/str_cat.h"
#include "cluster/coordinator/coordinator.h"
#include "launcher/front.h"
#include "launcher/options.h"
#include "model/config.h"
#include "model/processor.h"

namespace q3vl::launcher {

int CoordinatorCommand(const Args& args) {
  constexpr char kName[] = "coordinator";
  po::options_description options("options");
  options.add_options()
      ("model", po::value<std::string>()->required(), "model directory: its config.json, tokenizer and processor configs (no weights are read)")
      ("grpc-port", po::value<int>()->default_value(50051), "port of the control plane (replicas join here; grpc.health.v1 too)")
      ("routing", po::value<std::string>()->default_value("kv"), "kv (cached prompt pages, then load), least-load or round-robin")
      ("kv-page-size", po::value<int64_t>()->default_value(16), "KV page size in tokens; replicas must use the same")
      ("overlap-weight", po::value<double>()->default_value(1.0), "kv routing: cost of one prompt page to compute (cached elsewhere, or queued)")
      ("decode-weight", po::value<double>()->default_value(0.1, "0.1"), "kv routing: cost of one KV page in use by a running sequence")
      ("heartbeat-timeout", po::value<double>()->default_value(5.0), "seconds without a report before a replica is marked down")
      ("max-attempts", po::value<int>()->default_value(3), "replicas a request may be tried on before its first output");
  FrontOptions::AddTo(options);
  po::positional_options_description positional;
  auto parsed = ParseArgs(kName, "--model DIR [--port 8000 --grpc-port 50051 --routing kv] [options]", options, positional, args);
  if (std::holds_alternative<int>(parsed)) return std::get<int>(parsed);
  const po::variables_map& vm = std::get<po::variables_map>(parsed);
  const std::string model_dir = vm["model"].as<std::string>();
  auto front = FrontOptions::From(vm, model_dir);
  if (!front.ok()) return UsageError(kName, std::string(front.status().message()));
  auto policy = cluster::coordinator::ParseRoutingPolicy(vm["routing"].as<std::string>());
  if (!policy.ok()) return UsageError(kName, std::string(policy.status().message()));
  const int grpc_port = vm["grpc-port"].as<int>();
  if (grpc_port < 0 || grpc_port > 65535) return UsageError(kName, "--grpc-port must be in [0, 65535]");
  const int64_t page = vm["kv-page-size"].as<int64_t>();
  if (page < 1) return UsageError(kName, "--kv-page-size must be >= 1");
  const double heartbeat_timeout = vm["heartbeat-timeout"].as<double>();
  if (!(heartbeat_timeout > 0)) return UsageError(kName, "--heartbeat-timeout must be > 0");
  if (vm["max-attempts"].as<int>() < 1) return UsageError(kName, "--max-attempts must be >= 1");
  if (!(vm["overlap-weight"].as<double>() >= 0)) return UsageError(kName, "--overlap-weight must be >= 0");
  if (!(vm["decode-weight"].as<double>() >= 0)) return UsageError(kName, "--decode-weight must be >= 0");

  auto config = model::ModelConfig::FromFile(model_dir + "/config.json");
  if (!config.ok()) return Fail(kName, config.status());
  auto processor = model::Processor::Load(model_dir);
  if (!processor.ok()) return Fail(kName, processor.status());

  InstallStopSignals();
  std::atomic<cluster::server::OpenAiServer*> live{nullptr};
  auto http = StartFront(kName, *front, live);
  if (!http.ok()) return Fail(kName, http.status());

  cluster::coordinator::Coordinator coordinator(
      *config, {.router = {.policy = *policy,
                             .overlap_weight = vm["overlap-weight"].as<double>(),
                             .decode_weight = vm["decode-weight"].as<double>()},
                .page_size = page,
                .heartbeat_timeout = absl::Seconds(heartbeat_timeout),
                .max_attempts = vm["max-attempts"].as<int>()});
  int grpc_bound = 0;
  auto grpc_server = StartGrpcServer(front->host, grpc_port, {coordinator.service()}, &grpc_bound);
  if (!grpc_server.ok()) return Fail(kName, grpc_server.status());

  // The coordinator prepares requests as a replica does (for their prefix keys, length and
  // errors); capacity is each replica's, checked when routing.
  cluster::server::OpenAiServer service(
      coordinator, processor->tokenizer(),
      {.served_names = front->served_names,
       .api_keys = front->api_keys,
       .prepare = {.processor = &*processor,
                   .process = {.allowed_media_dirs = front->allowed_media_dirs},
                   .max_model_len = config->text.max_position_embeddings},
       .fetch = front->fetch,
       .prepare_threads = front->prepare_threads});
  service.SetReady();
  live.store(&service);
  std::cerr << absl::StrCat("q3vl coordinator: routing (", cluster::coordinator::RoutingPolicyName(*policy), ") ",
                            front->served_names[0], " on http://", front->host, ":", (*http)->port(),
                            "; replicas join at ", front->host, ":", grpc_bound, " (gRPC)\n")
            << std::flush;
  ServeUntilStopped(kName, *front, service, **http);
  coordinator.Shutdown();
  (*grpc_server)->Shutdown(absl::ToChronoTime(absl::Now() + absl::Seconds(2)));
  return 0;
}

}  // namespace q3vl::launcher
