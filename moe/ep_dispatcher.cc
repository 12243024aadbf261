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
  const int64_t num_local = experts.gate_up.dim(0), num_experts = size * experts_per_rank_;
  Q3VL_CHECK_EQ(num_local, experts_per_rank_);
  DispatchHandle h;
  h.num_tokens = tokens;
  DispatchHandle::Exchange& ex = h.exchange;
  ex.shard_begin = ShardBegin(tokens, share_rank, shares);
  ex.shard_end = ShardBegin(tokens, share_rank + 1, shares);
  const int64_t num_send = (ex.shard_end - ex.shard_begin) * top_k;

  // Sending side: this rank's (token, slot) pairs grouped by global expert on the backend. Rank
  // p owns experts [p E_r, (p + 1) E_r), so the rows come out ordered by destination, then by
  // local expert there, then by token.
  Tensor expert_offsets = backend.AllocateUninitialized(DType::kI64, {num_experts + 1});
  ex.sent_token = backend.AllocateUninitialized(DType::kI64, {num_send});
  ex.sent_weight = backend.AllocateUninitialized(DType::kF32, {num_send});
  backend.GroupByExpert({.expert_ids = routing.expert_ids.Slice(0, ex.shard_begin, ex.shard_end),
                         .weights = routing.weights.Slice(0, ex.shard_begin, ex.shard_end),
                         .first_expert = 0, .offsets = expert_offsets, .source_token = ex.sent_token,
                         .row_weight = ex.sent_weight});
  const Tensor share = x.Slice(0, ex.shard_begin, ex.shard_end);
  Tensor send_rows = backend.AllocateUninitialized(DType::kF32, {num_send, d});  // [R_send, D]
  if (num_send > 0) backend.GatherRows({.table = share, .ids = ex.sent_token, .out = send_rows});
  // The exchange's sizes are the only routing the host reads: E + 1 offsets (a sync on a device).
  const Tensor offsets_host = Download(backend, expert_offsets);
  const int64_t* offsets = offsets_host.data<int64_t>();
  std::vector<int64_t> send_expert_counts(num_experts);  // [E]: block p for rank p
  ex.send_counts.assign(size, 0);
  for (int64_t e = 0; e < num_experts; ++e) {
    send_expert_counts[e] = offsets[e + 1] - offsets[e];
    ex.send_counts[e / experts_per_rank_] += send_expert_counts[e];
  }

  // Each peer learns how many rows of each of its local experts it receives from every rank.
  auto recv_expert_counts = parallel::ExchangeCounts(ep_host_, send_expert_counts);
  Q3VL_CHECK_OK(recv_expert_counts.status());
  const std::vector<int64_t>& rc = *recv_expert_counts;  // [E]: rc[p E_r + e] from rank p, expert e
  ex.recv_counts.assign(size, 0);
  h.offsets.assign(num_local + 1, 0);
  for (int p = 0; p < size; ++p) {
    for (int64_t e = 0; e < num_local; ++e) {
      const int64_t c = rc[p * num_local + e];
      Q3VL_CHECK(c >= 0 && c <= (int64_t{1} << 40)) << c << " rows of expert " << e << " from rank " << p;
      ex.recv_counts[p] += c;
      h.offsets[e + 1] += c;
    }
  }
  for (int64_t e = 0; e < num_local; ++e) h.offsets[e + 1] += h.offsets[e];
  const int64_t num_recv = h.offsets[num_local];
  Tensor recv_rows = backend.AllocateUninitialized(DType::kF32, {num_recv, d});  // [R_recv, D]
  Q3VL_CHECK_OK(ep_.AllToAll({.in = send_rows, .send_counts = ex.send_counts, .out = recv_rows,
                              .recv_counts = ex.recv_counts}));

  // Receiving side: rank p's rows arrive as one block ordered by local expert, so the grouped
  // order (expert, then sender, then token) follows from the counts alone.
  Tensor order = Tensor::Empty(DType::kI64, {num_recv});
  std::vector<int64_t> next(h.offsets.begin(), h.offsets.end() - 1);
  int64_t arrived = 0;
  for (int p = 0; p < size; ++p) {
    for (int64_t e = 0; e < num_local; ++e) {
      for (int64_t i = 0; i < rc[p * num_local + e]; ++i) order.data<int64_t>()[next[e]++] = arrived++;
    }
  }
  ex.order = Upload(backend, order);
  h.rows = backend.AllocateUninitialized(DType::kF32, {num_recv, d});
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
  Tensor arrived = backend.AllocateUninitialized(DType::kF32, {num_recv, d});  // [R_recv, D]
  if (num_recv > 0) {
    backend.ScatterAddRows({.src = expert_out, .ids = ex.order, .out = arrived, .accumulate = false});
  }
  Tensor returned = backend.AllocateUninitialized(DType::kF32, {num_send, d});  // [R_send, D]
  Q3VL_CHECK_OK(ep_.AllToAll({.in = arrived, .send_counts = ex.recv_counts, .out = returned,
                              .recv_counts = ex.send_counts}));
  if (shares == 1) {  // every token is this rank's (the share starts at 0): weight the rows into out
    if (num_send > 0) {
      backend.ScatterAddRows({.src = returned, .ids = ex.sent_token, .scale = ex.sent_weight, .out = out});
    }
    return;
  }
  // This rank's share, weighted; shares padded to one size for the all-gather.
  const int64_t share = (tokens + shares - 1) / shares;
  Tensor mine = backend.Allocate(DType::kF32, {share, d});  // [ceil(T / G), D]
  if (num_send > 0) {
    backend.ScatterAddRows({.src = returned, .ids = ex.sent_token, .scale = ex.sent_weight, .out = mine});
  }
  Tensor all = backend.AllocateUninitialized(DType::kF32, {shares * share, d});  // [G ceil(T / G), D]
  Q3VL_CHECK_OK(token_group_->AllGather({.in = mine, .out = all}));
  for (int p = 0; p < shares; ++p) {
    const int64_t begin = ShardBegin(tokens, p, shares), end = ShardBegin(tokens, p + 1, shares);
    if (end == begin) continue;
    Tensor rows = out.Slice(0, begin, end);
    backend.Add({.a = rows, .b = all.Slice(0, p * share, p * share + end - begin), .out = rows});
  }
}

}  // namespace q3vl::moe
