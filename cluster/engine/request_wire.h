// A RunnerRequest on the wire: everything but the pixels as JSON, the pixels as the tensors
// PixelTensors lists (images first, then videos), sent after it. The replica executor sends
// requests to a replica's ranks so; the batch runner sends work to other replicas so.
#ifndef Q3VL_CLUSTER_ENGINE_REQUEST_WIRE_H_
#define Q3VL_CLUSTER_ENGINE_REQUEST_WIRE_H_

#include <vector>

#include "core/tensor.h"
#include "model/step_plan.h"
#include "nlohmann/json.hpp"

namespace q3vl::cluster {

nlohmann::json RunnerRequestToJson(const model::RunnerRequest& request);
// The request with its pixel tensors allocated (f32, the sender's shapes) but not filled:
// receive PixelTensors(result) into them.
model::RunnerRequest RunnerRequestFromJson(const nlohmann::json& json);
// The request's pixel tensors, in wire order (views, not copies).
std::vector<Tensor> PixelTensors(const model::RunnerRequest& request);

}  // namespace q3vl::cluster

#endif  // Q3VL_CLUSTER_ENGINE_REQUEST_WIRE_H_
