#include "parallel/inprocess_rendezvous.h"

#include "absl/strings/str_cat.h"

namespace q3vl::parallel::internal {

const char* OpName(Op op) {
  switch (op) {
    case Op::kAllReduce:
      return "AllReduce";
    case Op::kAllGather:
      return "AllGather";
    case Op::kReduceScatter:
      return "ReduceScatter";
    case Op::kAllToAll:
      return "AllToAll";
    case Op::kBroadcast:
      return "Broadcast";
    case Op::kBarrier:
      return "Barrier";
    case Op::kSplit:
      return "Split";
  }
  return "?";
}

absl::Status Rendezvous::Break(absl::Status status) {
  if (broken_.ok()) broken_ = std::move(status);
  cv_.SignalAll();
  return broken_;
}

absl::Status Rendezvous::Phase(int rank, absl::Time deadline, const Contribution* mine,
                               std::vector<Contribution>* all, int64_t* sequence) {
  absl::MutexLock lock(&mu_);
  if (!broken_.ok()) return broken_;
  if (mine != nullptr) slots_[rank] = *mine;
  const int64_t generation = generation_;
  if (++arrived_ == size_) {
    arrived_ = 0;
    ++generation_;
    published_ = slots_;
    cv_.SignalAll();
  } else {
    while (generation_ == generation && broken_.ok()) {
      if (cv_.WaitWithDeadline(&mu_, deadline) && generation_ == generation && broken_.ok()) {
        return Break(absl::DeadlineExceededError(absl::StrCat(
            "in-process group of ", size_, ": rank ", rank, " waited past its deadline for ",
            size_ - arrived_, " peer(s); a peer is stuck or gone")));
      }
    }
    if (generation_ == generation) return broken_;
  }
  if (all != nullptr) *all = published_;
  if (sequence != nullptr) *sequence = generation;
  return absl::OkStatus();
}

absl::Status Rendezvous::Post(int src, int dst, std::string bytes) {
  absl::MutexLock lock(&mu_);
  if (!broken_.ok()) return broken_;
  mail_[{src, dst}].push_back(std::move(bytes));
  cv_.SignalAll();
  return absl::OkStatus();
}

absl::Status Rendezvous::Take(int src, int dst, absl::Time deadline, std::string* bytes) {
  absl::MutexLock lock(&mu_);
  std::deque<std::string>& box = mail_[{src, dst}];
  while (box.empty() && broken_.ok()) {
    if (cv_.WaitWithDeadline(&mu_, deadline) && box.empty() && broken_.ok()) {
      return Break(absl::DeadlineExceededError(
          absl::StrCat("in-process group of ", size_, ": rank ", dst,
                       " waited past its deadline for a ", "message from rank ", src)));
    }
  }
  if (!broken_.ok()) return broken_;
  *bytes = std::move(box.front());
  box.pop_front();
  return absl::OkStatus();
}

std::shared_ptr<Rendezvous> Rendezvous::Child(const std::string& key, int size) {
  absl::MutexLock lock(&mu_);
  ChildEntry& entry = children_[key];
  if (entry.group == nullptr) entry.group = std::make_shared<Rendezvous>(size);
  std::shared_ptr<Rendezvous> group = entry.group;
  if (++entry.taken == size) children_.erase(key);
  return group;
}

}  // namespace q3vl::parallel::internal
