// The NCCL communicator: the GPU data plane on CUDA tensors, paired with a host communicator
// (MPI) that bootstraps it and carries the control plane. Owns its ncclComm_t and CUDA stream;
// used by one thread at a time. Calls wait for completion against CommOptions::timeout, then
// abort the NCCL communicator (nonblocking init and ncclCommGetAsyncError polling): a lost
// peer becomes an error, not a hang. bf16 sums use NCCL's native bf16 reduction.
#ifndef Q3VL_PARALLEL_NCCL_NCCL_COMM_H_
#define Q3VL_PARALLEL_NCCL_NCCL_COMM_H_

#include <memory>

#include "absl/status/statusor.h"
#include "parallel/communicator.h"

namespace q3vl::parallel {

struct NcclCommOptions {
  int cuda_device = -1;  // CUDA device of this rank; -1: the current device
  CommOptions comm;
};

// A communicator over the ranks of `host` (same ranks, same order). Collective over `host`:
// its rank 0 creates the NCCL unique id and broadcasts it. Split/SubGroup go through `host`
// and bootstrap a new NCCL communicator.
absl::StatusOr<std::unique_ptr<Communicator>> CreateNcclCommunicator(
    std::shared_ptr<Communicator> host, const NcclCommOptions& options = {});

}  // namespace q3vl::parallel

#endif  // Q3VL_PARALLEL_NCCL_NCCL_COMM_H_
