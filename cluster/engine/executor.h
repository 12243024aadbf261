// Runs a replica of several ranks from its leader. ReplicaExecutor is the leader's StepRunner:
// every Add and Remove is applied to the leader's own runner at once and queued for the other
// ranks; Execute sends the queued calls, then the plan, to every rank of the replica in one
// broadcast over the replica's host communicator (with the new requests' pixels as tensors),
// and runs the plan locally. Each other rank runs FollowReplica: it applies the same calls in
// the same order to its own runner (ModelRunner on decoder ranks, VisionStageRunner on vision
// ranks), so every rank executes the same plans, and the collectives inside the forward line
// up. Stop() ends the followers. Same thread rules as StepRunner (the engine loop).
#ifndef Q3VL_CLUSTER_ENGINE_EXECUTOR_H_
#define Q3VL_CLUSTER_ENGINE_EXECUTOR_H_

#include <string>
#include <vector>

#include "model/step_plan.h"
#include "parallel/communicator.h"

namespace q3vl::cluster {

class ReplicaExecutor : public model::StepRunner {
 public:
  // `replica`: the replica's host communicator; `local` runs on the leader (rank `leader`).
  ReplicaExecutor(parallel::Communicator& replica, model::StepRunner& local);
  ~ReplicaExecutor() override;

  absl::Status Validate(const model::RunnerRequest& request) const override { return local_.Validate(request); }
  std::vector<kv::PageKey> PrefixKeys(const model::RunnerRequest& request, int64_t page_size) const override {
    return local_.PrefixKeys(request, page_size);
  }
  absl::Status Add(int64_t id, model::RunnerRequest request) override;
  void Remove(int64_t id) override;
  absl::StatusOr<model::StepOutput> Execute(const model::StepPlan& plan) override;
  model::RunnerCounters counters() const override { return local_.counters(); }
  // Tells the followers the leader is alive (they wait in a broadcast that times out).
  absl::Status Heartbeat() override;
  // Tells the followers to return (idempotent; also done by the destructor).
  absl::Status Stop();

 private:
  absl::Status Send(const std::string& header, const std::vector<Tensor>& tensors);

  parallel::Communicator& replica_;
  model::StepRunner& local_;
  std::string queued_;             // JSON array of calls not yet sent
  std::vector<Tensor> pixels_;     // the queued adds' pixel values, in order
  bool stopped_ = false;
};

// A non-leader rank of a replica: applies the leader's calls to `local` until Stop.
// Errors: a lost leader or peer (the communicator's), or a failing Execute.
absl::Status FollowReplica(parallel::Communicator& replica, int leader, model::StepRunner& local);

}  // namespace q3vl::cluster

#endif  // Q3VL_CLUSTER_ENGINE_EXECUTOR_H_
