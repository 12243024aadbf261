// q3vl serve: the OpenAI-compatible HTTP service of one replica (on one rank, or the leader of
// a replica under mpirun while every other rank follows the engine).
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/strip.h"
#include "cluster/server/http_server.h"
#include "cluster/server/openai_server.h"
#include "cluster/control/replica.h"
#include "launcher/front.h"
#include "launcher/mesh.h"
#include "launcher/options.h"
#include "launcher/replica.h"
#include "model/processor.h"

namespace q3vl::launcher {
int ServeCommand(const Args& args) {
  constexpr char kName[] = "serve";
  po::options_description options("options");
  options.add_options()
      ("model", po::value<std::string>()->required(), "model directory (HF layout)")
      ("max-waiting-requests", po::value<int64_t>()->default_value(1024), "requests queued before new ones get 429 (0: no bound)")
      ("backend", po::value<std::string>()->default_value("cpu"), "compute backend: cpu or cuda")
      ("mesh", po::value<std::string>(), "parallel mesh of the replica vision=V,pp=P,tp=T,ep=E (dp=1) under mpirun; its first stage-0 rank serves HTTP")
      ("coordinator", po::value<std::string>(), "HOST:PORT of a q3vl coordinator's gRPC service: join it as a replica (load and KV-cache reports, forwarded requests)")
      ("grpc-port", po::value<int>(), "port of this replica's gRPC service (forwarded requests, grpc.health.v1; default 50052 with --coordinator, else none; 0: any free port)")
      ("advertise-host", po::value<std::string>(), "host the coordinator reaches this replica at (default: --host, or this machine's name when --host is 0.0.0.0); on Kubernetes the pod IP")
      ("replica-id", po::value<std::string>(), "this replica's name at the coordinator, stable across restarts (default: $HOSTNAME, else ADVERTISE-HOST:GRPC-PORT)");
  FrontOptions::AddTo(options);
  EngineOptions::AddTo(options);
  po::positional_options_description positional;
  auto parsed = ParseArgs(kName, "--model DIR [--host H --port P] [options]", options, positional, args);
  if (std::holds_alternative<int>(parsed)) return std::get<int>(parsed);
  const po::variables_map& vm = std::get<po::variables_map>(parsed);
  auto engine_options = EngineOptions::From(vm);
  if (!engine_options.ok()) return UsageError(kName, std::string(engine_options.status().message()));
  const std::string model_dir = vm["model"].as<std::string>();
  auto front = FrontOptions::From(vm, model_dir);
  if (!front.ok()) return UsageError(kName, std::string(front.status().message()));
  if (vm["max-waiting-requests"].as<int64_t>() < 0) return UsageError(kName, "--max-waiting-requests must be >= 0");
  int grpc_port = -1;  // none
  if (vm.count("grpc-port")) grpc_port = vm["grpc-port"].as<int>();
  else if (vm.count("coordinator")) grpc_port = 50052;
  if (vm.count("grpc-port") && (grpc_port < 0 || grpc_port > 65535)) return UsageError(kName, "--grpc-port must be in [0, 65535]");
  if ((vm.count("advertise-host") || vm.count("replica-id")) && !vm.count("coordinator")) {
    return UsageError(kName, "--advertise-host and --replica-id go with --coordinator");
  }
  auto kind = ParseBackendKind(vm["backend"].as<std::string>());
  if (!kind.ok()) return UsageError(kName, std::string(kind.status().message()));
  if (engine_options->kv_dtype == DType::kF8E4M3 && *kind == BackendKind::kCuda) {
    return UsageError(kName, "--kv-dtype fp8 runs on the CPU backend only for now; use bf16 with --backend cuda");
  }

  const int threads = engine_options->ApplyToProcess();
  std::unique_ptr<MeshRun> mesh;
  if (vm.count("mesh")) {
    auto started = MeshRun::Start(vm["mesh"].as<std::string>(), *kind);
    if (!started.ok()) return FirstRankOfJob() ? UsageError(kName, std::string(started.status().message())) : 2;
    mesh = *std::move(started);
    if (mesh->num_replicas() > 1) {
      return mesh->leader() ? UsageError(kName, "serve runs one replica (dp=1): start one serve per replica") : 2;
    }
  } else if (const char* size = std::getenv("OMPI_COMM_WORLD_SIZE"); size != nullptr && std::atoi(size) > 1) {
    return FirstRankOfJob() ? UsageError(kName, "under mpirun, give the replica's --mesh (serve runs one replica)") : 2;
  }
  const bool leader = !mesh || mesh->leader();
  auto agree = [&](const absl::Status& s) { return mesh ? mesh->Agree(s) : s; };
  const auto fail = [&](const absl::Status& s) { return leader ? Fail(kName, s) : 1; };

  std::optional<model::Processor> processor;
  {
    absl::Status s;
    if (leader) {
      auto loaded = model::Processor::Load(model_dir);
      if (loaded.ok()) processor.emplace(*std::move(loaded));
      s = loaded.status();
    }
    if (absl::Status all = agree(s); !all.ok()) return fail(all);
  }
  // The leader listens before the model loads: /health answers 503 (and every other path 503)
  // until the service is ready, so an orchestrator's probes see "loading", not a refused port;
  // a port that cannot be bound fails the command before the load.
  std::atomic<cluster::server::OpenAiServer*> live{nullptr};
  absl::StatusOr<std::unique_ptr<cluster::server::HttpServer>> http = std::unique_ptr<cluster::server::HttpServer>();
  if (leader) http = StartFront(kName, *front, live);
  if (absl::Status s = agree(http.status()); !s.ok()) return fail(s);

  auto loaded = LoadCommandModel(kName, model_dir, mesh.get(), *kind, mesh ? vm["mesh"].as<std::string>() : "", threads);
  if (!loaded.ok()) return fail(loaded.status());
  const std::unique_ptr<model::Qwen3VL>& model = loaded->model;

  const model::ModelConfig& config = model->config();
  const int64_t page = engine_options->page_size;
  auto pages = engine_options->PlanKvPages(
      "serve", config, mesh.get(), model->backend());
  if (!pages.ok()) return fail(pages.status());
  InstallStopSignals();
  ReplicaHost host(*model, mesh.get(), *engine_options, *pages, processor ? &processor->tokenizer() : nullptr,
                   vm["max-waiting-requests"].as<int64_t>());
  if (!host.leader()) {
    const absl::Status followed = host.Follow();
    return agree(followed).ok() ? 0 : 1;
  }

  cluster::server::OpenAiServerOptions server_options{
      .served_names = front->served_names,
      .api_keys = front->api_keys,
      .prepare = {.processor = &*processor,
                  .process = {.allowed_media_dirs = front->allowed_media_dirs},
                  .max_model_len = config.text.max_position_embeddings,
                  .max_seq_tokens = *pages * page},
      .fetch = front->fetch,
      .prepare_threads = front->prepare_threads};
  const std::string name = server_options.served_names[0];
  cluster::server::EngineBackend backend(host.engine());
  cluster::server::OpenAiServer service(backend, processor->tokenizer(), std::move(server_options));
  // The control plane: forwarded requests and health over gRPC, and the session with the
  // coordinator (load and prefix-cache reports).
  cluster::control::ReplicaService replica_service(service);
  std::unique_ptr<grpc::Server> grpc_server;
  int grpc_bound = 0;
  if (grpc_port >= 0) {
    auto started = StartGrpcServer(front->host, grpc_port, {&replica_service}, &grpc_bound);
    if (!started.ok()) {
      (*http)->Stop();
      host.engine().Shutdown();
      (void)host.Finish();
      return Fail(kName, started.status());
    }
    grpc_server = *std::move(started);
  }
  host.engine().Start();
  std::unique_ptr<cluster::control::ReplicaAgent> agent;
  if (vm.count("coordinator")) {
    std::string advertise = vm.count("advertise-host") ? vm["advertise-host"].as<std::string>() : front->host;
    if (!vm.count("advertise-host") && (advertise == "0.0.0.0" || advertise == "::")) {
      char buf[256] = {};
      gethostname(buf, sizeof(buf) - 1);
      advertise = buf;
    }
    std::string id;
    if (vm.count("replica-id")) {
      id = vm["replica-id"].as<std::string>();
    } else if (const char* h = std::getenv("HOSTNAME"); h != nullptr && *h != '\0') {
      id = h;
    } else {
      id = absl::StrCat(advertise, ":", grpc_bound);
    }
    agent = std::make_unique<cluster::control::ReplicaAgent>(
        host.engine(), service,
        cluster::control::ReplicaAgentOptions{.coordinator = vm["coordinator"].as<std::string>(),
                                              .replica_id = id,
                                              .address = absl::StrCat(advertise, ":", grpc_bound),
                                              .http_address = absl::StrCat(advertise, ":", (*http)->port()),
                                              .model = name,
                                              .page_size = page,
                                              .max_seq_tokens = *pages * page,
                                              .max_model_len = config.text.max_position_embeddings});
  }
  absl::Status ran;
  {
    service.SetReady();
    live.store(&service);
    // One write: a reader that waits for this line sees it whole.
    std::string line = absl::StrCat("q3vl serve: serving ", name, " on http://", front->host, ":", (*http)->port(),
                                    " (OpenAI API under /v1; /health, /metrics",
                                    front->api_keys.empty() ? "" : "; API key required", ")");
    if (grpc_server) absl::StrAppend(&line, "; gRPC on ", front->host, ":", grpc_bound);
    std::cerr << line + "\n" << std::flush;
    ServeUntilStopped(kName, *front, service, **http);
    if (agent) agent->Stop();
    if (grpc_server) grpc_server->Shutdown(absl::ToChronoTime(absl::Now() + absl::Seconds(2)));
  }
  if (absl::Status s = host.Finish(); ran.ok()) ran = s;
  if (absl::Status s = agree(ran); !s.ok()) return fail(s);
  return 0;
}

}  // namespace q3vl::launcher
