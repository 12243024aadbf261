#include "launcher/replica.h"

#include <algorithm>
#include <iostream>

#include "absl/strings/str_cat.h"
#include "core/cpu/bf16_gemm.h"
#include "core/cpu/cpu_backend.h"
#include "kv/paged_kv_cache.h"
#include "model/memory_plan.h"
#include "core/status_macros.h"

namespace q3vl::launcher {

void EngineOptions::AddTo(po::options_description& options, DType kv_dtype) {
  const EngineOptions d;
  options.add_options()
      ("max-num-batched-tokens", po::value<int64_t>()->default_value(d.max_num_batched_tokens),
       "tokens per engine step: decode tokens plus prefill chunks (a long prompt is prefilled in chunks of at most this)")
      ("max-num-seqs", po::value<int64_t>()->default_value(d.max_num_seqs), "sequences running at once")
      ("kv-page-size", po::value<int64_t>()->default_value(d.page_size), "tokens per KV cache page")
      ("kv-cache-tokens", po::value<int64_t>()->default_value(0),
       "KV cache capacity in tokens per replica (0: generate and eval-case size it for their requests; "
       "run: --max-concurrency x min(context, 4096))")
      ("kv-dtype", po::value<std::string>()->default_value(std::string(DTypeName(kv_dtype))),
       "KV cache page storage: bf16 (half the memory of f32; on the golden cases logits move by 0.02-0.07, "
       "cosine > 0.9999, greedy tokens unchanged), f32 (the exact fp32 path) or fp8 (e4m3 with a scale per page "
       "and KV head: half of bf16, CPU only; on the golden cases' tiny models logits move by 0.7-4.2: check a "
       "model's accuracy before using it)")
      ("kv-cache-memory", po::value<std::string>()->default_value("4GiB"),
       "CPU: memory for the KV pool of each rank (serve and run size the pool with it; pages are "
       "committed as they fill)")
      ("gpu-memory-utilization", po::value<double>()->default_value(d.gpu_memory_utilization, "0.9"),
       "GPU: share of device memory for weights, workspace and the KV pool (serve and run give the KV "
       "pool what the weights and workspace leave; q3vl plan shows the figures)")
      ("encoder-cache-tokens", po::value<int64_t>()->default_value(d.encoder_cache_tokens),
       "vision features of images and videos kept across requests, in visual tokens (identical media "
       "are encoded once; memory: tokens x hidden x (1 + DeepStack layers) x 4 bytes; 0: none)")
      ("cpu-compute", po::value<std::string>()->default_value("f32"),
       "CPU backend: f32 (bf16 weights widened exactly: the reference) or bf16 (activations rounded to bf16, "
       "f32 accumulation, through oneDNN: about 3x the f32 GEMM rate on AVX512_BF16; needs a processor with "
       "bf16 instructions). GEMMs of more than 16 rows use it (prefill, large batches, busy experts); fewer stay f32, "
       "so a request's output may vary with what else is batched")
      ("threads", po::value<int>()->default_value(0),
       "compute threads per rank (0: OMP_NUM_THREADS if set, else the CPUs this process may use, "
       "cgroup quota included, divided among the ranks on this machine)");
}

absl::StatusOr<EngineOptions> EngineOptions::From(const po::variables_map& vm) {
  EngineOptions o{.max_num_batched_tokens = vm["max-num-batched-tokens"].as<int64_t>(),
                  .max_num_seqs = vm["max-num-seqs"].as<int64_t>(),
                  .page_size = vm["kv-page-size"].as<int64_t>(),
                  .kv_cache_tokens = vm["kv-cache-tokens"].as<int64_t>(),
                  .threads = vm["threads"].as<int>(),
                  .encoder_cache_tokens = vm["encoder-cache-tokens"].as<int64_t>()};
  auto kv_dtype = kv::ParseKvDtype(vm["kv-dtype"].as<std::string>());
  if (!kv_dtype.ok()) return absl::InvalidArgumentError(absl::StrCat("--kv-dtype: ", kv_dtype.status().message()));
  o.kv_dtype = *kv_dtype;
  const std::string compute = vm["cpu-compute"].as<std::string>();
  if (compute == "bf16") {
    if (!cpu::CpuBf16Support().native) {
      return absl::InvalidArgumentError(absl::StrCat("--cpu-compute bf16: this processor has no bf16 instructions (",
                                                     cpu::CpuBf16Support().isa, "); use f32"));
    }
    o.cpu_compute = CpuCompute::kBF16;
  } else if (compute != "f32") {
    return absl::InvalidArgumentError(absl::StrCat("--cpu-compute must be f32 or bf16, got ", compute));
  }
  auto kv_memory = model::ParseBytes(vm["kv-cache-memory"].as<std::string>());
  if (!kv_memory.ok() || *kv_memory <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("--kv-cache-memory: ", kv_memory.ok() ? "must be > 0" : kv_memory.status().message()));
  }
  o.kv_cache_memory = *kv_memory;
  o.gpu_memory_utilization = vm["gpu-memory-utilization"].as<double>();
  if (!(o.gpu_memory_utilization > 0 && o.gpu_memory_utilization <= 1)) {
    return absl::InvalidArgumentError("--gpu-memory-utilization must be in (0, 1]");
  }
  const struct { const char* flag; int64_t value; int64_t min; } checks[] = {
      {"--max-num-batched-tokens", o.max_num_batched_tokens, 1}, {"--max-num-seqs", o.max_num_seqs, 1},
      {"--kv-page-size", o.page_size, 1}, {"--kv-cache-tokens", o.kv_cache_tokens, 0}, {"--threads", o.threads, 0},
      {"--encoder-cache-tokens", o.encoder_cache_tokens, 0}};
  for (const auto& c : checks) {
    if (c.value < c.min) return absl::InvalidArgumentError(absl::StrCat(c.flag, " must be >= ", c.min, ", got ", c.value));
  }
  return o;
}

