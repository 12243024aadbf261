// Rendezvous: the state one in-process group shares between its rank threads. A collective is
// a sequence of barrier phases; the first phase publishes each rank's Contribution (pointers to
// its buffers) so every rank can read its peers' inputs directly. Also holds point-to-point
// mailboxes and the registry that hands child groups to their members. Thread-safe; a timeout
// in any wait breaks the group for every member.
#ifndef Q3VL_PARALLEL_INPROCESS_RENDEZVOUS_H_
#define Q3VL_PARALLEL_INPROCESS_RENDEZVOUS_H_

#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "core/dtype.h"

namespace q3vl::parallel::internal {

enum class Op : uint8_t {
  kAllReduce,
  kAllGather,
  kReduceScatter,
  kAllToAll,
  kBroadcast,
  kBarrier,
  kSplit
};
const char* OpName(Op op);

// What one rank brings to a collective. Pointers stay valid until the call's last phase.
struct Contribution {
  Op op = Op::kBarrier;
  DType dtype = DType::kF32;
  const char* in = nullptr;
  int64_t in_bytes = 0;
  char* out = nullptr;
  int64_t out_bytes = 0;
  const char* scratch = nullptr;  // all-reduce: this rank's reduced chunk
  int root = 0;
  int64_t row_bytes = 0;                              // all-to-all
  // All-to-all counts, held by value: a rank that finds a mismatch returns at once, and its
  // peers must still be able to read what it published.
  std::vector<int64_t> send_counts;
  std::vector<int64_t> recv_counts;
  int color = 0;                                      // split
  int key = 0;                                        // split
};

class Rendezvous {
 public:
  explicit Rendezvous(int size) : size_(size), slots_(size), published_(size) {}
  int size() const { return size_; }

  // Barrier phase: waits for every rank or until `deadline`. With `mine`, publishes it and
  // copies every rank's contribution into `all`; `sequence` (optional) receives a number that
  // is the same on every rank and unique per completed phase.
  absl::Status Phase(int rank, absl::Time deadline, const Contribution* mine = nullptr,
                     std::vector<Contribution>* all = nullptr, int64_t* sequence = nullptr);

  // Buffered point-to-point messages from `src` to `dst`.
  absl::Status Post(int src, int dst, std::string bytes);
  absl::Status Take(int src, int dst, absl::Time deadline, std::string* bytes);

  // The child group registered under `key` (created with `size` ranks by its first caller);
  // the entry is dropped once `size` callers have taken it.
  std::shared_ptr<Rendezvous> Child(const std::string& key, int size);

 private:
  // Marks the group broken (first caller wins) and wakes everyone. REQUIRES: mu_ held.
  absl::Status Break(absl::Status status) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const int size_;
  absl::Mutex mu_;
  absl::CondVar cv_;
  int arrived_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t generation_ ABSL_GUARDED_BY(mu_) = 0;
  std::vector<Contribution> slots_ ABSL_GUARDED_BY(mu_);      // being filled
  std::vector<Contribution> published_ ABSL_GUARDED_BY(mu_);  // of the last completed phase
  absl::Status broken_ ABSL_GUARDED_BY(mu_);
  std::map<std::pair<int, int>, std::deque<std::string>> mail_ ABSL_GUARDED_BY(mu_);
  struct ChildEntry {
    std::shared_ptr<Rendezvous> group;
    int taken = 0;
  };
  std::map<std::string, ChildEntry> children_ ABSL_GUARDED_BY(mu_);
};

}  // namespace q3vl::parallel::internal

#endif  // Q3VL_PARALLEL_INPROCESS_RENDEZVOUS_H_
