// The coordinator (q3vl coordinator): the user-facing OpenAI endpoint over many replicas. It is
// the OpenAI server's CompletionBackend (the same HTTP API, errors, metrics and health as q3vl
// serve) and the control plane's Coordinator service:
// - Replicas open a session (Connect), say Hello and report load and KV events every second; the
//   coordinator keeps each one's state and the global index of cached pages (router.h), asks for
//   a snapshot when it sees a gap in the events, and marks a replica down when its session breaks
//   or it misses heartbeats for heartbeat_timeout (its pages leave the index; it rejoins with a
//   fresh snapshot). A draining replica stays known but gets no new work.
// - A request is prepared here (the same code as a replica: template, tokenizer, media) for its
//   prefix keys and length, routed (Router), and forwarded to the chosen replica's Generate; the
//   replica streams its choices' outputs back. A replica that fails a request before any output
//   (it went away, is draining, its queue is full) gets it re-routed to another, up to
//   max_attempts replicas; one that fails after output ends the open choices with an error.
//   Cancelling a call cancels the forwarded one.
// Threads: gRPC's callback threads (sessions, forwarded calls), the OpenAI server's prepare
// threads (Start, which waits for the replica to accept), and a monitor thread for heartbeats.
#ifndef Q3VL_CLUSTER_COORDINATOR_COORDINATOR_H_
#define Q3VL_CLUSTER_COORDINATOR_COORDINATOR_H_

#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "cluster/control/control.grpc.pb.h"
#include "cluster/coordinator/router.h"
#include "cluster/engine/metrics.h"
#include "cluster/server/openai_server.h"
#include "model/config.h"

namespace q3vl::cluster::coordinator {

struct CoordinatorOptions {
  RouterOptions router;
  int64_t page_size = 16;                             // replicas must use the same
  absl::Duration heartbeat_timeout = absl::Seconds(5);
  int max_attempts = 3;                               // replicas a request may be tried on before its first output
  absl::Duration accept_timeout = absl::Seconds(120); // for a replica to take a forwarded request (it decodes media first)
};

struct ReplicaStatus {
  std::string id, address, http_address;
  bool up = false, draining = false;
  int64_t in_flight = 0, routed_total = 0, kv_keys = 0, max_seq_tokens = 0;
};

class Coordinator final : public server::CompletionBackend {
 public:
  // `config` (the model's: token ids and merge size for the prefix keys) outlives it.
  Coordinator(const model::ModelConfig& config, CoordinatorOptions options);
  ~Coordinator() override;  // Shutdown()
  void Shutdown();

  // The control plane's service, to register on a grpc::ServerBuilder.
  grpc::Service* service();

  api::ApiResult<Streams> Start(const api::PreparedRequest& request, const std::string& call, const std::string& path,
                                const api::Json& body) override;
  void Cancel(const std::string& call) override;
  void Forget(const std::string& call) override;
  MetricsSnapshot Metrics() const override;
  std::string ExtraMetricsText(const std::string& model_name) const override;
  std::string Unavailable() const override;

  std::vector<ReplicaStatus> Replicas() const;

  struct Slot;
  struct Session;
  struct Call;
  class Forward;
  class Service;

 private:
  friend struct Session;
  friend struct Call;
  friend class Forward;
  friend class Service;

  // Picks a replica for `call` among those it has not tried and reserves its load: the replica
  // and the prefill pages counted there (released with the attempt).
  absl::StatusOr<std::pair<int, int64_t>> Route(Call& call);
  void StartAttempt(const std::shared_ptr<Call>& call, int slot, int64_t pending_pages);
  // An attempt ended: done, retried elsewhere (nothing was output yet), or the call fails.
  void AttemptDone(const std::shared_ptr<Call>& call, Forward* attempt, const grpc::Status& status, bool replica_down);
  void FirstOutput(int slot, int64_t pending_pages);
  void MarkDown(int slot, const std::string& why) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Monitor();

  const model::ModelConfig& config_;
  const CoordinatorOptions options_;
  std::unique_ptr<Service> service_;
  EngineMetrics metrics_;

  mutable absl::Mutex mu_;
  std::vector<std::unique_ptr<Slot>> slots_ ABSL_GUARDED_BY(mu_);  // by replica id, never shrinks
  KvIndex index_ ABSL_GUARDED_BY(mu_);
  Router router_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, std::shared_ptr<Call>> calls_ ABSL_GUARDED_BY(mu_);
  int64_t retries_total_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t routed_prompt_pages_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t routed_cached_pages_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t fallbacks_total_ ABSL_GUARDED_BY(mu_) = 0;
  Histogram decision_seconds_ ABSL_GUARDED_BY(mu_);
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::thread monitor_;
};

}  // namespace q3vl::cluster::coordinator

#endif  // Q3VL_CLUSTER_COORDINATOR_COORDINATOR_H_
