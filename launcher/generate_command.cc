// q3vl generate --model DIR --ids 1,2,3: generation from token ids with streaming output.
#include <chrono>
#include <iostream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "core/backend.h"
#include "launcher/options.h"
#include "model/generator.h"
#include "nlohmann/json.hpp"

namespace q3vl::launcher {
namespace {

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

}  // namespace

int GenerateCommand(const Args& args) {
  constexpr char kName[] = "generate";
  po::options_description options("options");
  options.add_options()
      ("model", po::value<std::string>()->required(), "checkpoint directory (HF layout: config.json + safetensors)")
      ("ids", po::value<std::string>()->required(), "prompt token ids, comma separated (expanded prompt)")
      ("max-new-tokens", po::value<int64_t>()->default_value(16), "tokens to generate at most")
      ("temperature", po::value<float>()->default_value(0.0f), "sampling temperature (0: greedy)")
      ("top-k", po::value<int64_t>()->default_value(0), "sample from the k most likely tokens (0: all)")
      ("top-p", po::value<float>()->default_value(1.0f), "nucleus sampling mass in (0, 1]")
      ("seed", po::value<uint64_t>()->default_value(0), "random seed for sampling")
      ("greedy", po::bool_switch(), "greedy decoding (overrides --temperature)")
      ("ignore-eos", po::bool_switch(), "do not stop at the end-of-sequence token")
      ("batch", po::value<int>()->default_value(1), "run the prompt as this many sequences in one batch")
      ("backend", po::value<std::string>()->default_value("cpu"), "compute backend: cpu or cuda")
      ("json", po::bool_switch(), "print one JSON object at the end instead of streaming");
  po::positional_options_description positional;
  auto parsed = ParseArgs(kName, "--model DIR --ids 1,2,3 [options]", options, positional, args);
  if (std::holds_alternative<int>(parsed)) return std::get<int>(parsed);
  const po::variables_map& vm = std::get<po::variables_map>(parsed);
  auto ids = ParseIds(vm["ids"].as<std::string>());
  if (!ids.ok()) return UsageError(kName, std::string(ids.status().message()));
  if (vm["batch"].as<int>() < 1) return UsageError(kName, "--batch must be >= 1");
  auto kind = ParseBackendKind(vm["backend"].as<std::string>());
  if (!kind.ok()) return Fail(kName, kind.status());
  auto backend = CreateBackend(*kind);
  if (!backend.ok()) return Fail(kName, backend.status());

  const auto load_start = std::chrono::steady_clock::now();
  auto model = model::Qwen3VL::Load(vm["model"].as<std::string>(), **backend);
  if (!model.ok()) return Fail(kName, model.status());
  const double load_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - load_start).count();

  model::GenerationRequest request;
  request.input_ids = *ids;
  model::SamplingParams& sp = request.sampling;
  sp.max_new_tokens = vm["max-new-tokens"].as<int64_t>();
  sp.temperature = vm["greedy"].as<bool>() ? 0.0f : vm["temperature"].as<float>();
  sp.top_k = vm["top-k"].as<int64_t>();
  sp.top_p = vm["top-p"].as<float>();
  sp.seed = vm["seed"].as<uint64_t>();
  if (!vm["ignore-eos"].as<bool>()) sp.stop_tokens = (*model)->config().text.eos_token_ids;
  const std::vector<model::GenerationRequest> requests(vm["batch"].as<int>(), request);

  const bool json = vm["json"].as<bool>();
  const auto start = std::chrono::steady_clock::now();
  double first_token_s = 0.0;
  int64_t emitted = 0;
  model::Generator generator(**model, {.on_token = [&](size_t seq, int64_t token) {
    if (emitted++ == 0) first_token_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (!json && seq == 0) std::cout << token << " " << std::flush;
  }});
  auto results = generator.Generate(requests);
  if (!results.ok()) return Fail(kName, results.status());
  const double total_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const int64_t prompt_tokens = static_cast<int64_t>(ids->size()) * static_cast<int64_t>(requests.size());
  const double decode_tokens = static_cast<double>(emitted - static_cast<int64_t>(requests.size()));
  const double decode_s = total_s - first_token_s;
  const nlohmann::json stats = {
      {"load_s", load_s}, {"prompt_tokens", prompt_tokens}, {"generated_tokens", emitted},
      {"prefill_tokens_per_s", prompt_tokens / std::max(first_token_s, 1e-9)},
      {"decode_tokens_per_s", decode_tokens > 0 ? decode_tokens / std::max(decode_s, 1e-9) : 0.0},
      {"finish_reason", (*results)[0].finish_reason}};
  if (json) {
    const nlohmann::json out = {{"input_ids", *ids}, {"generated_ids", (*results)[0].tokens}, {"stats", stats}};
    std::cout << out.dump() << std::endl;
  } else {
    std::cout << "\n" << stats.dump() << std::endl;
  }
  return 0;
}

}  // namespace q3vl::launcher
