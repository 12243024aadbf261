// q3vl serve: the OpenAI-compatible HTTP service of one replica (on one rank, or the leader of
// a replica under mpirun while every other rank follows the engine).
#include <signal.h>

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
#include "launcher/mesh.h"
#include "launcher/options.h"
#include "launcher/replica.h"
#include "model/processor.h"

namespace q3vl::launcher {
namespace {

std::atomic<int> g_signal{0};
void OnSignal(int signo) {
  if (g_signal.exchange(signo) != 0) {  // a second signal: leave now
    signal(signo, SIG_DFL);
    raise(signo);
  }
}

// API keys: one per line of --api-key-file, or the Q3VL_API_KEY variable (never a flag: `ps`
// shows flags to every user of the machine).
absl::StatusOr<std::vector<std::string>> ApiKeys(const po::variables_map& vm) {
  std::vector<std::string> keys;
  if (vm.count("api-key-file")) {
    const std::string path = vm["api-key-file"].as<std::string>();
    std::ifstream in(path);
    if (!in) return absl::NotFoundError(absl::StrCat("--api-key-file ", path, ": cannot open"));
    for (std::string line; std::getline(in, line);) {
      const absl::string_view key = absl::StripAsciiWhitespace(line);
      if (!key.empty() && key[0] != '#') keys.emplace_back(key);
    }
    if (keys.empty()) return absl::InvalidArgumentError(absl::StrCat("--api-key-file ", path, ": no keys in it"));
  } else if (const char* env = std::getenv("Q3VL_API_KEY"); env != nullptr && *env != '\0') {
    keys.emplace_back(absl::StripAsciiWhitespace(env));
  }
  return keys;
}

}  // namespace

int ServeCommand(const Args& args) {
  constexpr char kName[] = "serve";
  po::options_description options("options");
  options.add_options()
      ("model", po::value<std::string>()->required(), "model directory (HF layout)")
      ("host", po::value<std::string>()->default_value("127.0.0.1"), "address to listen on (0.0.0.0: every interface)")
      ("port", po::value<int>()->default_value(8000), "port to listen on (0: any free port; the one chosen is printed)")
      ("served-model-name", po::value<std::vector<std::string>>()->composing(), "model name(s) requests may give (default: --model as given); the first is reported")
      ("api-key-file", po::value<std::string>(), "file with the API keys clients must send (Authorization: Bearer KEY), one per line; else the Q3VL_API_KEY variable; neither: no key needed")
      ("allowed-local-media-path", po::value<std::vector<std::string>>()->composing(), "directory whose files requests may name as images and videos (file:// URLs or paths; repeatable; default: none, only data: URLs)")
      ("allowed-media-domains", po::value<std::vector<std::string>>()->composing(), "hosts whose http(s) image and video URLs may be fetched (repeatable; default: none)")
      ("media-fetch-timeout", po::value<double>()->default_value(10.0), "seconds a remote image or video may take to fetch")
      ("max-media-bytes", po::value<int64_t>()->default_value(64 << 20), "largest remote image or video fetched")
      ("max-waiting-requests", po::value<int64_t>()->default_value(1024), "requests queued before new ones get 429 (0: no bound)")
      ("drain-timeout", po::value<double>()->default_value(30.0), "seconds in-flight requests get to finish after SIGTERM or SIGINT")
      ("http-threads", po::value<int>()->default_value(2), "HTTP I/O threads (connections, SSE writes)")
      ("prepare-threads", po::value<int>()->default_value(2), "threads that prepare completions requests (parse, fetch remote media, chat template, decode images and videos)")
      ("max-body-bytes", po::value<int64_t>()->default_value(64 << 20), "largest request body (413 beyond it)")
      ("backend", po::value<std::string>()->default_value("cpu"), "compute backend: cpu or cuda")
      ("mesh", po::value<std::string>(), "parallel mesh of the replica vision=V,pp=P,tp=T,ep=E (dp=1) under mpirun; its first stage-0 rank serves HTTP");
  EngineOptions::AddTo(options);
  po::positional_options_description positional;
  auto parsed = ParseArgs(kName, "--model DIR [--host H --port P] [options]", options, positional, args);
  if (std::holds_alternative<int>(parsed)) return std::get<int>(parsed);
  const po::variables_map& vm = std::get<po::variables_map>(parsed);
  auto engine_options = EngineOptions::From(vm);
  if (!engine_options.ok()) return UsageError(kName, std::string(engine_options.status().message()));
  const int port = vm["port"].as<int>();
  if (port < 0 || port > 65535) return UsageError(kName, "--port must be in [0, 65535]");
  if (vm["http-threads"].as<int>() < 1) return UsageError(kName, "--http-threads must be >= 1");
  if (vm["prepare-threads"].as<int>() < 1) return UsageError(kName, "--prepare-threads must be >= 1");
  if (vm["max-waiting-requests"].as<int64_t>() < 0) return UsageError(kName, "--max-waiting-requests must be >= 0");
  if (!(vm["drain-timeout"].as<double>() >= 0)) return UsageError(kName, "--drain-timeout must be >= 0");
  if (vm["max-body-bytes"].as<int64_t>() < 1024) return UsageError(kName, "--max-body-bytes must be >= 1024");
  if (!(vm["media-fetch-timeout"].as<double>() > 0)) return UsageError(kName, "--media-fetch-timeout must be > 0");
  if (vm["max-media-bytes"].as<int64_t>() < 1) return UsageError(kName, "--max-media-bytes must be >= 1");
  auto keys = ApiKeys(vm);
  if (!keys.ok()) return UsageError(kName, std::string(keys.status().message()));
  auto kind = ParseBackendKind(vm["backend"].as<std::string>());
  if (!kind.ok()) return UsageError(kName, std::string(kind.status().message()));
  if (engine_options->kv_dtype == DType::kF8E4M3 && *kind == BackendKind::kCuda) {
    return UsageError(kName, "--kv-dtype fp8 runs on the CPU backend only for now; use bf16 with --backend cuda");
  }
  const std::string model_dir = vm["model"].as<std::string>();

  const int threads = ConfigureComputeThreads(engine_options->threads);
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
  if (leader) {
    http = cluster::server::HttpServer::Start(
        {.host = vm["host"].as<std::string>(), .port = port, .threads = vm["http-threads"].as<int>(),
         .max_body_bytes = static_cast<size_t>(vm["max-body-bytes"].as<int64_t>())},
        [&live](cluster::server::HttpRequest r, std::shared_ptr<cluster::server::HttpExchange> e) {
          if (cluster::server::OpenAiServer* s = live.load()) return s->Handle(std::move(r), std::move(e));
          cluster::server::OpenAiServer::AnswerLoading(r, *e);
        });
    if (http.ok()) {
      std::cerr << "q3vl serve: listening on http://" << vm["host"].as<std::string>() << ":" << (*http)->port()
                << " (503 until the model is loaded)" << std::endl;
    }
  }
  if (absl::Status s = agree(http.status()); !s.ok()) return fail(s);

  auto loaded = LoadCommandModel(kName, model_dir, mesh.get(), *kind, mesh ? vm["mesh"].as<std::string>() : "", threads);
  if (!loaded.ok()) return fail(loaded.status());
  const std::unique_ptr<model::Qwen3VL>& model = loaded->model;

  const model::ModelConfig& config = model->config();
  const int64_t page = engine_options->page_size;
  auto pages = engine_options->PlanKvPages(
      "serve", config, mesh.get(), model->backend());
  if (!pages.ok()) return fail(pages.status());
  signal(SIGINT, OnSignal);
  signal(SIGTERM, OnSignal);
  ReplicaHost host(*model, mesh.get(), *engine_options, *pages, processor ? &processor->tokenizer() : nullptr,
                   vm["max-waiting-requests"].as<int64_t>());
  if (!host.leader()) {
    const absl::Status followed = host.Follow();
    return agree(followed).ok() ? 0 : 1;
  }

  cluster::server::OpenAiServerOptions server_options{
      .served_names = vm.count("served-model-name") ? vm["served-model-name"].as<std::vector<std::string>>()
                                                    : std::vector<std::string>{model_dir},
      .api_keys = *keys,
      .prepare = {.processor = &*processor,
                  .process = {.allowed_media_dirs = vm.count("allowed-local-media-path")
                                                        ? vm["allowed-local-media-path"].as<std::vector<std::string>>()
                                                        : std::vector<std::string>{}},
                  .max_model_len = config.text.max_position_embeddings,
                  .max_seq_tokens = *pages * page},
      .fetch = {.allowed_domains = vm.count("allowed-media-domains")
                                       ? vm["allowed-media-domains"].as<std::vector<std::string>>()
                                       : std::vector<std::string>{},
                .timeout = absl::Seconds(vm["media-fetch-timeout"].as<double>()),
                .max_bytes = vm["max-media-bytes"].as<int64_t>()},
      .prepare_threads = vm["prepare-threads"].as<int>()};
  const std::string name = server_options.served_names[0];
  cluster::server::EngineBackend backend(host.engine());
  cluster::server::OpenAiServer service(backend, processor->tokenizer(), std::move(server_options));
  host.engine().Start();
  absl::Status ran;
  {
    service.SetReady();
    live.store(&service);
    std::cerr << "q3vl serve: serving " << name << " on http://" << vm["host"].as<std::string>() << ":" << (*http)->port()
              << " (OpenAI API under /v1; /health, /metrics" << (keys->empty() ? "" : "; API key required") << ")"
              << std::endl;
    while (g_signal.load() == 0) absl::SleepFor(absl::Milliseconds(100));
    // Drain: /health turns 503, new requests get 503, those in flight finish (bounded).
    service.Drain();
    const absl::Time deadline = absl::Now() + absl::Seconds(vm["drain-timeout"].as<double>());
    std::cerr << "q3vl serve: draining " << service.in_flight() << " requests in flight..." << std::endl;
    while (service.in_flight() > 0 && absl::Now() < deadline) absl::SleepFor(absl::Milliseconds(50));
    const int64_t left = service.in_flight();
    if (left > 0) {
      service.CancelAll();
      const absl::Time grace = absl::Now() + absl::Seconds(5);
      while (service.in_flight() > 0 && absl::Now() < grace) absl::SleepFor(absl::Milliseconds(20));
    }
    (*http)->Stop();
    std::cerr << "q3vl serve: stopped (" << left << " requests cut off by --drain-timeout)" << std::endl;
  }
  if (absl::Status s = host.Finish(); ran.ok()) ran = s;
  if (absl::Status s = agree(ran); !s.ok()) return fail(s);
  return 0;
}

}  // namespace q3vl::launcher
