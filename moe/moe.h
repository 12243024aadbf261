// Mixture-of-experts block: route -> dispatch -> experts -> combine.
//   p = softmax(x Wgᵀ); top-k experts by p; w = p_top / sum(p_top) (when renormalising)
//   y_t = Σ_k w_tk · (silu(x_t G_eᵀ) ⊙ (x_t U_eᵀ)) D_eᵀ,   [G_e ; U_e] = gate_up[e] ([2I, D])
// Expert weights are held as nn.Linear rows ([out, in]): a decode step reads each weight row
// once and contiguously (see core/cpu/small_gemm.h).
// The dispatcher is a strategy: Dispatch() groups token rows by local expert and returns a
// handle that Combine() consumes. LocalDispatcher keeps everything on this rank; the
// expert-parallel all-to-all dispatcher lives with the communicators. Stateless between calls.
#ifndef Q3VL_MOE_MOE_H_
#define Q3VL_MOE_MOE_H_

#include <cstdint>
#include <vector>

#include "core/backend.h"

namespace q3vl::moe {

struct ExpertWeights {
  Tensor router;        // [E, D] (all experts: routing is global)
  Tensor gate_up;       // [E_local, 2I, D]: rows [0, I) gate, [I, 2I) up
  Tensor down;          // [E_local, D, I]
  int64_t first_expert = 0;  // global id of local expert 0
};

// Token rows grouped by local expert, ready for the grouped GEMM.
struct DispatchHandle {
  Tensor rows;                   // [R, D] token rows ordered by expert
  std::vector<int64_t> offsets;  // [E_local + 1] on the host, or
  Tensor device_offsets;         // [E_local + 1] i64 in the backend's memory (LocalDispatcher)
  Tensor source_token;           // [R] i64: token index each row came from
  Tensor weight;                 // [R] f32: routing weight of the row
  int64_t num_tokens = 0;

  // Expert-parallel dispatch only (ep_dispatcher.h): the sending side of the exchange.
  struct Exchange {
    int64_t shard_begin = 0, shard_end = 0;  // this rank's token share [begin, end)
    std::vector<int64_t> send_counts;        // [E] rows sent to each rank
    std::vector<int64_t> recv_counts;        // [E] rows received from each rank
    Tensor sent_token;                       // [R_send] i64: token of each sent row, in the share
    Tensor sent_weight;                      // [R_send] f32: its routing weight
    Tensor order;                            // [R_recv] i64: received index of each grouped row
  } exchange;
};

struct Routing {
  Tensor expert_ids;  // [T, k] i32
  Tensor weights;     // [T, k] f32
};

class Dispatcher {
 public:
  virtual ~Dispatcher() = default;
  virtual DispatchHandle Dispatch(Backend& backend, const Tensor& x, const Routing& routing,
                                  const ExpertWeights& experts) = 0;
  // out [T, D] += Σ rows weighted back to their tokens (out must be zeroed by the caller
  // when it should hold only the MoE output).
  virtual void Combine(Backend& backend, const DispatchHandle& handle, const Tensor& expert_out,
                       Tensor& out) = 0;
};

// All experts are local.
class LocalDispatcher final : public Dispatcher {
 public:
  DispatchHandle Dispatch(Backend& backend, const Tensor& x, const Routing& routing,
                          const ExpertWeights& experts) override;
  void Combine(Backend& backend, const DispatchHandle& handle, const Tensor& expert_out,
               Tensor& out) override;
};

Routing Route(Backend& backend, const Tensor& x, const Tensor& router, int top_k, bool renormalize);

struct MoeParams {
  Tensor x;    // [T, D]
  Tensor out;  // [T, D], overwritten
  int top_k = 1;
  bool renormalize = true;
  Routing* routing_out = nullptr;  // optional: receives the routing (for tests and statistics)
};

void MoeForward(Backend& backend, Dispatcher& dispatcher, const ExpertWeights& experts,
                const MoeParams& p);

}  // namespace q3vl::moe

#endif  // Q3VL_MOE_MOE_H_
