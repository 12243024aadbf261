#include "launcher/mesh.h"

#include <omp.h>

#include <algorithm>
#include <cstdlib>
#include <iostream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "core/cpu/compute_threads.h"
#include "core/status_macros.h"
#include "parallel/comm_factory.h"
#include "nlohmann/json.hpp"

namespace q3vl::launcher {

namespace {

// This process's index among the job's ranks on its machine (OpenMPI's mpirun says; 0 when
// started otherwise).
int LocalRank() {
  const char* local = std::getenv("OMPI_COMM_WORLD_LOCAL_RANK");
  return local ? std::max(0, std::atoi(local)) : 0;
}

}  // namespace

bool FirstRankOfJob() {
  const char* rank = std::getenv("OMPI_COMM_WORLD_RANK");
  return rank == nullptr || std::atoi(rank) == 0;
}

std::string DefaultMeshUnderMpirun(const char* command) {
  const char* size = std::getenv("OMPI_COMM_WORLD_SIZE");
  if (size == nullptr || std::atoi(size) <= 1) return "";
  const std::string mesh = absl::StrCat("dp=", std::atoi(size));
  if (FirstRankOfJob()) {
    std::cerr << "q3vl " << command << ": no --mesh under mpirun -np " << size << ": running " << size
              << " single-rank replicas (--mesh " << mesh << ")" << std::endl;
  }
  return mesh;
}

int ConfigureComputeThreads(int requested) {
  int threads = requested;
  if (threads <= 0 && std::getenv("OMP_NUM_THREADS") != nullptr) threads = omp_get_max_threads();
  if (threads <= 0) {
    const char* local = std::getenv("OMPI_COMM_WORLD_LOCAL_SIZE");
    const int local_ranks = local ? std::max(1, std::atoi(local)) : 1;
    threads = std::max(1, CountCpus().usable / local_ranks);
  }
  SetComputeThreads(threads);
  return threads;
}

absl::StatusOr<std::unique_ptr<MeshRun>> MeshRun::Start(const std::string& mesh, BackendKind backend,
                                                        const parallel::DataPlaneFactory& wrap) {
  if (ComputeThreads() == 0) ConfigureComputeThreads(0);
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
  // Every rank learns whether every rank has its backend (a rank without a GPU, say) before
  // the groups are built, so none waits in a Split for a peer that gave up.
  absl::StatusOr<std::unique_ptr<Backend>> made = CreateBackend(backend, LocalRank());
  Q3VL_ASSIGN_OR_RETURN(std::vector<int64_t> codes,
                        parallel::AllGatherValue(*run->world_, static_cast<int64_t>(made.status().code())));
  if (!made.ok()) return made.status();
  for (size_t r = 0; r < codes.size(); ++r) {
    if (codes[r] != 0) return absl::AbortedError(absl::StrCat("rank ", r, " could not create its backend"));
  }
  run->backend_ = *std::move(made);
  parallel::DataPlaneFactory nccl;  // null: MPI carries the data too
  if (run->backend_->device() != Device::kCpu) {
    Q3VL_ASSIGN_OR_RETURN(nccl, parallel::DataPlaneFactoryFor(parallel::CommBackend::kNccl, {}));
  }
  parallel::DataPlaneFactory data_plane;
  if (nccl || wrap) {
    data_plane = [nccl, wrap](std::shared_ptr<parallel::Communicator> host)
        -> absl::StatusOr<std::shared_ptr<parallel::Communicator>> {
      std::shared_ptr<parallel::Communicator> plane = std::move(host);
      if (nccl) {
        Q3VL_ASSIGN_OR_RETURN(plane, nccl(std::move(plane)));
      }
      if (wrap) {
        Q3VL_ASSIGN_OR_RETURN(plane, wrap(std::move(plane)));
      }
      return plane;
    };
  }
  Q3VL_ASSIGN_OR_RETURN(parallel::CommGroups groups, parallel::CommGroups::Create(*run->topology_, run->world_, data_plane));
  run->groups_.emplace(std::move(groups));
  return run;
}

MeshRun::~MeshRun() {
  groups_.reset();  // NCCL communicators before the backend's device state
  backend_.reset();
  world_.reset();
}

namespace {

nlohmann::json VisionMeta(const model::VisionInput& in) {
  nlohmann::json grids = nlohmann::json::array();
  for (const model::GridThw& g : in.grids) grids.push_back({g[0], g[1], g[2]});
  return {{"grids", grids},
          {"rows", in.grids.empty() ? 0 : in.pixel_values.dim(0)},
          {"cols", in.grids.empty() ? 0 : in.pixel_values.dim(1)}};
}

}  // namespace

absl::Status MeshRun::BroadcastRequest(model::GenerationRequest& request) {
  const int root = leader_rank();
  std::string meta;
  if (leader()) {
    const model::SamplingParams& s = request.sampling;
    meta = nlohmann::json{{"ids", request.input_ids},
                          {"sampling", {{"temperature", s.temperature}, {"top_k", s.top_k},
                                        {"top_p", s.top_p}, {"seed", s.seed},
                                        {"max_new_tokens", s.max_new_tokens}, {"stop", s.stop_tokens}}},
                          {"images", VisionMeta(request.images)},
                          {"videos", VisionMeta(request.videos)}}
               .dump();
  }
  Q3VL_RETURN_IF_ERROR(parallel::BroadcastString(*world_, meta, root));
  if (!leader()) {
    const nlohmann::json m = nlohmann::json::parse(meta);
    request.input_ids = m["ids"].get<std::vector<int64_t>>();
    const nlohmann::json& s = m["sampling"];
    request.sampling = {.temperature = s["temperature"].get<float>(), .top_k = s["top_k"].get<int64_t>(),
                        .top_p = s["top_p"].get<float>(), .seed = s["seed"].get<uint64_t>(),
                        .max_new_tokens = s["max_new_tokens"].get<int64_t>(),
                        .stop_tokens = s["stop"].get<std::vector<int64_t>>()};
    for (auto [in, key] : {std::pair{&request.images, "images"}, std::pair{&request.videos, "videos"}}) {
      in->grids.clear();
      for (const auto& g : m[key]["grids"]) in->grids.push_back({g[0].get<int64_t>(), g[1].get<int64_t>(), g[2].get<int64_t>()});
      in->pixel_values = in->grids.empty() ? Tensor()
                                           : Tensor::Empty(DType::kF32, {m[key]["rows"].get<int64_t>(),
                                                                         m[key]["cols"].get<int64_t>()});
    }
  }
  for (model::VisionInput* in : {&request.images, &request.videos}) {
    if (!in->grids.empty()) Q3VL_RETURN_IF_ERROR(world_->Broadcast(in->pixel_values, root));
  }
  return absl::OkStatus();
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
  // The leader reports its own failure itself (the command prints it). Otherwise the first
  // failed rank speaks for all that failed the same way (a bad mesh fails everywhere).
  if (!status.ok() && leader()) return status;
  if ((*codes)[leader_rank()] != 0) return absl::AbortedError("the leader failed");
  if (!status.ok() && (rank() == first_failed || (*codes)[first_failed] != static_cast<int64_t>(status.code()))) {
    std::cerr << "[rank " << rank() << "] " << status.message() << std::endl;
  }
  return absl::AbortedError(absl::StrCat("rank ", first_failed, " failed (its error is above)"));
}

absl::StatusOr<CommandModel> LoadCommandModel(const char* command, const std::string& model_dir, MeshRun* mesh,
                                              BackendKind backend, const std::string& mesh_text, int threads) {
  CommandModel out;
  if (mesh == nullptr) {
    auto created = CreateBackend(backend);
    if (!created.ok()) return created.status();
    out.own_backend = *std::move(created);
  }
  const bool leader = mesh == nullptr || mesh->leader();
  if (leader) {
    std::cerr << "q3vl " << command << ": loading " << model_dir << " (mesh "
              << (mesh_text.empty() ? "single rank" : mesh_text) << ", backend " << (backend == BackendKind::kCuda ? "cuda" : "cpu") << ", "
              << threads << " threads per rank)..." << std::flush;
  }
  const absl::Time start = absl::Now();
  auto model = model::Qwen3VL::Load(model_dir, mesh ? mesh->backend() : *out.own_backend,
                                    mesh ? mesh->parallel() : model::ModelParallel{});
  const absl::Status status = mesh ? mesh->Agree(model.status()) : model.status();
  out.load_seconds = absl::ToDoubleSeconds(absl::Now() - start);
  if (leader) {
    if (status.ok()) {
      std::cerr << absl::StrFormat(" %.1f s", out.load_seconds) << std::endl;
    } else {
      std::cerr << std::endl;
    }
  }
  if (!status.ok()) return status;
  out.model = *std::move(model);
  return out;
}

}  // namespace q3vl::launcher
