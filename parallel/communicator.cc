#include "parallel/communicator.h"

#include <cstring>
#include <numeric>
#include <set>

#include "absl/strings/str_cat.h"
#include "core/status_macros.h"
#include "parallel/host_reduce.h"

namespace q3vl::parallel {
namespace {

absl::Status Invalid(absl::string_view op, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat(op, ": ", what));
}

bool Overlap(const Tensor& a, const Tensor& b) {
  if (a.size_bytes() == 0 || b.size_bytes() == 0) return false;
  const char* pa = static_cast<const char*>(a.raw_data());
  const char* pb = static_cast<const char*>(b.raw_data());
  return pa < pb + b.size_bytes() && pb < pa + a.size_bytes();
}

// Elements per row (dimension 0) of a tensor of rank >= 1.
int64_t RowElements(const Tensor& t) {
  int64_t n = 1;
  for (int d = 1; d < t.rank(); ++d) n *= t.dim(d);
  return n;
}

absl::Status CheckPair(absl::string_view op, const CommBuffers& b, bool reduce) {
  if (b.in.dtype() != b.out.dtype()) {
    return Invalid(
        op, absl::StrCat("in is ", DTypeName(b.in.dtype()), ", out is ", DTypeName(b.out.dtype())));
  }
  if (reduce && !IsReducible(b.in.dtype())) {
    return Invalid(op, absl::StrCat("sum needs f32 or bf16, got ", DTypeName(b.in.dtype())));
  }
  return absl::OkStatus();
}

int64_t Sum(const std::vector<int64_t>& v) {
  return std::accumulate(v.begin(), v.end(), int64_t{0});
}

}  // namespace

absl::Status Communicator::CheckTensor(const Tensor& t, absl::string_view what) const {
  if (!t.defined()) return Invalid(what, "tensor is undefined");
  if (!t.is_contiguous()) return Invalid(what, "tensor is not contiguous");
  if (t.device() != device()) {
    return Invalid(what,
                   absl::StrCat("tensor is not on the ", backend_name(), " communicator's device"));
  }
  return absl::OkStatus();
}

absl::Status Communicator::CopyLocal(const Tensor& src, const Tensor& dst) {
  if (src.size_bytes() > 0 && src.raw_data() != dst.raw_data()) {
    std::memmove(dst.raw_data(), src.raw_data(), src.size_bytes());
  }
  return absl::OkStatus();
}

absl::Status Communicator::AllReduce(const CommBuffers& b) {
  Q3VL_RETURN_IF_ERROR(CheckTensor(b.in, "AllReduce in"));
  Q3VL_RETURN_IF_ERROR(CheckTensor(b.out, "AllReduce out"));
  Q3VL_RETURN_IF_ERROR(CheckPair("AllReduce", b, /*reduce=*/true));
  if (b.in.shape() != b.out.shape()) {
    return Invalid("AllReduce", absl::StrCat("in ", ShapeString(b.in.shape()), " vs out ",
                                             ShapeString(b.out.shape())));
  }
  if (b.in.raw_data() != b.out.raw_data() && Overlap(b.in, b.out)) {
    return Invalid("AllReduce", "in and out overlap without being the same tensor");
  }
  if (size_ == 1) return CopyLocal(b.in, b.out);
  return DoAllReduce(b);
}

absl::Status Communicator::AllGather(const CommBuffers& b) {
  Q3VL_RETURN_IF_ERROR(CheckTensor(b.in, "AllGather in"));
  Q3VL_RETURN_IF_ERROR(CheckTensor(b.out, "AllGather out"));
  Q3VL_RETURN_IF_ERROR(CheckPair("AllGather", b, /*reduce=*/false));
  if (b.out.numel() != size_ * b.in.numel()) {
    return Invalid("AllGather", absl::StrCat("out ", ShapeString(b.out.shape()), " must hold ",
                                             size_, " x in ", ShapeString(b.in.shape())));
  }
  if (Overlap(b.in, b.out)) return Invalid("AllGather", "in and out overlap");
  if (size_ == 1) return CopyLocal(b.in, b.out);
  return DoAllGather(b);
}

absl::Status Communicator::ReduceScatter(const CommBuffers& b) {
  Q3VL_RETURN_IF_ERROR(CheckTensor(b.in, "ReduceScatter in"));
  Q3VL_RETURN_IF_ERROR(CheckTensor(b.out, "ReduceScatter out"));
  Q3VL_RETURN_IF_ERROR(CheckPair("ReduceScatter", b, /*reduce=*/true));
  if (b.in.numel() != size_ * b.out.numel()) {
    return Invalid("ReduceScatter", absl::StrCat("in ", ShapeString(b.in.shape()), " must hold ",
                                                 size_, " x out ", ShapeString(b.out.shape())));
  }
  if (Overlap(b.in, b.out)) return Invalid("ReduceScatter", "in and out overlap");
  if (size_ == 1) return CopyLocal(b.in, b.out);
  return DoReduceScatter(b);
}

