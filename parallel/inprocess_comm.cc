#include "parallel/inprocess_comm.h"

#include <algorithm>
#include <cstring>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/check.h"
#include "core/status_macros.h"
#include "parallel/host_reduce.h"
#include "parallel/inprocess_rendezvous.h"

namespace q3vl::parallel {
namespace {

using internal::Contribution;
using internal::Op;
using internal::Rendezvous;

char* Bytes(const Tensor& t) { return static_cast<char*>(t.raw_data()); }

// [begin, end) of chunk `i` when `n` elements are split into `parts` near-equal chunks.
std::pair<int64_t, int64_t> Chunk(int64_t n, int parts, int i) {
  return {n * i / parts, n * (i + 1) / parts};
}

// Every rank sees the same contributions, so every rank reaches the same verdict.
absl::Status CheckMatching(const std::vector<Contribution>& all) {
  const Contribution& first = all[0];
  for (size_t q = 1; q < all.size(); ++q) {
    const Contribution& c = all[q];
    bool same = c.op == first.op && c.dtype == first.dtype;
    switch (first.op) {
      case Op::kAllReduce:
      case Op::kAllGather:
        same = same && c.in_bytes == first.in_bytes;
        break;
      case Op::kReduceScatter:
        same = same && c.out_bytes == first.out_bytes;
        break;
      case Op::kBroadcast:
        same = same && c.root == first.root && c.in_bytes == first.in_bytes;
        break;
      case Op::kAllToAll:
        same = same && c.row_bytes == first.row_bytes;
        break;
      default:
        break;
    }
    if (!same) {
      return absl::InvalidArgumentError(absl::StrCat(
          "ranks disagree on the collective: rank 0 called ", internal::OpName(first.op), " (",
          DTypeName(first.dtype), ", ", first.in_bytes, " bytes), rank ", q, " called ",
          internal::OpName(c.op), " (", DTypeName(c.dtype), ", ", c.in_bytes, " bytes)"));
    }
  }
  if (first.op != Op::kAllToAll) return absl::OkStatus();
  for (size_t src = 0; src < all.size(); ++src) {
    for (size_t dst = 0; dst < all.size(); ++dst) {
      const int64_t sent = all[src].send_counts[dst], expected = all[dst].recv_counts[src];
      if (sent != expected) {
        return absl::InvalidArgumentError(absl::StrCat("AllToAll: rank ", src, " sends ", sent,
                                                       " rows to rank ", dst, ", which expects ",
                                                       expected));
      }
    }
  }
  return absl::OkStatus();
}

class InProcessCommunicator final : public Communicator {
 public:
  InProcessCommunicator(std::shared_ptr<Rendezvous> group, int rank, const CommOptions& options)
      : Communicator(rank, group->size()), group_(std::move(group)), options_(options) {}

  absl::string_view backend_name() const override { return "inprocess"; }
  Device device() const override { return Device::kCpu; }

 protected:
  absl::Status DoAllReduce(const CommBuffers& b) override {
    const int64_t n = b.in.numel(), esize = DTypeSize(b.in.dtype());
    const auto [begin, end] = Chunk(n, size(), rank());
    std::vector<float> acc(end - begin, 0.0f);
    std::vector<char> reduced((end - begin) * esize);
    Contribution mine = Base(Op::kAllReduce, b);
    mine.scratch = reduced.data();
    const absl::Time deadline = Deadline();
    std::vector<Contribution> all;
    Q3VL_RETURN_IF_ERROR(Start(deadline, mine, &all));
    // Reduce my chunk over every rank (rank order: identical bits everywhere), then share it.
    for (const Contribution& c : all) {
      AccumulateF32(b.in.dtype(), c.in + begin * esize, acc.data(), acc.size());
    }
    StoreFromF32(b.in.dtype(), acc.data(), reduced.data(), acc.size());
    Q3VL_RETURN_IF_ERROR(group_->Phase(rank(), deadline));
    for (int q = 0; q < size(); ++q) {
      const auto [qb, qe] = Chunk(n, size(), q);
      if (qe > qb) std::memcpy(Bytes(b.out) + qb * esize, all[q].scratch, (qe - qb) * esize);
    }
    return group_->Phase(rank(), deadline);
  }

