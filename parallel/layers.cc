#include "parallel/layers.h"

#include <algorithm>

#include "core/check.h"

namespace q3vl::parallel {
namespace {

bool Trivial(const Communicator* group) { return group == nullptr || group->size() == 1; }

}  // namespace

void SumPartials(Communicator* group, Tensor& partial) {
  if (Trivial(group)) return;
  Q3VL_CHECK_OK(group->AllReduce({.in = partial, .out = partial}));
}

void ReceiveFromPreviousStage(Communicator* pp, Tensor& hidden) {
  if (Trivial(pp) || pp->rank() == 0) return;
  Q3VL_CHECK_OK(pp->Recv(hidden, pp->rank() - 1));
}

void SendToNextStage(Communicator* pp, const Tensor& hidden) {
  if (Trivial(pp) || pp->rank() + 1 == pp->size()) return;
  Q3VL_CHECK_OK(pp->Send(hidden, pp->rank() + 1));
}

void BroadcastFromLastStage(Communicator* pp, Tensor& data) {
  if (Trivial(pp)) return;
  Q3VL_CHECK_OK(pp->Broadcast(data, pp->size() - 1));
}

int64_t MaxOverGroup(Communicator* group, int64_t value) {
  if (Trivial(group)) return value;
  auto all = AllGatherValue(*group, value);
  Q3VL_CHECK_OK(all.status());
  return *std::max_element(all->begin(), all->end());
}

void BroadcastFrom(Communicator* group, int root, Tensor& data) {
  if (Trivial(group) || data.numel() == 0) return;
  Q3VL_CHECK_OK(group->Broadcast(data, root));
}

void BroadcastFrom(Communicator* group, int root, std::string& bytes) {
  if (Trivial(group)) return;
  Q3VL_CHECK_OK(BroadcastString(*group, bytes, root));
}

void SendValues(Communicator* pp, int to, const std::vector<int64_t>& values) {
  const int64_t n = static_cast<int64_t>(values.size());
  Q3VL_CHECK_OK(pp->Send(Tensor::FromVectorI64({n}, {1}), to));
  if (n > 0) Q3VL_CHECK_OK(pp->Send(Tensor::FromVectorI64(values, {n}), to));
}

std::vector<int64_t> ReceiveValues(Communicator* pp, int from) {
  Tensor count = Tensor::Empty(DType::kI64, {1});
  Q3VL_CHECK_OK(pp->Recv(count, from));
  const int64_t n = count.data<int64_t>()[0];
  Q3VL_CHECK(n >= 0) << "pipeline message of " << n << " values from stage " << from;
  if (n == 0) return {};
  Tensor values = Tensor::Empty(DType::kI64, {n});
  Q3VL_CHECK_OK(pp->Recv(values, from));
  return std::vector<int64_t>(values.data<int64_t>(), values.data<int64_t>() + n);
}

void GatherAtRoot(Communicator& group, int root, const std::vector<Tensor>& mine,
                  const std::vector<std::vector<Tensor>>& dest) {
  if (group.rank() != root) {
    for (const Tensor& t : mine) {
      if (t.numel() > 0) Q3VL_CHECK_OK(group.Send(t, root));
    }
    return;
  }
  Q3VL_CHECK_EQ(static_cast<int>(dest.size()), group.size());
  for (int p = 0; p < group.size(); ++p) {
    if (p == root) continue;
    for (const Tensor& t : dest[p]) {
      Tensor into = t;
      if (into.numel() > 0) Q3VL_CHECK_OK(group.Recv(into, p));
    }
  }
}

Tensor GatherFromAll(Communicator* group, const Tensor& mine) {
  const int size = group == nullptr ? 1 : group->size();
  Shape shape = {size};
  for (int64_t d : mine.shape()) shape.push_back(d);
  Tensor all = Tensor::Empty(mine.dtype(), shape);  // [size, ...mine]
  if (size == 1) {
    all.Select(0).CopyFrom(mine);
  } else {
    Q3VL_CHECK_OK(group->AllGather({.in = mine, .out = all}));
  }
  return all;
}

Tensor GatherVocab(Backend& backend, Communicator* tp, const Tensor& local, int64_t vocab) {
  if (Trivial(tp)) return Download(backend, local);
  const int size = tp->size();
  const int64_t n = local.dim(0), chunk = local.dim(1);
  Tensor all = backend.AllocateUninitialized(DType::kF32, {size * n, chunk});  // [T N, chunk]
  Q3VL_CHECK_OK(tp->AllGather({.in = local, .out = all}));
  const Tensor gathered = Download(backend, all);
  Tensor logits = Tensor::Empty(DType::kF32, {n, vocab});  // [N, V]
  for (int r = 0; r < size; ++r) {
    const int64_t begin = r * chunk, width = std::min(vocab, begin + chunk) - begin;
    for (int64_t i = 0; i < n && width > 0; ++i) {
      std::copy_n(gathered.data<float>() + (r * n + i) * chunk, width, logits.data<float>() + i * vocab + begin);
    }
  }
  return logits;
}

}  // namespace q3vl::parallel
