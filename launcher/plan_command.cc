// q3vl plan: what a replica of a model holds per rank on a mesh and what its memory lets it
// serve (model/memory_plan.h), as a table or one JSON object. Reads config.json only.
#include <filesystem>
#include <iostream>

#include "absl/strings/str_cat.h"
#include "launcher/options.h"
#include "model/memory_plan.h"

namespace q3vl::launcher {
namespace {

absl::StatusOr<DType> ParseDtype(const std::string& flag, const std::string& name, bool allow_f32) {
  if (name == "bf16") return DType::kBF16;
  if (name == "fp8") return DType::kF8E4M3;
  if (name == "f32" && allow_f32) return DType::kF32;
  return absl::InvalidArgumentError(
      absl::StrCat(flag, " '", name, "' is not one of ", allow_f32 ? "f32, bf16, fp8" : "bf16, fp8"));
}

}  // namespace

int PlanCommand(const Args& args) {
  constexpr char kName[] = "plan";
  const model::MemoryPlanOptions d;
  po::options_description options("options");
  options.add_options()
      ("model", po::value<std::string>(), "checkpoint directory (its config.json is read)")
      ("config", po::value<std::string>(), "a config.json instead of --model")
      ("mesh", po::value<std::string>()->default_value(""),
       "one replica's mesh: vision=V,pp=P,tp=T,ep=E (dp is ignored: every replica is alike)")
      ("device-memory", po::value<std::string>(), "memory per GPU, e.g. 80GiB (H100), 141GB (H200)")
      ("gpu-memory-utilization", po::value<double>()->default_value(d.memory_utilization, "0.9"),
       "share of --device-memory the replica may use (the rest is left to CUDA, NCCL and fragmentation)")
      ("kv-cache-memory", po::value<std::string>(), "CPU: the KV pool per rank, e.g. 4GiB (instead of --device-memory)")
      ("weight-dtype", po::value<std::string>()->default_value("bf16"),
       "GEMM weights: bf16 (the official checkpoints) or fp8 (e4m3 with 128x128 block scales, an FP8 checkpoint)")
      ("kv-dtype", po::value<std::string>()->default_value("bf16"),
       "KV pages: bf16, f32, or fp8 (e4m3 with a scale per page and KV head)")
      ("kv-page-size", po::value<int64_t>()->default_value(d.page_size), "tokens per KV page")
      ("max-num-batched-tokens", po::value<int64_t>()->default_value(d.max_num_batched_tokens),
       "tokens per engine step: sizes the activation workspace")
      ("max-num-seqs", po::value<int64_t>()->default_value(d.max_num_seqs), "sequences running at once")
      ("encoder-cache-tokens", po::value<int64_t>()->default_value(d.encoder_cache_tokens),
       "vision features kept across requests, in visual tokens")
      ("json", po::bool_switch(), "print one JSON object instead of the table");
  po::positional_options_description positional;
  auto parsed = ParseArgs(kName, "(--model DIR | --config config.json) --mesh ... (--device-memory 80GiB | --kv-cache-memory 4GiB) [options]",
                          options, positional, args);
  if (std::holds_alternative<int>(parsed)) return std::get<int>(parsed);
  const po::variables_map& vm = std::get<po::variables_map>(parsed);
  if (vm.count("model") == vm.count("config")) return UsageError(kName, "give one of --model DIR or --config FILE");
  if (vm.count("device-memory") == vm.count("kv-cache-memory")) {
    return UsageError(kName, "give one of --device-memory (GPU) or --kv-cache-memory (CPU)");
  }
  const std::string config_path = vm.count("model")
                                      ? (std::filesystem::path(vm["model"].as<std::string>()) / "config.json").string()
                                      : vm["config"].as<std::string>();
  auto config = model::ModelConfig::FromFile(config_path);
  if (!config.ok()) return Fail(kName, config.status());
  auto mesh = parallel::ParallelConfig::FromString(vm["mesh"].as<std::string>());
  if (!mesh.ok()) return UsageError(kName, absl::StrCat("--mesh: ", mesh.status().message()));
  mesh->dp = 1;
  auto weight_dtype = ParseDtype("--weight-dtype", vm["weight-dtype"].as<std::string>(), /*allow_f32=*/false);
  if (!weight_dtype.ok()) return UsageError(kName, std::string(weight_dtype.status().message()));
  auto kv_dtype = ParseDtype("--kv-dtype", vm["kv-dtype"].as<std::string>(), /*allow_f32=*/true);
  if (!kv_dtype.ok()) return UsageError(kName, std::string(kv_dtype.status().message()));
  model::MemoryPlanOptions o{.mesh = *mesh, .weight_dtype = *weight_dtype, .kv_dtype = *kv_dtype,
                             .page_size = vm["kv-page-size"].as<int64_t>(),
                             .max_num_batched_tokens = vm["max-num-batched-tokens"].as<int64_t>(),
                             .max_num_seqs = vm["max-num-seqs"].as<int64_t>(),
                             .encoder_cache_tokens = vm["encoder-cache-tokens"].as<int64_t>(),
                             .memory_utilization = vm["gpu-memory-utilization"].as<double>()};
  for (const char* flag : {"device-memory", "kv-cache-memory"}) {
    if (!vm.count(flag)) continue;
    auto bytes = model::ParseBytes(vm[flag].as<std::string>());
    if (!bytes.ok()) return UsageError(kName, absl::StrCat("--", flag, ": ", bytes.status().message()));
    (std::string(flag) == "device-memory" ? o.device_memory_bytes : o.kv_pool_bytes) = *bytes;
  }
  if (!(o.memory_utilization > 0 && o.memory_utilization <= 1)) {
    return UsageError(kName, "--gpu-memory-utilization must be in (0, 1]");
  }
  auto plan = model::PlanMemory(*config, o);
  if (!plan.ok()) return Fail(kName, plan.status());
  if (vm["json"].as<bool>()) {
    std::cout << plan->ToJson() << std::endl;
  } else {
    std::cout << "mesh " << mesh->ToString() << ", weights " << vm["weight-dtype"].as<std::string>() << ", KV "
              << vm["kv-dtype"].as<std::string>() << ", "
              << (o.device_memory_bytes > 0 ? absl::StrCat(model::FormatBytes(o.device_memory_bytes), " x ",
                                                           o.memory_utilization, " per GPU")
                                            : absl::StrCat(model::FormatBytes(o.kv_pool_bytes), " KV pool per rank"))
              << "\n\n"
              << plan->ToTable();
  }
  return 0;
}

}  // namespace q3vl::launcher
