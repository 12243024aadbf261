// Mailbox: asynchronous byte messages between the ranks of a group, for control traffic whose
// timing no rank can predict (a batch job's work queue: a replica asks for more requests when
// it has room, the leader answers and collects results). Unlike a Communicator's calls, which
// every member makes in the same order, a Post is matched by whatever Poll the peer runs next.
// Post and Poll never block. Messages between a pair arrive whole and in order. One thread
// uses a mailbox (the same thread rules as the communicator it came from).
// Implementations: in-process (below, for tests) and MPI (mpi/mpi_comm.h, CreateMpiMailbox).
#ifndef Q3VL_PARALLEL_MAILBOX_H_
#define Q3VL_PARALLEL_MAILBOX_H_

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace q3vl::parallel {

struct MailMessage {
  int from = 0;
  std::string bytes;
};

class Mailbox {
 public:
  Mailbox(int rank, int size) : rank_(rank), size_(size) {}
  virtual ~Mailbox() = default;
  Mailbox(const Mailbox&) = delete;
  Mailbox& operator=(const Mailbox&) = delete;

  int rank() const { return rank_; }
  int size() const { return size_; }

  // Queues `bytes` for `peer` (!= rank()). InvalidArgument for a bad peer; Unavailable once the
  // transport failed.
  virtual absl::Status Post(int peer, std::string bytes) = 0;
  // The oldest message that has arrived, or nullopt.
  virtual absl::StatusOr<std::optional<MailMessage>> Poll() = 0;
  // Waits until every posted message has left this rank (the peer may not have polled it),
  // at most `timeout`: DeadlineExceeded when a peer does not take it (dead or stuck).
  virtual absl::Status Flush(absl::Duration timeout) = 0;

 protected:
  absl::Status CheckPeer(int peer) const;

 private:
  int rank_;
  int size_;
};

// `size` connected mailboxes of one process; element r is rank r.
std::vector<std::unique_ptr<Mailbox>> CreateInProcessMailboxes(int size);

}  // namespace q3vl::parallel

#endif  // Q3VL_PARALLEL_MAILBOX_H_