int EngineOptions::ApplyToProcess() const {
  SetDefaultCpuCompute(cpu_compute);
  return ConfigureComputeThreads(threads);
}

int64_t EngineOptions::KvPages(int64_t default_tokens) const {
  const int64_t tokens = kv_cache_tokens > 0 ? kv_cache_tokens : default_tokens;
  return std::max<int64_t>(1, (tokens + page_size - 1) / page_size);
}

absl::StatusOr<int64_t> EngineOptions::PlanKvPages(const char* command, const model::ModelConfig& config,
                                                   MeshRun* mesh, const Backend& backend) const {
  if (kv_cache_tokens > 0) return KvPages(0);
  const int64_t device = backend.device_memory_bytes();
  model::MemoryPlanOptions o{.mesh = mesh ? mesh->topology().config() : parallel::ParallelConfig{}, .kv_dtype = kv_dtype, .page_size = page_size,
                             .max_num_batched_tokens = max_num_batched_tokens, .max_num_seqs = max_num_seqs,
                             .encoder_cache_tokens = encoder_cache_tokens, .device_memory_bytes = device,
                             .memory_utilization = gpu_memory_utilization,
                             .kv_pool_bytes = device > 0 ? 0 : kv_cache_memory};
  o.mesh.dp = 1;
  Q3VL_ASSIGN_OR_RETURN(model::MemoryPlan plan, model::PlanMemory(config, o));
  const int64_t pages = plan.KvPages(page_size);
  if (pages < 1) return absl::InvalidArgumentError(absl::StrCat("no room for one KV page of ", page_size, " tokens"));
  const std::string source = device > 0 ? absl::StrCat(model::FormatBytes(device), " x ", gpu_memory_utilization, " per GPU")
                                        : absl::StrCat("--kv-cache-memory ", model::FormatBytes(kv_cache_memory), " per rank");
  const bool log = mesh == nullptr || mesh->topology().rank() == mesh->topology().ReplicaLeader();
  if (!log) return pages;
  std::cerr << "q3vl " << command << ": KV cache " << DTypeName(kv_dtype) << ": " << pages * page_size
            << " tokens per attention group (" << pages << " pages, " << model::FormatBytes(plan.kv_bytes_per_token_per_rank)
            << " a token per rank); weights " << model::FormatBytes(plan.weights_bytes_per_rank) << ", workspace "
            << model::FormatBytes(plan.workspace_bytes_per_rank) << " per rank; from " << source << std::endl;
  return pages;
}

ReplicaHost::ReplicaHost(const model::Qwen3VL& model, MeshRun* mesh, const EngineOptions& options, int64_t kv_pages,
                         const model::Tokenizer* tokenizer, int64_t max_waiting_requests) {
  if (model.is_vision_rank()) {
    runner_ = std::make_unique<model::VisionStageRunner>(model, options.encoder_cache_tokens);
  } else {
    runner_ = std::make_unique<model::ModelRunner>(
        model, model::ModelRunnerOptions{.page_size = options.page_size, .num_pages = kv_pages,
                                         .kv_dtype = options.kv_dtype,
                                         .encoder_cache_tokens = options.encoder_cache_tokens});
  }
  model::StepRunner* engine_runner = runner_.get();
  if (mesh != nullptr && mesh->topology().config().replica_size() > 1) {
    replica_ = mesh->replica_group();
    leader_ = mesh->topology().config().vision;  // stage 0's first rank, after the vision ranks
    if (replica_->rank() != leader_) return;     // a follower
    executor_ = std::make_unique<cluster::ReplicaExecutor>(*replica_, *runner_);
    engine_runner = executor_.get();
  }
  cluster::EngineConfig config{
      .scheduler = {.max_num_batched_tokens = options.max_num_batched_tokens, .max_num_seqs = options.max_num_seqs,
                    .page_size = options.page_size, .num_pages = kv_pages,
                    .max_model_len = model.config().text.max_position_embeddings,
                    .num_groups = model.decoder().shard().attn_groups},  // each group: its own KV pool
      .eos_token_ids = model.config().text.eos_token_ids,
      .max_waiting_requests = max_waiting_requests};
  engine_ = std::make_unique<cluster::Engine>(*engine_runner, std::move(config), tokenizer);
}

ReplicaHost::~ReplicaHost() { (void)Finish(); }

absl::Status ReplicaHost::Follow() {
  Q3VL_CHECK(!leader() && replica_ != nullptr);
  return cluster::FollowReplica(*replica_, leader_, *runner_);
}

absl::Status ReplicaHost::Finish() {
  if (engine_) engine_->Shutdown();
  return executor_ ? executor_->Stop() : absl::OkStatus();
}

}  // namespace q3vl::launcher
