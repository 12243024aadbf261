// The serving engine of one replica: a thread-safe front (Submit, Cancel, metrics) over one
// loop that owns the Scheduler and drives a StepRunner. Each iteration takes in new requests
// and cancellations, plans a step (continuous batching, chunked prefill, preemption), runs it,
// and turns the sampled tokens into stream outputs (incremental text, stop strings and tokens,
// min_tokens, max_tokens, logprobs). Requests enter and leave between steps; a finished or
// cancelled request frees its KV pages in the next plan.
// Threads: Submit, Cancel and metrics() from any thread; Step() from one thread (the loop
// started by Start(), or a test's own thread when Start() is not called).
#ifndef Q3VL_CLUSTER_ENGINE_ENGINE_H_
#define Q3VL_CLUSTER_ENGINE_ENGINE_H_

#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "cluster/engine/clock.h"
#include "cluster/engine/metrics.h"
#include "cluster/engine/request.h"
#include "cluster/engine/scheduler.h"
#include "kv/event_log.h"
#include "model/step_plan.h"
#include "model/text/tokenizer.h"

namespace q3vl::cluster {

struct EngineConfig {
  SchedulerConfig scheduler;
  std::vector<int64_t> eos_token_ids;  // end a sequence unless the request says ignore_eos
  int64_t max_waiting_requests = 0;    // 0: unbounded; else Submit answers ResourceExhausted
  // An idle loop (Start) calls StepRunner::Heartbeat this often, so the followers of a
  // multi-rank replica, waiting on communicators that time out (CommOptions::timeout, 300 s by
  // default), know the leader is alive. Keep it well under that timeout.
  absl::Duration heartbeat = absl::Seconds(30);
};

class Engine {
 public:
  // `runner`, `tokenizer` (may be null: no text, no stop strings) and `clock` (null: real time)
  // outlive the engine.
  Engine(model::StepRunner& runner, EngineConfig config, const model::Tokenizer* tokenizer = nullptr,
         const Clock* clock = nullptr);
  ~Engine();

  // Validates the request (sampling, lengths against the context and the KV pool, media
  // against the prompt) before any work: InvalidArgument / ResourceExhausted naming the
  // problem; AlreadyExists for a live id. Ok: the request's stream.
  absl::StatusOr<std::shared_ptr<RequestStream>> Submit(EngineRequest request);
  // Ends the request with finish reason abort at the next step; unknown ids are ignored.
  void Cancel(const std::string& id);

  // One iteration on the caller's thread; false when there was nothing to run.
  bool Step();
  // For a caller that drives Step() itself: when neither a step nor a heartbeat went to the
  // runner for config.heartbeat, sends a heartbeat (followers of a multi-rank replica wait on
  // timed communicators). Call it while idle; same thread as Step().
  void KeepAlive();
  // Runs Step() on a thread of its own until Shutdown().
  void Start();
  // Stops the loop; requests still live end with abort (Cancelled).
  void Shutdown();

  const EngineMetrics& metrics() const { return metrics_; }
  // The prefix caches' keys as numbered events and a snapshot (what a replica reports to the
  // coordinator); updated after every step.
  const kv::KvEventLog& kv_events() const { return kv_events_; }
  int64_t total_pages() const { return config_.scheduler.num_pages * config_.scheduler.num_groups; }
  const SchedulerConfig& scheduler_config() const { return config_.scheduler; }

 private:
  struct Pending {
    int64_t id = 0;
    EngineRequest request;
    std::vector<kv::PageKey> keys;  // prefix-cache keys of its full prompt pages
    std::shared_ptr<RequestStream> stream;
    absl::Time arrival;
  };
  struct Live;

  void Intake();
  // Turns one step's outputs into stream deltas; returns the requests that ended.
  void Emit(const model::StepPlan& plan, const model::StepOutput& out);
  // Appends a sampled token to `live`'s delta; true when the request ends with it.
  bool AcceptToken(Live& live, int64_t token, RequestOutput& delta);
  void End(Live& live, RequestOutput delta, FinishReason reason, absl::Status error = absl::OkStatus());
  void PublishGauges();
  void Loop();

  model::StepRunner& runner_;
  const EngineConfig config_;
  const model::Tokenizer* tokenizer_;
  RealClock real_clock_;
  const Clock& clock_;
  EngineMetrics metrics_;
  kv::KvEventLog kv_events_;

  absl::Mutex mu_;
  std::vector<Pending> pending_ ABSL_GUARDED_BY(mu_);
  std::vector<std::string> cancels_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, int64_t> ids_ ABSL_GUARDED_BY(mu_);  // live requests by caller id
  int64_t next_id_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t num_waiting_ ABSL_GUARDED_BY(mu_) = 0;  // pending + the scheduler's queue
  bool stop_ ABSL_GUARDED_BY(mu_) = false;

  // The loop's own state.
  Scheduler scheduler_;
  absl::Time last_sent_ = absl::InfinitePast();  // the last step or heartbeat sent to the runner
  absl::flat_hash_map<int64_t, std::unique_ptr<Live>> live_;
  std::thread thread_;
};

}  // namespace q3vl::cluster

#endif  // Q3VL_CLUSTER_ENGINE_ENGINE_H_
