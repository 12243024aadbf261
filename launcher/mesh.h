// A distributed run of a q3vl command under mpirun: MPI started, the world communicator, the
// Topology of --mesh, this rank's compute backend and its groups. On a CPU backend each group
// is one MPI communicator; on a CUDA backend each group pairs MPI (control plane: tokens,
// counts, headers) with NCCL over the rank's GPU (data plane: activations), the GPU being
// local rank % visible devices. The replica leader (the first stage-0 rank, after the
// vision ranks) alone writes files and prints results. Owned by the command; one thread.
#ifndef Q3VL_LAUNCHER_MESH_H_
#define Q3VL_LAUNCHER_MESH_H_

#include <memory>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "core/backend.h"
#include "model/generator.h"
#include "model/qwen3_vl.h"
#include "parallel/comm_groups.h"
#include "parallel/communicator.h"
#include "parallel/mpi/mpi_comm.h"
#include "parallel/topology.h"

namespace q3vl::launcher {

// Chooses and sets (SetComputeThreads) this process's compute threads and returns the count:
// `requested` when > 0 (--threads); else OMP_NUM_THREADS when set; else the CPUs this process
// may use (affinity mask capped by a cgroup quota, core/cpu/compute_threads.h) divided among
// the job's ranks on this machine (mpirun's OMPI_COMM_WORLD_LOCAL_SIZE), at least 1.
int ConfigureComputeThreads(int requested);

// Under mpirun (OMPI_COMM_WORLD_SIZE > 1) a command given no --mesh runs one single-rank
// replica per rank: returns "dp=N" and says so once on stderr. Without mpirun: "".
std::string DefaultMeshUnderMpirun(const char* command);
// Whether this process is the first rank of its mpirun job (or runs without mpirun): the rank
// that reports an error every rank finds alike (a bad --mesh), so it is printed once.
bool FirstRankOfJob();

class MeshRun;

// A command's model: its backend (the mesh's, or one of its own without a mesh) and the loaded
// weights, with how long loading took.
struct CommandModel {
  std::unique_ptr<Backend> own_backend;  // null under a mesh
  std::unique_ptr<model::Qwen3VL> model;
  double load_seconds = 0.0;
};
// Loads `model_dir` for `command` on this rank. The leader (or the only rank) says on stderr
// what it loads ("q3vl COMMAND: loading DIR (mesh M, backend B, T threads per rank)... S s").
// Under a mesh every rank agrees on the outcome (MeshRun::Agree), so an error on any rank is
// an error on all.
absl::StatusOr<CommandModel> LoadCommandModel(const char* command, const std::string& model_dir, MeshRun* mesh,
                                              BackendKind backend, const std::string& mesh_text, int threads);

class MeshRun {
 public:
  // Starts MPI, creates the backend of `backend` and builds the mesh (first choosing the compute
  // threads, ConfigureComputeThreads(0), unless the command has). InvalidArgument when the
  // world size is not the mesh's (the message gives the mpirun -np to use). `wrap` (optional)
  // is applied to each group's data-plane communicator (benchmarks meter the traffic so).
  static absl::StatusOr<std::unique_ptr<MeshRun>> Start(const std::string& mesh, BackendKind backend,
                                                        const parallel::DataPlaneFactory& wrap = nullptr);
  ~MeshRun();

  // The job leader, replica 0's leader (its first stage-0 rank): it writes files and prints.
  int leader_rank() const { return topology_->config().vision; }
  bool leader() const { return world_->rank() == leader_rank(); }
  int replica() const { return topology_->coords().replica; }
  int num_replicas() const { return topology_->config().dp; }
  int rank() const { return world_->rank(); }
  parallel::Communicator& world() { return *world_; }
  const parallel::Topology& topology() const { return *topology_; }
  model::ModelParallel parallel() const { return {.topology = &*topology_, .groups = &*groups_}; }
  // The host communicator of this rank's replica (every rank of it, vision ranks first).
  parallel::Communicator* replica_group() const { return groups_->group("replica").host.get(); }
  // This rank's compute backend (made before the groups: NCCL binds to its device).
  Backend& backend() { return *backend_; }

  // Collective over the world: the leader's `request` (ids, sampling, images and videos with
  // their pixels) replaces every other rank's, so media are decoded once, by the leader.
  absl::Status BroadcastRequest(model::GenerationRequest& request);

  // Collective: OK iff `status` is OK on every rank. A failed rank prints its own error (with
  // its rank) to stderr; every rank then returns an error, so no rank waits on a dead peer.
  absl::Status Agree(const absl::Status& status);

 private:
  MeshRun() = default;

  std::unique_ptr<parallel::MpiRuntime> mpi_;  // destroyed last
  std::shared_ptr<parallel::Communicator> world_;
  std::unique_ptr<Backend> backend_;
  std::optional<parallel::Topology> topology_;
  std::optional<parallel::CommGroups> groups_;
};

}  // namespace q3vl::launcher

#endif  // Q3VL_LAUNCHER_MESH_H_