absl::Status Communicator::AllToAll(const AllToAllParams& p) {
  Q3VL_RETURN_IF_ERROR(CheckTensor(p.in, "AllToAll in"));
  Q3VL_RETURN_IF_ERROR(CheckTensor(p.out, "AllToAll out"));
  Q3VL_RETURN_IF_ERROR(CheckPair("AllToAll", {.in = p.in, .out = p.out}, /*reduce=*/false));
  if (p.in.rank() < 1 || p.out.rank() < 1) return Invalid("AllToAll", "tensors need a row dim");
  if (RowElements(p.in) != RowElements(p.out)) {
    return Invalid("AllToAll", absl::StrCat("rows differ: in ", ShapeString(p.in.shape()), ", out ",
                                            ShapeString(p.out.shape())));
  }
  if (static_cast<int>(p.send_counts.size()) != size_ ||
      static_cast<int>(p.recv_counts.size()) != size_) {
    return Invalid("AllToAll", absl::StrCat("need ", size_, " send and recv counts, got ",
                                            p.send_counts.size(), " and ", p.recv_counts.size()));
  }
  for (int q = 0; q < size_; ++q) {
    if (p.send_counts[q] < 0 || p.recv_counts[q] < 0) {
      return Invalid("AllToAll", absl::StrCat("negative count for peer ", q));
    }
  }
  if (Sum(p.send_counts) != p.in.dim(0) || Sum(p.recv_counts) != p.out.dim(0)) {
    return Invalid("AllToAll", absl::StrCat("counts sum to ", Sum(p.send_counts), " sent and ",
                                            Sum(p.recv_counts), " received rows; in has ",
                                            p.in.dim(0), ", out has ", p.out.dim(0)));
  }
  if (Overlap(p.in, p.out)) return Invalid("AllToAll", "in and out overlap");
  if (size_ == 1) {
    if (p.send_counts[0] != p.recv_counts[0]) {
      return Invalid("AllToAll", "a single rank must receive exactly what it sends");
    }
    return CopyLocal(p.in, p.out);
  }
  return DoAllToAll(p);
}

absl::Status Communicator::Broadcast(const Tensor& data, int root) {
  Q3VL_RETURN_IF_ERROR(CheckTensor(data, "Broadcast"));
  if (root < 0 || root >= size_) {
    return Invalid("Broadcast", absl::StrCat("root ", root, " outside [0, ", size_, ")"));
  }
  if (size_ == 1) return absl::OkStatus();
  return DoBroadcast(data, root);
}

absl::Status Communicator::Send(const Tensor& data, int peer) {
  Q3VL_RETURN_IF_ERROR(CheckTensor(data, "Send"));
  if (peer < 0 || peer >= size_ || peer == rank_) {
    return Invalid("Send", absl::StrCat("peer ", peer, " is not another rank of ", size_));
  }
  return DoSend(data, peer);
}

absl::Status Communicator::Recv(const Tensor& data, int peer) {
  Q3VL_RETURN_IF_ERROR(CheckTensor(data, "Recv"));
  if (peer < 0 || peer >= size_ || peer == rank_) {
    return Invalid("Recv", absl::StrCat("peer ", peer, " is not another rank of ", size_));
  }
  return DoRecv(data, peer);
}

absl::Status Communicator::Barrier() {
  if (size_ == 1) return absl::OkStatus();
  return DoBarrier();
}

absl::StatusOr<std::unique_ptr<Communicator>> Communicator::Split(int color, int key) {
  if (color < kNoColor) return Invalid("Split", absl::StrCat("color ", color, " is negative"));
  return DoSplit(color, key);
}

absl::StatusOr<std::unique_ptr<Communicator>> Communicator::SubGroup(absl::Span<const int> ranks) {
  const std::set<int> distinct(ranks.begin(), ranks.end());
  if (ranks.empty() || distinct.size() != ranks.size() || *distinct.begin() < 0 ||
      *distinct.rbegin() >= size_ || !distinct.count(rank_)) {
    return Invalid("SubGroup", absl::StrCat("ranks must be distinct ranks of ", size_,
                                            " and include this rank ", rank_));
  }
  return DoSubGroup(ranks);
}

absl::StatusOr<std::vector<int64_t>> ExchangeCounts(Communicator& comm,
                                                    absl::Span<const int64_t> send_counts) {
  const int n = comm.size();
  const int64_t total = static_cast<int64_t>(send_counts.size());
  if (total == 0 || total % n != 0) {
    return Invalid("ExchangeCounts", absl::StrCat("need a positive multiple of ", n, " counts, got ", total));
  }
  Tensor in = Tensor::FromVectorI64({send_counts.begin(), send_counts.end()}, {total, 1});
  Tensor out = Tensor::Empty(DType::kI64, {total, 1});
  const std::vector<int64_t> per_peer(n, total / n);
  Q3VL_RETURN_IF_ERROR(
      comm.AllToAll({.in = in, .send_counts = per_peer, .out = out, .recv_counts = per_peer}));
  return std::vector<int64_t>(out.data<int64_t>(), out.data<int64_t>() + total);
}

absl::StatusOr<std::vector<int64_t>> AllGatherValue(Communicator& comm, int64_t value) {
  Tensor in = Tensor::FromVectorI64({value}, {1});
  Tensor out = Tensor::Empty(DType::kI64, {comm.size()});
  Q3VL_RETURN_IF_ERROR(comm.AllGather({.in = in, .out = out}));
  return std::vector<int64_t>(out.data<int64_t>(), out.data<int64_t>() + comm.size());
}

absl::Status BroadcastString(Communicator& comm, std::string& bytes, int root) {
  Tensor length = Tensor::FromVectorI64({static_cast<int64_t>(bytes.size())}, {1});
  Q3VL_RETURN_IF_ERROR(comm.Broadcast(length, root));
  const int64_t n = length.data<int64_t>()[0];
  Tensor data = Tensor::Empty(DType::kU8, {n});
  if (comm.rank() == root && n > 0) std::memcpy(data.raw_data(), bytes.data(), n);
  Q3VL_RETURN_IF_ERROR(comm.Broadcast(data, root));
  bytes.assign(static_cast<const char*>(data.raw_data()), n);
  return absl::OkStatus();
}

}  // namespace q3vl::parallel
