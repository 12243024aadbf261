#include "launcher/mesh.h"

#include <omp.h>

#include <algorithm>
#include <cstdlib>
#include <iostream>
#include <thread>

#include "absl/strings/str_cat.h"
#include "core/status_macros.h"

namespace q3vl::launcher {

namespace {

// Ranks sharing a machine share its cores: without this, every rank's OpenMP team takes all of
// them and oversubscribed ranks spin against each other (20-300x slower on 2 cores, 4 ranks).
// OMP_NUM_THREADS, when set, wins.
void SplitCoresAmongLocalRanks() {
  if (std::getenv("OMP_NUM_THREADS") != nullptr) return;
  const char* local = std::getenv("OMPI_COMM_WORLD_LOCAL_SIZE");
  const int local_ranks = local ? std::max(1, std::atoi(local)) : 1;
  const int cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  omp_set_num_threads(std::max(1, cores / local_ranks));
}

}  // namespace

absl::StatusOr<std::unique_ptr<MeshRun>> MeshRun::Start(const std::string& mesh,
                                                        const parallel::DataPlaneFactory& data_plane) {
  SplitCoresAmongLocalRanks();
  Q3VL_ASSIGN_OR_RETURN(parallel::ParallelConfig config, parallel::ParallelConfig::FromString(mesh));
  std::unique_ptr<MeshRun> run(new MeshRun());
  Q3VL_ASSIGN_OR_RETURN(run->mpi_, parallel::MpiRuntime::Init(nullptr, nullptr));
  Q3VL_ASSIGN_OR_RETURN(std::unique_ptr<parallel::Communicator> world, parallel::CreateMpiWorld());
  run->world_ = std::move(world);
  if (run->world_->size() != config.world_size()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--mesh ", config.ToString(), " needs ", config.world_size(), " ranks, this job has ",
        run->world_->size(), ": run it as mpirun -np ", config.world_size(), " q3vl ..."));
  }
  Q3VL_ASSIGN_OR_RETURN(parallel::Topology topology,
                        parallel::Topology::Create(config, run->world_->size(), run->world_->rank()));
  run->topology_.emplace(std::move(topology));
  Q3VL_ASSIGN_OR_RETURN(parallel::CommGroups groups, parallel::CommGroups::Create(*run->topology_, run->world_, data_plane));
  run->groups_.emplace(std::move(groups));
  return run;
}

MeshRun::~MeshRun() {
  groups_.reset();
  world_.reset();
}

absl::Status MeshRun::Agree(const absl::Status& status) {
  auto codes = parallel::AllGatherValue(*world_, static_cast<int64_t>(status.code()));
  if (!codes.ok()) {
    std::cerr << "[rank " << rank() << "] lost a peer: " << codes.status().message() << std::endl;
    parallel::MpiRuntime::Abort(1);
  }
  int first_failed = -1;
  for (size_t r = 0; r < codes->size(); ++r) {
    if ((*codes)[r] != 0 && first_failed < 0) first_failed = static_cast<int>(r);
  }
  if (first_failed < 0) return absl::OkStatus();
  // The first failed rank speaks for all that failed the same way (a bad mesh fails everywhere).
  if (!status.ok() && (rank() == first_failed || (*codes)[first_failed] != static_cast<int64_t>(status.code()))) {
    std::cerr << "[rank " << rank() << "] " << status.message() << std::endl;
  }
  return absl::AbortedError(absl::StrCat("rank ", first_failed, " failed (its error is above)"));
}

}  // namespace q3vl::launcher
