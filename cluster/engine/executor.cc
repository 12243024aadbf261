#include "cluster/engine/executor.h"

#include "absl/strings/str_cat.h"
#include "cluster/engine/request_wire.h"
#include "core/check.h"
#include "core/status_macros.h"
#include "nlohmann/json.hpp"

namespace q3vl::cluster {
namespace {

using Json = nlohmann::json;

Json PlanMeta(const model::StepPlan& plan) {
  Json seqs = Json::array();
  for (const model::StepSequence& s : plan.seqs) {
    seqs.push_back({s.request, s.begin, s.num_tokens, s.sample, s.group, s.pages});
  }
  return {{"step", plan.step}, {"released", plan.released}, {"seqs", seqs}};
}

model::StepPlan PlanFromMeta(const Json& m) {
  model::StepPlan plan{.step = m["step"].get<int64_t>(), .released = m["released"].get<std::vector<int64_t>>()};
  for (const Json& s : m["seqs"]) {
    plan.seqs.push_back({.request = s[0].get<int64_t>(), .begin = s[1].get<int64_t>(),
                         .num_tokens = s[2].get<int64_t>(), .sample = s[3].get<bool>(), .group = s[4].get<int64_t>(),
                         .pages = s[5].get<std::vector<int32_t>>()});
  }
  return plan;
}

}  // namespace

ReplicaExecutor::ReplicaExecutor(parallel::Communicator& replica, model::StepRunner& local)
    : replica_(replica), local_(local) {}

ReplicaExecutor::~ReplicaExecutor() { (void)Stop(); }

absl::Status ReplicaExecutor::Add(int64_t id, model::RunnerRequest request) {
  Json call = {{"op", "add"}, {"id", id}, {"request", RunnerRequestToJson(request)}};
  std::vector<Tensor> pixels = PixelTensors(request);
  Q3VL_RETURN_IF_ERROR(local_.Add(id, std::move(request)));
  // Queued only once the leader accepted it: the followers see exactly the leader's calls.
  pixels_.insert(pixels_.end(), pixels.begin(), pixels.end());
  queued_ += (queued_.empty() ? "" : ",") + call.dump();
  return absl::OkStatus();
}

void ReplicaExecutor::Remove(int64_t id) {
  local_.Remove(id);
  queued_ += (queued_.empty() ? "" : ",") + Json{{"op", "remove"}, {"id", id}}.dump();
}

absl::Status ReplicaExecutor::Send(const std::string& header, const std::vector<Tensor>& tensors) {
  std::string bytes = header;
  Q3VL_RETURN_IF_ERROR(parallel::BroadcastString(replica_, bytes, replica_.rank()));
  for (const Tensor& t : tensors) Q3VL_RETURN_IF_ERROR(replica_.Broadcast(t, replica_.rank()));
  return absl::OkStatus();
}

absl::StatusOr<model::StepOutput> ReplicaExecutor::Execute(const model::StepPlan& plan) {
  Q3VL_CHECK(!stopped_) << "Execute after Stop";
  const std::string header = absl::StrCat("{\"calls\":[", queued_, "],\"plan\":", PlanMeta(plan).dump(), "}");
  const std::vector<Tensor> pixels = std::move(pixels_);
  queued_.clear();
  pixels_.clear();
  Q3VL_RETURN_IF_ERROR(Annotate(Send(header, pixels), "sending the step to the replica's ranks"));
  return local_.Execute(plan);
}

absl::Status ReplicaExecutor::Heartbeat() {
  if (stopped_) return absl::OkStatus();
  return Send("{\"heartbeat\":true}", {});
}

absl::Status ReplicaExecutor::Stop() {
  if (stopped_) return absl::OkStatus();
  stopped_ = true;
  return Send("{\"stop\":true}", {});
}

absl::Status FollowReplica(parallel::Communicator& replica, int leader, model::StepRunner& local) {
  while (true) {
    std::string bytes;
    Q3VL_RETURN_IF_ERROR(Annotate(parallel::BroadcastString(replica, bytes, leader), "waiting for the replica leader"));
    const Json message = Json::parse(bytes, nullptr, /*allow_exceptions=*/false);
    if (message.is_discarded()) return absl::InternalError("malformed message from the replica leader");
    if (message.contains("stop")) return absl::OkStatus();
    if (message.contains("heartbeat")) continue;
    for (const Json& call : message["calls"]) {
      const int64_t id = call["id"].get<int64_t>();
      if (call["op"] == "remove") {
        local.Remove(id);
        continue;
      }
      model::RunnerRequest request = RunnerRequestFromJson(call["request"]);
      for (model::VisionInput* in : {&request.images, &request.videos}) {
        if (!in->grids.empty()) Q3VL_RETURN_IF_ERROR(replica.Broadcast(in->pixel_values, leader));
      }
      Q3VL_RETURN_IF_ERROR(local.Add(id, std::move(request)));
    }
    Q3VL_RETURN_IF_ERROR(local.Execute(PlanFromMeta(message["plan"])).status());
  }
}

}  // namespace q3vl::cluster
