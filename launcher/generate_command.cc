// q3vl generate: generation from a chat prompt (text, images, videos, or a messages file) or
// from token ids, streaming the output as it is sampled.
#include <chrono>
#include <fstream>
#include <iostream>
#include <optional>
#include <sstream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "core/backend.h"
#include "launcher/mesh.h"
#include "launcher/options.h"
#include "model/generator.h"
#include "model/processor.h"
#include "nlohmann/json.hpp"

namespace q3vl::launcher {
namespace {

using Clock = std::chrono::steady_clock;

double SecondsSince(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

absl::StatusOr<std::vector<int64_t>> ParseIds(const std::string& text) {
  std::vector<int64_t> ids;
  for (absl::string_view part : absl::StrSplit(text, absl::ByAnyChar(", "), absl::SkipEmpty())) {
    int64_t id;
    if (!absl::SimpleAtoi(part, &id)) {
      return absl::InvalidArgumentError(absl::StrCat("--ids: \"", part, "\" is not an integer token id"));
    }
    ids.push_back(id);
  }
  if (ids.empty()) return absl::InvalidArgumentError("--ids: no token ids given");
  return ids;
}

template <typename T>
std::vector<T> Many(const po::variables_map& vm, const char* key) {
  return vm.count(key) ? vm[key].as<std::vector<T>>() : std::vector<T>{};
}

// The chat messages: --messages FILE, or one user turn built from --system, --image, --video
// and --prompt (images, then videos, then the text, as the reference examples order them).
absl::StatusOr<nlohmann::ordered_json> Messages(const po::variables_map& vm) {
  if (vm.count("messages")) {
    const std::string path = vm["messages"].as<std::string>();
    std::ifstream in(path);
    if (!in) return absl::NotFoundError(absl::StrCat(path, ": cannot open"));
    std::stringstream text;
    text << in.rdbuf();
    auto json = nlohmann::ordered_json::parse(text.str(), nullptr, false);
    if (json.is_discarded()) return absl::InvalidArgumentError(absl::StrCat(path, ": not valid JSON"));
    if (json.is_object() && json.contains("messages")) json = json["messages"];
    return json;
  }
  nlohmann::ordered_json messages = nlohmann::ordered_json::array();
  if (vm.count("system")) {
    messages.push_back({{"role", "system"}, {"content", vm["system"].as<std::string>()}});
  }
  nlohmann::ordered_json content = nlohmann::ordered_json::array();
  for (const std::string& image : Many<std::string>(vm, "image")) {
    content.push_back({{"type", "image"}, {"image", image}});
  }
  for (const std::string& video : Many<std::string>(vm, "video")) {
    content.push_back({{"type", "video"}, {"video", video}});
  }
  if (vm.count("prompt")) content.push_back({{"type", "text"}, {"text", vm["prompt"].as<std::string>()}});
  messages.push_back({{"role", "user"}, {"content", content}});
  return messages;
}

model::SamplingParams Sampling(const po::variables_map& vm, const model::ModelConfig& config) {
  model::SamplingParams sp;
  sp.max_new_tokens = vm["max-new-tokens"].as<int64_t>();
  sp.temperature = vm["greedy"].as<bool>() ? 0.0f : vm["temperature"].as<float>();
  sp.top_k = vm["top-k"].as<int64_t>();
  sp.top_p = vm["top-p"].as<float>();
  sp.seed = vm["seed"].as<uint64_t>();
  if (!vm["ignore-eos"].as<bool>()) sp.stop_tokens = config.text.eos_token_ids;
  return sp;
}

}  // namespace

int GenerateCommand(const Args& args) {
  constexpr char kName[] = "generate";
  po::options_description options("options");
  options.add_options()
      ("model", po::value<std::string>()->required(), "model directory (HF layout: config.json, safetensors, tokenizer.json, chat template)")
      ("prompt", po::value<std::string>(), "user text")
      ("image", po::value<std::vector<std::string>>()->composing(), "image: file path, file:// or data: URL (repeatable)")
      ("video", po::value<std::vector<std::string>>()->composing(), "video file (repeatable)")
      ("system", po::value<std::string>(), "system message")
      ("messages", po::value<std::string>(), "JSON file with OpenAI-style chat messages (instead of --prompt/--image/--video/--system); relative media paths resolve against the working directory")
      ("ids", po::value<std::string>(), "prompt token ids, comma separated, already expanded (bypasses the tokenizer and template)")
      ("max-new-tokens", po::value<int64_t>()->default_value(128), "tokens to generate at most")
      ("temperature", po::value<float>()->default_value(0.0f), "sampling temperature (0: greedy)")
      ("top-k", po::value<int64_t>()->default_value(0), "sample from the k most likely tokens (0: all)")
      ("top-p", po::value<float>()->default_value(1.0f), "nucleus sampling mass in (0, 1]")
      ("seed", po::value<uint64_t>()->default_value(0), "random seed for sampling")
      ("greedy", po::bool_switch(), "greedy decoding (overrides --temperature)")
      ("ignore-eos", po::bool_switch(), "do not stop at the end-of-sequence token")
      ("batch", po::value<int>()->default_value(1), "run the prompt as this many sequences in one batch (split over dp replicas)")
      ("micro-batches", po::value<int>()->default_value(1), "pipeline meshes (pp > 1): decode micro-batches in flight, at most pp (1: every step walks all stages)")
      ("backend", po::value<std::string>()->default_value("cpu"), "compute backend: cpu or cuda (with --mesh: each rank on GPU local rank % visible GPUs, activations over NCCL, control over MPI)")
      ("mesh", po::value<std::string>(), "parallel mesh vision=V,pp=P,tp=T,ep=E,dp=D: run under mpirun -np D*(V+P*max(T,E)); replica 0's first stage-0 rank prints")
      ("json", po::bool_switch(), "print one JSON object at the end ({input_ids, generated_ids, text, stats}) instead of streaming");
  po::positional_options_description positional;
  auto parsed = ParseArgs(kName, "--model DIR (--prompt TEXT [--image P]... [--video P]... | --messages FILE | --ids 1,2,3) [options]",
                          options, positional, args);
  if (std::holds_alternative<int>(parsed)) return std::get<int>(parsed);
  const po::variables_map& vm = std::get<po::variables_map>(parsed);
  const bool chat_inputs = vm.count("prompt") || vm.count("image") || vm.count("video") || vm.count("system");
  if (vm.count("ids") + vm.count("messages") + (chat_inputs ? 1 : 0) != 1) {
    return UsageError(kName, "give exactly one of --ids, --messages, or --prompt/--image/--video/--system");
  }
  if (vm["batch"].as<int>() < 1) return UsageError(kName, "--batch must be >= 1");
  if (vm["micro-batches"].as<int>() < 1) return UsageError(kName, "--micro-batches must be >= 1");
  if (vm["max-new-tokens"].as<int64_t>() < 1) return UsageError(kName, "--max-new-tokens must be >= 1");
  const std::string model_dir = vm["model"].as<std::string>();
  auto kind = ParseBackendKind(vm["backend"].as<std::string>());
  if (!kind.ok()) return Fail(kName, kind.status());
  std::unique_ptr<MeshRun> mesh;
  if (vm.count("mesh")) {
    auto started = MeshRun::Start(vm["mesh"].as<std::string>(), *kind);
    if (!started.ok()) return Fail(kName, started.status());
    mesh = *std::move(started);
  }
  // Under a mesh each step ends in an agreement (a failure on any rank stops every rank at
  // once) and only the leader (world rank 0) reports and prints.
  const bool leader = !mesh || mesh->leader();
  auto step = [&](const absl::Status& status) { return mesh ? mesh->Agree(status) : status; };
  const auto fail = [&](const absl::Status& status) { return leader ? Fail(kName, status) : 1; };

  model::GenerationRequest request;
  std::optional<model::Processor> processor;
  const Clock::time_point process_start = Clock::now();
  if (vm.count("ids")) {
    auto ids = ParseIds(vm["ids"].as<std::string>());
    if (!ids.ok()) return UsageError(kName, std::string(ids.status().message()));
    request.input_ids = *ids;
  } else if (leader) {  // the leader alone renders, tokenizes and decodes media
    absl::Status status;
    auto loaded = model::Processor::Load(model_dir);
    if (loaded.ok()) {
      processor.emplace(*std::move(loaded));
      auto messages = Messages(vm);
      auto processed = messages.ok() ? processor->Process(*messages, {})
                                     : absl::StatusOr<model::ProcessedRequest>(messages.status());
      if (processed.ok()) {
        request.input_ids = processed->input_ids;
        request.images = std::move(processed->images);
        request.videos = std::move(processed->videos);
      }
      status = processed.status();
    } else {
      status = loaded.status();
    }
    if (absl::Status s = step(status); !s.ok()) return fail(s);
  } else if (absl::Status s = step(absl::OkStatus()); !s.ok()) {  // the leader's verdict
    return fail(s);
  }
  const double process_s = SecondsSince(process_start);

  absl::StatusOr<std::unique_ptr<Backend>> own_backend;  // without a mesh
  if (!mesh) {
    own_backend = CreateBackend(*kind);
    if (!own_backend.ok()) return Fail(kName, own_backend.status());
  }
  Backend& backend = mesh ? mesh->backend() : **own_backend;
  const Clock::time_point load_start = Clock::now();
  auto model = model::Qwen3VL::Load(model_dir, backend, mesh ? mesh->parallel() : model::ModelParallel{});
  if (absl::Status s = step(model.status()); !s.ok()) return fail(s);
  const double load_s = SecondsSince(load_start);
  request.sampling = Sampling(vm, (*model)->config());
  if (mesh) {
    if (absl::Status s = mesh->BroadcastRequest(request); !s.ok()) {
      std::cerr << "[rank " << mesh->rank() << "] " << s.message() << std::endl;
      parallel::MpiRuntime::Abort(1);
    }
  }
  // Replicas (dp) split the batch round-robin: replica r runs sequences r, r + D, ... (replica 0,
  // whose leader prints sequence 0, always has one).
  const int batch = vm["batch"].as<int>(), replicas = mesh ? mesh->num_replicas() : 1;
  const int replica = mesh ? mesh->replica() : 0;
  const std::vector<model::GenerationRequest> requests((batch - replica + replicas - 1) / replicas, request);
  // Every rank's count of generated tokens, summed over the job (replica leaders count theirs).
  auto total_tokens = [&](int64_t mine) -> int64_t {
    if (!mesh) return mine;
    auto all = parallel::AllGatherValue(mesh->world(), mine);
    if (!all.ok()) parallel::MpiRuntime::Abort(1);
    int64_t sum = 0;
    for (int64_t v : *all) sum += v;
    return sum;
  };
  if ((*model)->is_vision_rank()) {  // the vision stage: the tower for each request, then done
    model::ServeVisionFor(**model, requests);
    if (!step(absl::OkStatus()).ok()) return 1;
    total_tokens(0);
    return 0;
  }

  const bool json = vm["json"].as<bool>() || !leader;  // non-leaders print nothing
  std::optional<model::StreamDecoder> stream;
  if (processor) stream.emplace(processor->tokenizer(), /*skip_special_tokens=*/true);
  const Clock::time_point start = Clock::now();
  double first_token_s = 0.0;
  int64_t emitted = 0;
  model::Generator generator(**model, {.on_token = [&](size_t seq, int64_t token) {
    if (emitted++ == 0) first_token_s = SecondsSince(start);
    if (json || seq != 0) return;
    if (stream) {
      std::cout << stream->Push(static_cast<int32_t>(token)) << std::flush;
    } else {
      std::cout << token << " " << std::flush;
    }
  }, .micro_batches = vm["micro-batches"].as<int>()});
  auto results = requests.empty()
                     ? absl::StatusOr<std::vector<model::GenerationResult>>(std::vector<model::GenerationResult>{})
                     : generator.Generate(requests);
  if (absl::Status s = step(results.status()); !s.ok()) return fail(s);
  const bool counts = mesh ? mesh->topology().ReplicaLeader() == mesh->rank() : true;
  emitted = total_tokens(counts ? emitted : 0);
  if (!leader) return 0;
  const double total_s = SecondsSince(start);
  const int64_t prompt_tokens = static_cast<int64_t>(request.input_ids.size()) * batch;
  const double decode_tokens = static_cast<double>(emitted - batch);
  const nlohmann::json stats = {
      {"preprocess_s", process_s}, {"load_s", load_s}, {"prompt_tokens", prompt_tokens},
      {"generated_tokens", emitted},
      {"prefill_tokens_per_s", prompt_tokens / std::max(first_token_s, 1e-9)},
      {"decode_tokens_per_s", decode_tokens > 0 ? decode_tokens / std::max(total_s - first_token_s, 1e-9) : 0.0},
      {"finish_reason", (*results)[0].finish_reason}};
  const std::vector<int64_t>& generated = (*results)[0].tokens;
  if (json) {
    nlohmann::json out = {{"input_ids", request.input_ids}, {"generated_ids", generated}, {"stats", stats}};
    if (processor) {
      const std::vector<int32_t> ids(generated.begin(), generated.end());
      out["text"] = processor->tokenizer().Decode(ids, /*skip_special_tokens=*/true);
    }
    std::cout << out.dump() << std::endl;
  } else {
    if (stream) std::cout << stream->Flush();
    std::cout << "\n" << stats.dump() << std::endl;
  }
  return 0;
}

}  // namespace q3vl::launcher
