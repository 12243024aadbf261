// Expert-parallel dispatch over the E ranks of an "ep" group. The ranks of `token_group` (a
// subset of the ep group, this rank included) hold the same tokens: the tensor-parallel
// attention group that produced them, or the whole ep group when attention ran on every rank
// of it. Each takes its share [T r / G, T (r+1) / G) (r, G: rank and size in token_group; no
// token_group: all T tokens are this rank's alone, as under data-parallel attention), routes
// each (token, slot) to the rank owning the expert (global expert e lives on ep rank
// e / experts_per_rank), exchanges token rows with one uneven all-to-all, and Combine sends the
// expert outputs back, weights them into its share and all-gathers the shares over
// token_group so that every holder again has the MoE output of all T tokens. A rank with no
// tokens still joins both exchanges.
//   Dispatch: x[T, D] -> rows [R_recv, D] grouped by local expert
//   Combine:  expert_out [R_recv, D] -> out[T, D] += Σ_k w_tk · y_tk
// The routing is grouped on the backend (GroupByExpert over all E experts, which orders the
// rows by destination); the host reads only the E + 1 group offsets, since the exchange's sizes
// must be known there. The rows travel over `ep` (the data plane: the backend's tensors); the
// row counts per (peer, local expert) over `ep_host`, a host communicator over the same ranks
// (the same object on a CPU mesh), from which each receiver orders its rows by local expert
// without reading them.
// A failed collective (a lost peer) aborts the rank: the launcher tears the job down.
// One instance per group; not thread-safe.
#ifndef Q3VL_MOE_EP_DISPATCHER_H_
#define Q3VL_MOE_EP_DISPATCHER_H_

#include "moe/moe.h"
#include "parallel/communicator.h"

namespace q3vl::moe {

class AllToAllDispatcher final : public Dispatcher {
 public:
  // REQUIRES: ep, ep_host and token_group outlive the dispatcher; ep_host has ep's ranks;
  // experts_per_rank > 0.
  AllToAllDispatcher(parallel::Communicator& ep, parallel::Communicator& ep_host,
                     int64_t experts_per_rank, parallel::Communicator* token_group)
      : ep_(ep), ep_host_(ep_host), experts_per_rank_(experts_per_rank), token_group_(token_group) {}

  DispatchHandle Dispatch(Backend& backend, const Tensor& x, const Routing& routing,
                          const ExpertWeights& experts) override;
  void Combine(Backend& backend, const DispatchHandle& handle, const Tensor& expert_out,
               Tensor& out) override;

 private:
  parallel::Communicator& ep_;
  parallel::Communicator& ep_host_;
  const int64_t experts_per_rank_;
  parallel::Communicator* const token_group_;  // null or size 1: the tokens are this rank's
};

}  // namespace q3vl::moe

#endif  // Q3VL_MOE_EP_DISPATCHER_H_
