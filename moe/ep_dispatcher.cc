#include "moe/ep_dispatcher.h"

#include <algorithm>

#include "core/check.h"

namespace q3vl::moe {
namespace {

int64_t ShardBegin(int64_t tokens, int rank, int size) { return tokens * rank / size; }

}  // namespace

DispatchHandle AllToAllDispatcher::Dispatch(Backend& backend, const Tensor& x, const Routing& routing,
                                            const ExpertWeights& experts) {
  const int size = ep_.size();
  const int share_rank = token_group_ ? token_group_->rank() : 0;
  const int shares = token_group_ ? token_group_->size() : 1;
  const int64_t tokens = x.dim(0), d = x.dim(1), top_k = routing.expert_ids.dim(1);
  const int64_t num_local = experts.gate_up.dim(0);
  Q3VL_CHECK_EQ(num_local, experts_per_rank_);
  DispatchHandle h;
  h.num_tokens = tokens;
  DispatchHandle::Exchange& ex = h.exchange;
  ex.shard_begin = ShardBegin(tokens, share_rank, shares);
  ex.shard_end = ShardBegin(tokens, share_rank + 1, shares);
  // The routing is read on the host (a sync on a device): it decides the exchange's counts.
  const Tensor ids_host = Download(backend, routing.expert_ids), weights_host = Download(backend, routing.weights);
  const int32_t* ids = ids_host.data<int32_t>();
  const float* weights = weights_host.data<float>();

  // Sending side: (token, slot) pairs of this rank's share, ordered by destination rank.
  ex.send_counts.assign(size, 0);
  for (int64_t t = ex.shard_begin; t < ex.shard_end; ++t) {
    for (int64_t j = 0; j < top_k; ++j) ++ex.send_counts[ids[t * top_k + j] / experts_per_rank_];
  }
  const int64_t num_send = (ex.shard_end - ex.shard_begin) * top_k;
  Tensor sent_token = Tensor::Empty(DType::kI64, {num_send});
  // Row in this rank's share: only needed when the share is all-gathered (Combine).
  Tensor share_token = Tensor::Empty(DType::kI64, {shares > 1 ? num_send : 0});
  Tensor sent_weight = Tensor::Empty(DType::kF32, {num_send});
  Tensor send_expert = Tensor::Empty(DType::kI64, {num_send, 1});  // [R_send, 1] local expert at dest
  std::vector<int64_t> cursor(size, 0);
  for (int p = 1; p < size; ++p) cursor[p] = cursor[p - 1] + ex.send_counts[p - 1];
  for (int64_t t = ex.shard_begin; t < ex.shard_end; ++t) {
    for (int64_t j = 0; j < top_k; ++j) {
      const int64_t e = ids[t * top_k + j];
      const int64_t row = cursor[e / experts_per_rank_]++;
      sent_token.data<int64_t>()[row] = t;
      if (shares > 1) share_token.data<int64_t>()[row] = t - ex.shard_begin;
      sent_weight.data<float>()[row] = weights[t * top_k + j];
      send_expert.data<int64_t>()[row] = e % experts_per_rank_;
    }
  }
  ex.sent_token = Upload(backend, sent_token);
  if (shares > 1) ex.share_token = Upload(backend, share_token);
  ex.sent_weight = Upload(backend, sent_weight);
  Tensor send_rows = backend.Allocate(DType::kF32, {num_send, d});  // [R_send, D]
  if (num_send > 0) backend.GatherRows({.table = x, .ids = ex.sent_token, .out = send_rows});

  auto recv_counts = parallel::ExchangeCounts(ep_host_, ex.send_counts);
  Q3VL_CHECK_OK(recv_counts.status());
  ex.recv_counts = *recv_counts;
  int64_t num_recv = 0;
  for (int64_t c : ex.recv_counts) num_recv += c;
  Tensor recv_rows = backend.Allocate(DType::kF32, {num_recv, d});      // [R_recv, D]
  Tensor recv_expert = backend.Allocate(DType::kI64, {num_recv, 1});   // [R_recv, 1]
  Q3VL_CHECK_OK(ep_.AllToAll({.in = send_rows, .send_counts = ex.send_counts, .out = recv_rows,
                              .recv_counts = ex.recv_counts}));
  Q3VL_CHECK_OK(ep_.AllToAll({.in = Upload(backend, send_expert), .send_counts = ex.send_counts,
                              .out = recv_expert, .recv_counts = ex.recv_counts}));

  // Receiving side: rows grouped by local expert (counting sort, stable in arrival order).
  h.offsets.assign(num_local + 1, 0);
  const Tensor recv_expert_host = Download(backend, recv_expert);
  const int64_t* re = recv_expert_host.data<int64_t>();
  for (int64_t i = 0; i < num_recv; ++i) {
    Q3VL_CHECK(re[i] >= 0 && re[i] < num_local) << "expert " << re[i] << " from a peer";
    ++h.offsets[re[i] + 1];
  }
  for (int64_t e = 0; e < num_local; ++e) h.offsets[e + 1] += h.offsets[e];
  Tensor order = Tensor::Empty(DType::kI64, {num_recv});
  std::vector<int64_t> next(h.offsets.begin(), h.offsets.end() - 1);
  for (int64_t i = 0; i < num_recv; ++i) order.data<int64_t>()[next[re[i]]++] = i;
  ex.order = Upload(backend, order);
  h.rows = backend.Allocate(DType::kF32, {num_recv, d});
  if (num_recv > 0) backend.GatherRows({.table = recv_rows, .ids = ex.order, .out = h.rows});
  return h;
}

void AllToAllDispatcher::Combine(Backend& backend, const DispatchHandle& handle, const Tensor& expert_out,
                                 Tensor& out) {
  const DispatchHandle::Exchange& ex = handle.exchange;
  const int shares = token_group_ ? token_group_->size() : 1;
  const int64_t d = out.dim(1), tokens = handle.num_tokens;
  const int64_t num_recv = expert_out.dim(0), num_send = ex.sent_token.numel();
  // Back to arrival order, then to the ranks that sent the rows.
  Tensor arrived = backend.Allocate(DType::kF32, {num_recv, d});  // [R_recv, D]
  if (num_recv > 0) {
    backend.ScatterAddRows({.src = expert_out, .ids = ex.order, .out = arrived, .accumulate = false});
  }
  Tensor returned = backend.Allocate(DType::kF32, {num_send, d});  // [R_send, D]
  Q3VL_CHECK_OK(ep_.AllToAll({.in = arrived, .send_counts = ex.recv_counts, .out = returned,
                              .recv_counts = ex.send_counts}));
  if (shares == 1) {  // every token is this rank's: weight the rows straight into out
    if (num_send > 0) {
      backend.ScatterAddRows({.src = returned, .ids = ex.sent_token, .scale = ex.sent_weight, .out = out});
    }
    return;
  }
  // This rank's share, weighted; shares padded to one size for the all-gather.
  const int64_t share = (tokens + shares - 1) / shares;
  Tensor mine = backend.Allocate(DType::kF32, {share, d});  // [ceil(T / G), D]
  if (num_send > 0) {
    backend.ScatterAddRows({.src = returned, .ids = ex.share_token, .scale = ex.sent_weight, .out = mine});
  }
  Tensor all = backend.Allocate(DType::kF32, {shares * share, d});  // [G ceil(T / G), D]
  Q3VL_CHECK_OK(token_group_->AllGather({.in = mine, .out = all}));
  for (int p = 0; p < shares; ++p) {
    const int64_t begin = ShardBegin(tokens, p, shares), end = ShardBegin(tokens, p + 1, shares);
    if (end == begin) continue;
    Tensor rows = out.Slice(0, begin, end);
    backend.Add({.a = rows, .b = all.Slice(0, p * share, p * share + end - begin), .out = rows});
  }
}

}  // namespace q3vl::moe
