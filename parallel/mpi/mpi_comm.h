// The MPI communicator (OpenMPI): the host control plane everywhere and the CPU data plane.
// MpiRuntime owns MPI_Init/MPI_Finalize (one per process, created first, destroyed last);
// communicators are per rank and used by one thread at a time (MPI_THREAD_SERIALIZED).
// Never hangs on a lost peer: every data call is a nonblocking MPI operation polled against a
// deadline (CommOptions::timeout) with MPI_ERRORS_RETURN; see parallel/README.md.
#ifndef Q3VL_PARALLEL_MPI_MPI_COMM_H_
#define Q3VL_PARALLEL_MPI_MPI_COMM_H_

#include <memory>

#include "absl/status/statusor.h"
#include "parallel/communicator.h"
#include "parallel/mailbox.h"

namespace q3vl::parallel {

class MpiRuntime {
 public:
  // Initialises MPI (MPI_THREAD_SERIALIZED) and makes MPI errors return codes instead of
  // aborting. A process started without mpirun runs as a world of one rank.
  static absl::StatusOr<std::unique_ptr<MpiRuntime>> Init(int* argc, char*** argv);
  // MPI_Finalize. REQUIRES: every MPI communicator destroyed, no rank broken (else Abort).
  ~MpiRuntime();
  MpiRuntime(const MpiRuntime&) = delete;
  MpiRuntime& operator=(const MpiRuntime&) = delete;

  int world_rank() const { return world_rank_; }
  int world_size() const { return world_size_; }

  // MPI_Abort: mpirun ends every rank of the job with a non-zero status. The way out for a
  // rank whose communicator returned an error (finalizing would wait for the lost peer).
  [[noreturn]] static void Abort(int exit_code);

 private:
  MpiRuntime(int rank, int size) : world_rank_(rank), world_size_(size) {}
  int world_rank_;
  int world_size_;
};

// A communicator over every rank of the job: a duplicate of MPI_COMM_WORLD with
// MPI_ERRORS_RETURN. REQUIRES: a live MpiRuntime.
absl::StatusOr<std::unique_ptr<Communicator>> CreateMpiWorld(const CommOptions& options = {});

// Collective over `comm` (an MPI communicator from this file): a Mailbox over its ranks, on a
// duplicate of it. A message being received waits at most `timeout` for its bytes.
absl::StatusOr<std::unique_ptr<Mailbox>> CreateMpiMailbox(Communicator& comm,
                                                          absl::Duration timeout = absl::Minutes(5));

}  // namespace q3vl::parallel

#endif  // Q3VL_PARALLEL_MPI_MPI_COMM_H_
