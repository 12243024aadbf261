#include "parallel/mailbox.h"

#include <deque>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"

namespace q3vl::parallel {

absl::Status Mailbox::CheckPeer(int peer) const {
  if (peer < 0 || peer >= size_ || peer == rank_) {
    return absl::InvalidArgumentError(absl::StrCat("mailbox of rank ", rank_, " of ", size_, ": no peer ", peer));
  }
  return absl::OkStatus();
}

namespace {

struct Boxes {
  explicit Boxes(int size) : queues(size) {}
  absl::Mutex mu;
  std::vector<std::deque<MailMessage>> queues ABSL_GUARDED_BY(mu);
};

class InProcessMailbox final : public Mailbox {
 public:
  InProcessMailbox(int rank, int size, std::shared_ptr<Boxes> boxes)
      : Mailbox(rank, size), boxes_(std::move(boxes)) {}

  absl::Status Post(int peer, std::string bytes) override {
    if (absl::Status s = CheckPeer(peer); !s.ok()) return s;
    absl::MutexLock lock(&boxes_->mu);
    boxes_->queues[peer].push_back({.from = rank(), .bytes = std::move(bytes)});
    return absl::OkStatus();
  }

  absl::StatusOr<std::optional<MailMessage>> Poll() override {
    absl::MutexLock lock(&boxes_->mu);
    std::deque<MailMessage>& mine = boxes_->queues[rank()];
    if (mine.empty()) return std::optional<MailMessage>();
    MailMessage m = std::move(mine.front());
    mine.pop_front();
    return std::optional<MailMessage>(std::move(m));
  }

  absl::Status Flush(absl::Duration) override { return absl::OkStatus(); }  // posting delivers

 private:
  std::shared_ptr<Boxes> boxes_;
};

}  // namespace

std::vector<std::unique_ptr<Mailbox>> CreateInProcessMailboxes(int size) {
  auto boxes = std::make_shared<Boxes>(size);
  std::vector<std::unique_ptr<Mailbox>> out;
  for (int r = 0; r < size; ++r) out.push_back(std::make_unique<InProcessMailbox>(r, size, boxes));
  return out;
}

}  // namespace q3vl::parallel
