// Picks a data-plane communicator backend by name for the launcher: "mpi" (CPU meshes: the
// MPI host communicator is the data plane too) or "nccl" (GPU meshes). A backend this build
// lacks yields UnimplementedError. Stateless, thread-safe.
#ifndef Q3VL_PARALLEL_COMM_FACTORY_H_
#define Q3VL_PARALLEL_COMM_FACTORY_H_

#include <memory>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "parallel/comm_groups.h"
#include "parallel/communicator.h"

namespace q3vl::parallel {

enum class CommBackend : unsigned char { kMpi, kNccl };

absl::StatusOr<CommBackend> ParseCommBackend(absl::string_view name);
bool CommBackendBuilt(CommBackend backend);

// The data plane over `host` (a group's host communicator; collective over it): kMpi returns
// `host` itself, kNccl bootstraps NCCL over it on the current CUDA device.
absl::StatusOr<std::shared_ptr<Communicator>> CreateDataPlane(CommBackend backend,
                                                              std::shared_ptr<Communicator> host,
                                                              const CommOptions& options);

// CreateDataPlane as a CommGroups factory; UnimplementedError up front for a missing backend.
absl::StatusOr<DataPlaneFactory> DataPlaneFactoryFor(CommBackend backend,
                                                     const CommOptions& options);

}  // namespace q3vl::parallel

#endif  // Q3VL_PARALLEL_COMM_FACTORY_H_
