// Expert-parallel dispatch over the E ranks of an "ep" group. Tokens arrive replicated on every
// rank of the group (attention ran tensor- or data-parallel before); rank r takes its share
// [T r / E, T (r+1) / E) of them, routes each (token, slot) to the rank owning the expert
// (global expert e lives on rank e / experts_per_rank), exchanges token rows with one uneven
// all-to-all, and Combine sends the expert outputs back, weights them into its share and
// all-gathers the shares so that every rank again holds the MoE output of all T tokens.
//   Dispatch: x[T, D] -> rows [R_recv, D] grouped by local expert
//   Combine:  expert_out [R_recv, D] -> out[T, D] += Σ_k w_tk · y_tk
// A failed collective (a lost peer) aborts the rank: the launcher tears the job down.
// One instance per group; not thread-safe.
#ifndef Q3VL_MOE_EP_DISPATCHER_H_
#define Q3VL_MOE_EP_DISPATCHER_H_

#include "moe/moe.h"
#include "parallel/communicator.h"

namespace q3vl::moe {

class AllToAllDispatcher final : public Dispatcher {
 public:
  // REQUIRES: ep outlives the dispatcher; experts_per_rank > 0.
  AllToAllDispatcher(parallel::Communicator& ep, int64_t experts_per_rank)
      : ep_(ep), experts_per_rank_(experts_per_rank) {}

  DispatchHandle Dispatch(Backend& backend, const Tensor& x, const Routing& routing,
                          const ExpertWeights& experts) override;
  void Combine(Backend& backend, const DispatchHandle& handle, const Tensor& expert_out,
               Tensor& out) override;

 private:
  parallel::Communicator& ep_;
  const int64_t experts_per_rank_;
};

}  // namespace q3vl::moe

#endif  // Q3VL_MOE_EP_DISPATCHER_H_
