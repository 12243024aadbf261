#include "parallel/comm_factory.h"

#include "absl/strings/str_cat.h"

#ifdef Q3VL_HAVE_NCCL
#include "parallel/nccl/nccl_comm.h"
#endif

namespace q3vl::parallel {
namespace {

absl::Status NotBuilt() {
  return absl::UnimplementedError(
      "this build has no NCCL communicator (configure with -DQ3VL_CUDA=ON)");
}

}  // namespace

absl::StatusOr<CommBackend> ParseCommBackend(absl::string_view name) {
  if (name == "mpi") return CommBackend::kMpi;
  if (name == "nccl") return CommBackend::kNccl;
  return absl::InvalidArgumentError(
      absl::StrCat("unknown communicator backend '", name, "' (expected mpi or nccl)"));
}

bool CommBackendBuilt(CommBackend backend) {
#ifdef Q3VL_HAVE_NCCL
  return true;
#else
  return backend == CommBackend::kMpi;
#endif
}

absl::StatusOr<std::shared_ptr<Communicator>> CreateDataPlane(CommBackend backend,
                                                              std::shared_ptr<Communicator> host,
                                                              const CommOptions& options) {
  if (!CommBackendBuilt(backend)) {
    return NotBuilt();
  }
  if (backend == CommBackend::kMpi) return host;
#ifdef Q3VL_HAVE_NCCL
  auto comm = CreateNcclCommunicator(std::move(host), {.cuda_device = -1, .comm = options});
  if (!comm.ok()) return comm.status();
  return std::shared_ptr<Communicator>(std::move(comm).value());
#else
  return absl::UnimplementedError("unreachable");
#endif
}

absl::StatusOr<DataPlaneFactory> DataPlaneFactoryFor(CommBackend backend,
                                                     const CommOptions& options) {
  if (!CommBackendBuilt(backend)) {
    return NotBuilt();
  }
  return DataPlaneFactory([backend, options](std::shared_ptr<Communicator> host) {
    return CreateDataPlane(backend, std::move(host), options);
  });
}

}  // namespace q3vl::parallel
