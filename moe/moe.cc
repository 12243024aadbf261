#include "moe/moe.h"

namespace q3vl::moe {

Routing Route(Backend& backend, const Tensor& x, const Tensor& router, int top_k, bool renormalize) {
  const int64_t tokens = x.dim(0), num_experts = router.dim(0);
  Tensor logits = backend.Allocate(DType::kF32, {tokens, num_experts});  // [T, E]
  backend.Gemm({.a = x, .b = router, .out = logits});
  Routing r{.expert_ids = backend.Allocate(DType::kI32, {tokens, top_k}),
            .weights = backend.Allocate(DType::kF32, {tokens, top_k})};
  backend.Router({.logits = logits, .top_k = top_k, .renormalize = renormalize,
                  .expert_ids = r.expert_ids, .weights = r.weights});
  return r;
}

DispatchHandle LocalDispatcher::Dispatch(Backend& backend, const Tensor& x, const Routing& routing,
                                         const ExpertWeights& experts) {
  const int64_t tokens = x.dim(0), top_k = routing.expert_ids.dim(1);
  const int64_t num_local = experts.gate_up.dim(0);
  // The routing is read on the host (a sync on a device): the grouped GEMM's row counts.
  const Tensor ids_host = Download(backend, routing.expert_ids), weights_host = Download(backend, routing.weights);
  const int32_t* ids = ids_host.data<int32_t>();
  const float* weights = weights_host.data<float>();
  // Counting sort of (token, slot) pairs by local expert; pairs for other ranks' experts are
  // dropped (they do not occur with a local dispatcher holding every expert).
  std::vector<int64_t> counts(num_local + 1, 0);
  for (int64_t i = 0; i < tokens * top_k; ++i) {
    const int64_t e = ids[i] - experts.first_expert;
    if (e >= 0 && e < num_local) ++counts[e + 1];
  }
  DispatchHandle h;
  h.num_tokens = tokens;
  h.offsets.assign(num_local + 1, 0);
  for (int64_t e = 0; e < num_local; ++e) h.offsets[e + 1] = h.offsets[e] + counts[e + 1];
  const int64_t rows = h.offsets.back();
  Tensor source_token = Tensor::Empty(DType::kI64, {rows});
  Tensor weight = Tensor::Empty(DType::kF32, {rows});
  std::vector<int64_t> cursor(h.offsets.begin(), h.offsets.end() - 1);
  int64_t* src = source_token.data<int64_t>();
  float* w = weight.data<float>();
  for (int64_t t = 0; t < tokens; ++t) {
    for (int64_t j = 0; j < top_k; ++j) {
      const int64_t e = ids[t * top_k + j] - experts.first_expert;
      if (e < 0 || e >= num_local) continue;
      const int64_t row = cursor[e]++;
      src[row] = t;
      w[row] = weights[t * top_k + j];
    }
  }
  h.source_token = Upload(backend, source_token);
  h.weight = Upload(backend, weight);
  h.rows = backend.Allocate(DType::kF32, {rows, x.dim(1)});
  if (rows > 0) backend.GatherRows({.table = x, .ids = h.source_token, .out = h.rows});
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
  Tensor gate_up = backend.Allocate(DType::kF32, {rows, 2 * inter});  // [R, 2I]
  backend.GroupedGemm({.a = h.rows, .weights = experts.gate_up, .offsets = h.offsets, .out = gate_up,
                       .weights_transposed = true});
  Tensor act = backend.Allocate(DType::kF32, {rows, inter});  // [R, I]
  if (rows > 0) backend.Activation({.kind = ActivationKind::kSiluMul, .x = gate_up, .out = act});
  Tensor expert_out = backend.Allocate(DType::kF32, {rows, p.x.dim(1)});  // [R, D]
  backend.GroupedGemm({.a = act, .weights = experts.down, .offsets = h.offsets, .out = expert_out,
                       .weights_transposed = true});
  Tensor out = p.out;
  backend.Zero(out);
  dispatcher.Combine(backend, h, expert_out, out);
  if (p.routing_out != nullptr) *p.routing_out = std::move(routing);
}

}  // namespace q3vl::moe
