#include "moe/moe.h"

namespace q3vl::moe {

Routing Route(Backend& backend, const Tensor& x, const Tensor& router, int top_k, bool renormalize) {
  const int64_t tokens = x.dim(0), num_experts = router.dim(0);
  Tensor logits = backend.AllocateUninitialized(DType::kF32, {tokens, num_experts});  // [T, E]
  backend.Gemm({.a = x, .b = router, .out = logits});
  Routing r{.expert_ids = backend.AllocateUninitialized(DType::kI32, {tokens, top_k}),
            .weights = backend.AllocateUninitialized(DType::kF32, {tokens, top_k})};
  backend.Router({.logits = logits, .top_k = top_k, .renormalize = renormalize,
                  .expert_ids = r.expert_ids, .weights = r.weights});
  return r;
}

DispatchHandle LocalDispatcher::Dispatch(Backend& backend, const Tensor& x, const Routing& routing,
                                         const ExpertWeights& experts) {
  const int64_t tokens = x.dim(0), pairs = routing.expert_ids.numel();
  const int64_t num_local = experts.gate_up.dim(0);
  // Grouped on the backend: the host never waits for the routing. Every (token, slot) pair
  // gets a row (pairs of experts this dispatcher does not hold would be zero-weight padding).
  DispatchHandle h;
  h.num_tokens = tokens;
  h.device_offsets = backend.AllocateUninitialized(DType::kI64, {num_local + 1});
  h.source_token = backend.AllocateUninitialized(DType::kI64, {pairs});
  h.weight = backend.AllocateUninitialized(DType::kF32, {pairs});
  backend.GroupByExpert({.expert_ids = routing.expert_ids, .weights = routing.weights,
                         .first_expert = experts.first_expert, .offsets = h.device_offsets,
                         .source_token = h.source_token, .row_weight = h.weight});
  h.rows = backend.AllocateUninitialized(DType::kF32, {pairs, x.dim(1)});
  if (pairs > 0) backend.GatherRows({.table = x, .ids = h.source_token, .out = h.rows});
  return h;
}

void LocalDispatcher::Combine(Backend& backend, const DispatchHandle& handle,
                              const Tensor& expert_out, Tensor& out) {
  if (handle.rows.dim(0) == 0) return;
  backend.ScatterAddRows({.src = expert_out, .ids = handle.source_token, .scale = handle.weight, .out = out});
}

void MoeForward(Backend& backend, Dispatcher& dispatcher, const ExpertWeights& experts,
                const MoeParams& p) {
  const int64_t inter = experts.down.dim(2);
  Routing routing = Route(backend, p.x, experts.router, p.top_k, p.renormalize);
  DispatchHandle h = dispatcher.Dispatch(backend, p.x, routing, experts);
  const int64_t rows = h.rows.dim(0);
  // Zeroed: with device offsets the grouped GEMMs leave padding rows (pairs of experts not held
  // here) untouched, and Combine weights those rows by 0, which a NaN would survive.
  Tensor gate_up = backend.Allocate(DType::kF32, {rows, 2 * inter});  // [R, 2I]
  backend.GroupedGemm({.a = h.rows, .weights = experts.gate_up, .offsets = h.offsets, .out = gate_up,
                       .weights_transposed = true, .device_offsets = h.device_offsets});
  Tensor act = backend.Allocate(DType::kF32, {rows, inter});  // [R, I]
  if (rows > 0) backend.Activation({.kind = ActivationKind::kSiluMul, .x = gate_up, .out = act});
  Tensor expert_out = backend.Allocate(DType::kF32, {rows, p.x.dim(1)});  // [R, D]
  backend.GroupedGemm({.a = act, .weights = experts.down, .offsets = h.offsets, .out = expert_out,
                       .weights_transposed = true, .device_offsets = h.device_offsets});
  Tensor out = p.out;
  backend.Zero(out);
  dispatcher.Combine(backend, h, expert_out, out);
  if (p.routing_out != nullptr) *p.routing_out = std::move(routing);
}

}  // namespace q3vl::moe
