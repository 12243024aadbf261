// A replica's side of the control plane (q3vl serve --coordinator HOST:PORT):
// - ReplicaService: the Replica gRPC service. Generate takes a request the coordinator forwards
//   and runs it through the replica's own OpenAI server (same parsing, checks, preparation and
//   engine as its HTTP API), streaming each choice's outputs back; a cancelled call cancels the
//   request, an error before the first output ends the call with the API error as its status.
// - ReplicaAgent: the session with the coordinator. A thread connects (retrying with backoff
//   while the coordinator is away), says Hello with a snapshot of the prefix-cache keys, then
//   every heartbeat period reports the load and the KV events since the last report; a resync
//   directive (or a log that dropped events the coordinator has not seen) sends a snapshot
//   instead. A refusal (a page size or model the coordinator does not route) is logged and ends
//   the agent.
// Threads: gRPC's callback threads run Generate; the engine's thread only queues outputs; the
// agent has a writer thread and a reader thread per session.
#ifndef Q3VL_CLUSTER_CONTROL_REPLICA_H_
#define Q3VL_CLUSTER_CONTROL_REPLICA_H_

#include <atomic>
#include <memory>
#include <string>
#include <thread>

#include <grpcpp/grpcpp.h>

#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "cluster/control/control.grpc.pb.h"
#include "cluster/engine/engine.h"
#include "cluster/server/openai_server.h"

namespace q3vl::cluster::control {

class ReplicaService final : public ::q3vl::control::v1::Replica::CallbackService {
 public:
  // `server` outlives the service.
  explicit ReplicaService(server::OpenAiServer& server) : server_(server) {}
  grpc::ServerWriteReactor<::q3vl::control::v1::GenerateChunk>* Generate(
      grpc::CallbackServerContext* context, const ::q3vl::control::v1::GenerateRequest* request) override;

 private:
  server::OpenAiServer& server_;
};

struct ReplicaAgentOptions {
  std::string coordinator;      // host:port of the coordinator's gRPC service
  std::string replica_id;       // stable name (a pod's name, host:port by default)
  std::string address;          // host:port where the coordinator reaches this replica's gRPC
  std::string http_address;     // host:port of its HTTP API
  std::string model;            // served model name
  int64_t page_size = 16;
  int64_t max_seq_tokens = 0;
  int64_t max_model_len = 0;
  absl::Duration heartbeat = absl::Seconds(1);
};

class ReplicaAgent {
 public:
  // `engine` and `server` outlive the agent. Starts its thread.
  ReplicaAgent(const Engine& engine, const server::OpenAiServer& server, ReplicaAgentOptions options);
  ~ReplicaAgent();  // Stop()
  void Stop();
  // Connected and welcomed by the coordinator now.
  bool connected() const { return connected_.load(); }

 private:
  void Run();
  // One session; returns when it breaks (or Stop). True when the coordinator refused us.
  bool Session();

  const Engine& engine_;
  const server::OpenAiServer& server_;
  const ReplicaAgentOptions options_;
  const std::string incarnation_;
  std::atomic<bool> connected_{false};
  absl::Mutex mu_;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  grpc::ClientContext* context_ ABSL_GUARDED_BY(mu_) = nullptr;  // the session's, to cancel it
  std::thread thread_;
};

}  // namespace q3vl::cluster::control

#endif  // Q3VL_CLUSTER_CONTROL_REPLICA_H_