  absl::Status DoAllGather(const CommBuffers& b) override {
    const absl::Time deadline = Deadline();
    std::vector<Contribution> all;
    Q3VL_RETURN_IF_ERROR(Start(deadline, Base(Op::kAllGather, b), &all));
    for (int q = 0; q < size(); ++q) {
      if (all[q].in_bytes > 0) {
        std::memcpy(Bytes(b.out) + q * all[q].in_bytes, all[q].in, all[q].in_bytes);
      }
    }
    return group_->Phase(rank(), deadline);
  }

  absl::Status DoReduceScatter(const CommBuffers& b) override {
    const absl::Time deadline = Deadline();
    std::vector<Contribution> all;
    Q3VL_RETURN_IF_ERROR(Start(deadline, Base(Op::kReduceScatter, b), &all));
    const int64_t m = b.out.numel();
    std::vector<float> acc(m, 0.0f);
    for (const Contribution& c : all) {
      AccumulateF32(b.in.dtype(), c.in + rank() * b.out.size_bytes(), acc.data(), m);
    }
    StoreFromF32(b.out.dtype(), acc.data(), b.out.raw_data(), m);
    return group_->Phase(rank(), deadline);
  }

  absl::Status DoAllToAll(const AllToAllParams& p) override {
    Contribution mine = Base(Op::kAllToAll, {.in = p.in, .out = p.out});
    mine.row_bytes = RowBytes(p.in);
    mine.send_counts = p.send_counts;
    mine.recv_counts = p.recv_counts;
    const absl::Time deadline = Deadline();
    std::vector<Contribution> all;
    Q3VL_RETURN_IF_ERROR(Start(deadline, mine, &all));
    int64_t out_row = 0;
    for (int q = 0; q < size(); ++q) {
      const std::vector<int64_t>& sends = all[q].send_counts;
      int64_t in_row = 0;
      for (int d = 0; d < rank(); ++d) in_row += sends[d];
      const int64_t rows = sends[rank()];
      if (rows > 0) {
        std::memcpy(Bytes(p.out) + out_row * mine.row_bytes, all[q].in + in_row * mine.row_bytes,
                    rows * mine.row_bytes);
      }
      out_row += rows;
    }
    return group_->Phase(rank(), deadline);
  }

  absl::Status DoBroadcast(const Tensor& data, int root) override {
    Contribution mine = Base(Op::kBroadcast, {.in = data, .out = data});
    mine.root = root;
    const absl::Time deadline = Deadline();
    std::vector<Contribution> all;
    Q3VL_RETURN_IF_ERROR(Start(deadline, mine, &all));
    if (rank() != root && mine.in_bytes > 0) std::memcpy(mine.out, all[root].in, mine.in_bytes);
    return group_->Phase(rank(), deadline);
  }

  absl::Status DoSend(const Tensor& data, int peer) override {
    return group_->Post(rank(), peer,
                        std::string(static_cast<const char*>(data.raw_data()), data.size_bytes()));
  }

  absl::Status DoRecv(const Tensor& data, int peer) override {
    std::string bytes;
    Q3VL_RETURN_IF_ERROR(group_->Take(peer, rank(), Deadline(), &bytes));
    if (bytes.size() != data.size_bytes()) {
      return absl::InvalidArgumentError(absl::StrCat("Recv: rank ", peer, " sent ", bytes.size(),
                                                     " bytes, the tensor holds ",
                                                     data.size_bytes()));
    }
    if (!bytes.empty()) std::memcpy(data.raw_data(), bytes.data(), bytes.size());
    return absl::OkStatus();
  }

  absl::Status DoBarrier() override { return Start(Deadline(), Contribution{}, nullptr); }

