// Communicator: one group of ranks and the collectives the runtime needs, on Tensors (data
// plane) and on small host values (control plane helpers at the end). Implementations:
// in-process threads (inprocess_comm.h), MPI (mpi/), NCCL (nccl/); all pass one conformance
// suite. A communicator is owned by one rank and used by one thread at a time; every member
// rank must make the same calls in the same order. Calls never hang: a peer that is lost or
// stuck past CommOptions::timeout yields an error, after which the communicator is broken.
#ifndef Q3VL_PARALLEL_COMMUNICATOR_H_
#define Q3VL_PARALLEL_COMMUNICATOR_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "core/tensor.h"

namespace q3vl::parallel {

struct CommOptions {
  // Longest any single call may wait for its peers before returning DeadlineExceeded. Covers
  // peers that are late because they compute (a long prefill): keep it generous in serving.
  absl::Duration timeout = absl::Seconds(300);
};

// Source and destination of a collective. Both contiguous, same dtype, on device().
struct CommBuffers {
  Tensor in;   // [...]: shape per call (AllGather: out holds size x in; ReduceScatter: the reverse)
  Tensor out;  // [...]
};

// Uneven all-to-all over rows: rank r sends rows [Σ_{q<p} send_counts[q], +send_counts[p]) of
// `in` to rank p and receives send_counts[r] of rank q's rows into `out` at
// Σ_{q'<q} recv_counts[q'] (rows grouped by source rank, ascending). Any dtype.
struct AllToAllParams {
  Tensor in;                         // [Σ send_counts, ...row]
  std::vector<int64_t> send_counts;  // [size]: rows to each peer (0 allowed)
  Tensor out;                        // [Σ recv_counts, ...row]
  std::vector<int64_t> recv_counts;  // [size]: rows from each peer; must match the peers' sends
};

// Split color for ranks that join no new group (they receive nullptr).
inline constexpr int kNoColor = -1;

class Communicator {
 public:
  virtual ~Communicator() = default;

  int rank() const { return rank_; }
  int size() const { return size_; }
  virtual absl::string_view backend_name() const = 0;
  // Where tensors passed to this communicator must live.
  virtual Device device() const = 0;

  // out = Σ over ranks of in, elementwise. f32 or bf16 (bf16: summed in f32, rounded once).
  // in and out have one shape; out may be in (in place). Every rank gets identical bits.
  absl::Status AllReduce(const CommBuffers& b);
  // out = concat over ranks (rank order) of in: out.numel() = size * in.numel(). Any dtype.
  absl::Status AllGather(const CommBuffers& b);
  // out = slice `rank` of Σ over ranks of in, in.numel() = size * out.numel(). f32 or bf16.
  absl::Status ReduceScatter(const CommBuffers& b);
  absl::Status AllToAll(const AllToAllParams& p);
  // Copies `data` of rank `root` into `data` of every other rank. Any dtype.
  absl::Status Broadcast(const Tensor& data, int root);
  // Point to point. Send may block until the peer posts the matching Recv (MPI rendezvous,
  // NCCL), so order pairs to avoid cycles. Messages between a pair arrive in order; the
  // receiver's tensor has the sender's byte size.
  absl::Status Send(const Tensor& data, int peer);
  absl::Status Recv(const Tensor& data, int peer);
  absl::Status Barrier();

  // Collective over all ranks: ranks passing one color >= 0 form a new communicator, ranked by
  // (key, rank); kNoColor gets nullptr.
  absl::StatusOr<std::unique_ptr<Communicator>> Split(int color, int key);
  // Collective over the members of `ranks` only (ranks of this communicator, distinct, same
  // list on every member): a new communicator where member ranks[i] has rank i.
  absl::StatusOr<std::unique_ptr<Communicator>> SubGroup(absl::Span<const int> ranks);

 protected:
  Communicator(int rank, int size) : rank_(rank), size_(size) {}

  // Implementations. Arguments are validated (shapes, dtypes, counts, ranks, devices) and
  // size-1 groups are handled before these are called.
  virtual absl::Status DoAllReduce(const CommBuffers& b) = 0;
  virtual absl::Status DoAllGather(const CommBuffers& b) = 0;
  virtual absl::Status DoReduceScatter(const CommBuffers& b) = 0;
  virtual absl::Status DoAllToAll(const AllToAllParams& p) = 0;
  virtual absl::Status DoBroadcast(const Tensor& data, int root) = 0;
  virtual absl::Status DoSend(const Tensor& data, int peer) = 0;
  virtual absl::Status DoRecv(const Tensor& data, int peer) = 0;
  virtual absl::Status DoBarrier() = 0;
  virtual absl::StatusOr<std::unique_ptr<Communicator>> DoSplit(int color, int key) = 0;
  virtual absl::StatusOr<std::unique_ptr<Communicator>> DoSubGroup(absl::Span<const int> ranks) = 0;
  // dst = src (same bytes, both on device()); used by size-1 groups. Host memcpy by default.
  virtual absl::Status CopyLocal(const Tensor& src, const Tensor& dst);

 private:
  absl::Status CheckTensor(const Tensor& t, absl::string_view what) const;

  int rank_;
  int size_;
};

// ---- Host control plane: small host values over a host communicator (in-process, MPI). ----

// An all-to-all of counts, c per peer: send_counts holds size() blocks of c values, block q for
// rank q, and the result holds the block each rank q sent to this one, in rank order. With c = 1,
// recv_counts[q] = rows rank q will send to this rank.
absl::StatusOr<std::vector<int64_t>> ExchangeCounts(Communicator& comm,
                                                    absl::Span<const int64_t> send_counts);
// Every rank's `value`, in rank order.
absl::StatusOr<std::vector<int64_t>> AllGatherValue(Communicator& comm, int64_t value);
// `bytes` of `root` (of any length) to every rank.
absl::Status BroadcastString(Communicator& comm, std::string& bytes, int root);

}  // namespace q3vl::parallel

#endif  // Q3VL_PARALLEL_COMMUNICATOR_H_
