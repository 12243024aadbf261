// One replica's engine as a command runs it. The engine options every model-running command
// takes (parsed here, in one place), and ReplicaHost: on the replica leader (stage 0, stage
// rank 0) an Engine over the rank's ModelRunner, through a ReplicaExecutor when the replica has
// several ranks; on every other rank of the replica a follower (ModelRunner, or
// VisionStageRunner on vision ranks) that runs the leader's plans. Owned by the command; the
// leader's engine is driven by the command's thread (Step) or its own loop (Start).
#ifndef Q3VL_LAUNCHER_REPLICA_H_
#define Q3VL_LAUNCHER_REPLICA_H_

#include <memory>
#include <optional>

#include "absl/status/statusor.h"
#include "cluster/engine/engine.h"
#include "cluster/engine/executor.h"
#include "core/cpu/cpu_backend.h"
#include "launcher/mesh.h"
#include "launcher/options.h"
#include "model/model_runner.h"

namespace q3vl::launcher {

struct EngineOptions {
  int64_t max_num_batched_tokens = 2048;
  int64_t max_num_seqs = 256;
  int64_t page_size = 16;
  int64_t kv_cache_tokens = 0;  // 0: what the command's own requests need
  DType kv_dtype = DType::kBF16;  // KV page storage (--kv-dtype)
  int64_t kv_cache_memory = int64_t{4} << 30;  // CPU: the KV pool per rank in bytes (--kv-cache-memory)
  double gpu_memory_utilization = 0.9;         // GPU: share of device memory the replica uses
  int threads = 0;              // compute threads per rank; 0: ConfigureComputeThreads decides
  int64_t encoder_cache_tokens = 16384;  // vision features kept across requests (0: none)
  CpuCompute cpu_compute = CpuCompute::kF32;  // CPU backend GEMMs (--cpu-compute)

  // --max-num-batched-tokens, --max-num-seqs, --kv-page-size, --kv-cache-tokens, --kv-dtype,
  // --kv-cache-memory, --gpu-memory-utilization, --threads, --encoder-cache-tokens, --cpu-compute. `kv_dtype`: the command's default for --kv-dtype (bf16;
  // eval-case keeps the fp32 contract with f32).
  static void AddTo(po::options_description& options, DType kv_dtype = DType::kBF16);
  // InvalidArgument naming the flag (a usage error).
  static absl::StatusOr<EngineOptions> From(const po::variables_map& vm);
  // Sets this process's compute threads (ConfigureComputeThreads(threads)) and the CPU
  // backends' compute (SetDefaultCpuCompute) before any backend is made; returns the threads.
  int ApplyToProcess() const;
  // KV pages of page_size tokens: --kv-cache-tokens, or the command's `default_tokens` when
  // it is 0 (at least one page).
  int64_t KvPages(int64_t default_tokens) const;
  // KV pages of one attention group's pool for a long-running replica (serve, run):
  // --kv-cache-tokens when given, else the memory plan (model/memory_plan.h) of `config` on
  // `mesh` with the backend's device memory x --gpu-memory-utilization, or --kv-cache-memory
  // on the CPU; `mesh` may be null (one rank). The replica's leader writes one line to stderr
  // with the figures ("q3vl <command>: KV cache ..."). InvalidArgument when the weights and
  // workspace leave no room.
  absl::StatusOr<int64_t> PlanKvPages(const char* command, const model::ModelConfig& config, MeshRun* mesh,
                                      const Backend& backend) const;
};

class ReplicaHost {
 public:
  // `mesh` may be null (one rank). `kv_pages` of options.page_size tokens; `tokenizer` (may be
  // null: no text, no stop strings). `max_waiting_requests` > 0 bounds the engine's queue (a
  // server answers 429 beyond it).
  ReplicaHost(const model::Qwen3VL& model, MeshRun* mesh, const EngineOptions& options, int64_t kv_pages,
              const model::Tokenizer* tokenizer, int64_t max_waiting_requests = 0);
  ~ReplicaHost();

  bool leader() const { return engine_ != nullptr; }
  // REQUIRES: leader().
  cluster::Engine& engine() { return *engine_; }
  // REQUIRES: !leader(). Runs the leader's plans until it calls Finish.
  absl::Status Follow();
  // Leader: shuts the engine down and releases the followers.
  absl::Status Finish();

 private:
  std::unique_ptr<model::StepRunner> runner_;
  parallel::Communicator* replica_ = nullptr;  // null on one rank
  int leader_ = 0;                             // the leader's rank in *replica_
  std::unique_ptr<cluster::ReplicaExecutor> executor_;
  std::unique_ptr<cluster::Engine> engine_;
};

}  // namespace q3vl::launcher

#endif  // Q3VL_LAUNCHER_REPLICA_H_