  absl::StatusOr<std::unique_ptr<Communicator>> DoSplit(int color, int key) override {
    Contribution mine;
    mine.op = Op::kSplit;
    mine.color = color;
    mine.key = key;
    std::vector<Contribution> all;
    int64_t sequence = 0;
    Q3VL_RETURN_IF_ERROR(group_->Phase(rank(), Deadline(), &mine, &all, &sequence));
    Q3VL_RETURN_IF_ERROR(CheckMatching(all));
    if (color == kNoColor) return std::unique_ptr<Communicator>();
    std::vector<std::pair<int, int>> members;  // (key, rank)
    for (int q = 0; q < size(); ++q) {
      if (all[q].color == color) members.push_back({all[q].key, q});
    }
    std::sort(members.begin(), members.end());
    const int new_rank = static_cast<int>(
        std::find(members.begin(), members.end(), std::make_pair(key, rank())) - members.begin());
    const int new_size = static_cast<int>(members.size());
    auto child = group_->Child(absl::StrCat("split/", sequence, "/", color), new_size);
    return std::unique_ptr<Communicator>(new InProcessCommunicator(child, new_rank, options_));
  }

  absl::StatusOr<std::unique_ptr<Communicator>> DoSubGroup(absl::Span<const int> ranks) override {
    const std::string list = absl::StrJoin(ranks, ",");
    const int nth = subgroup_calls_[list]++;
    const int new_size = static_cast<int>(ranks.size());
    const int new_rank =
        static_cast<int>(std::find(ranks.begin(), ranks.end(), rank()) - ranks.begin());
    auto child = group_->Child(absl::StrCat("sub/", list, "/", nth), new_size);
    return std::unique_ptr<Communicator>(new InProcessCommunicator(child, new_rank, options_));
  }

 private:
  static int64_t RowBytes(const Tensor& t) {
    int64_t n = static_cast<int64_t>(DTypeSize(t.dtype()));
    for (int d = 1; d < t.rank(); ++d) n *= t.dim(d);
    return n;
  }

  Contribution Base(Op op, const CommBuffers& b) const {
    Contribution c;
    c.op = op;
    c.dtype = b.in.dtype();
    c.in = static_cast<const char*>(b.in.raw_data());
    c.in_bytes = static_cast<int64_t>(b.in.size_bytes());
    c.out = static_cast<char*>(b.out.raw_data());
    c.out_bytes = static_cast<int64_t>(b.out.size_bytes());
    return c;
  }

  absl::Time Deadline() const { return absl::Now() + options_.timeout; }

  // First phase of a collective: publish, wait for all, check that they called the same thing.
  absl::Status Start(absl::Time deadline, const Contribution& mine,
                     std::vector<Contribution>* all) {
    std::vector<Contribution> local;
    std::vector<Contribution>* dest = all != nullptr ? all : &local;
    Q3VL_RETURN_IF_ERROR(group_->Phase(rank(), deadline, &mine, dest));
    return CheckMatching(*dest);
  }

  std::shared_ptr<Rendezvous> group_;
  CommOptions options_;
  std::map<std::string, int> subgroup_calls_;
};

}  // namespace

std::vector<std::unique_ptr<Communicator>> CreateInProcessWorld(int size,
                                                                const CommOptions& options) {
  Q3VL_CHECK_GE(size, 1);
  auto group = std::make_shared<Rendezvous>(size);
  std::vector<std::unique_ptr<Communicator>> ranks;
  for (int r = 0; r < size; ++r)
    ranks.push_back(std::make_unique<InProcessCommunicator>(group, r, options));
  return ranks;
}

void RunInProcessRanks(int size, const CommOptions& options,
                       const std::function<void(Communicator& world)>& body) {
  std::vector<std::unique_ptr<Communicator>> world = CreateInProcessWorld(size, options);
  std::vector<std::thread> threads;
  for (int r = 0; r < size; ++r) threads.emplace_back([&, r] { body(*world[r]); });
  for (std::thread& t : threads) t.join();
}

}  // namespace q3vl::parallel
