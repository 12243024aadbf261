// Conversions between the control plane's messages (control.proto) and the engine's and API's
// types: stream outputs, API errors as gRPC statuses, prefix-cache keys as bytes.
#ifndef Q3VL_CLUSTER_CONTROL_WIRE_H_
#define Q3VL_CLUSTER_CONTROL_WIRE_H_

#include <string>
#include <vector>

#include <grpcpp/support/status.h>

#include "cluster/api/openai.h"
#include "cluster/control/control.pb.h"
#include "cluster/engine/request.h"
#include "kv/block_pool.h"

namespace q3vl::cluster::control {

namespace pb = ::q3vl::control::v1;

void ToProto(const RequestOutput& out, int choice, pb::Output& proto);
RequestOutput FromProto(const pb::Output& proto);

// An API error as a gRPC status: the closest code, the message, and the error itself (HTTP
// status and OpenAI body) in the details, so the other side answers exactly as this one would.
grpc::Status ToGrpcStatus(const api::ApiError& error);
api::ApiError FromGrpcStatus(const grpc::Status& status);

std::string KeyBytes(const kv::PageKey& key);
bool KeyFromBytes(const std::string& bytes, kv::PageKey& key);  // false unless 32 bytes

}  // namespace q3vl::cluster::control

#endif  // Q3VL_CLUSTER_CONTROL_WIRE_H_
