// Runs a golden case's model on a mesh with ranks as threads over the in-process communicator
// (each rank loads only its shards), on the CPU backend or on a simulated device with separate
// data and control planes. Shared by the parallel golden and engine mesh tests.
#ifndef Q3VL_TESTS_MESH_UTIL_H_
#define Q3VL_TESTS_MESH_UTIL_H_

#include <omp.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "core/backend.h"
#include "launcher/eval_case.h"
#include "model/qwen3_vl.h"
#include "parallel/comm_groups.h"
#include "parallel/inprocess_comm.h"
#include "parallel/topology.h"
#include "tests/device_sim_backend.h"
#include "tests/device_sim_comm.h"

namespace q3vl::testing {

// Where a mesh runs: the CPU backend with one communicator per group, or a backend whose
// memory the host may not touch with separate data (device tensors only) and control (host
// values only) planes, as a GPU mesh runs on NCCL and MPI.
enum class Plane { kCpu, kDeviceSim };

// Loads `case_dir` sharded for `mesh` on one thread per rank and calls body(rank, model, golden)
// on each; a load failure is returned as that rank's error. `groups` (optional) is called
// first with the rank's groups.
using RankBody = std::function<void(int, const model::Qwen3VL&, const launcher::GoldenCase&)>;
using GroupsFn = std::function<void(int, const parallel::CommGroups&)>;
inline std::vector<std::string> OnMesh(const std::string& case_dir, const std::string& mesh, const RankBody& body,
                                Plane plane = Plane::kCpu, const GroupsFn& on_groups = nullptr) {
  auto config = parallel::ParallelConfig::FromString(mesh);
  Q3VL_CHECK_OK(config.status());
  const int world_size = config->world_size();
  std::vector<std::string> errors(world_size);
  parallel::RunInProcessRanks(world_size, {}, [&](parallel::Communicator& world) {
    omp_set_num_threads(1);
    std::string& error = errors[world.rank()];
    auto topology = parallel::Topology::Create(*config, world_size, world.rank());
    if (!topology.ok()) return void(error = topology.status().ToString());
    auto groups = parallel::CommGroups::Create(
        *topology, std::shared_ptr<parallel::Communicator>(&world, [](parallel::Communicator*) {}),
        plane == Plane::kDeviceSim ? testing::DeviceSimComm::Factory() : nullptr);
    if (!groups.ok()) return void(error = groups.status().ToString());
    if (on_groups) on_groups(world.rank(), *groups);
    std::unique_ptr<Backend> backend;
    if (plane == Plane::kDeviceSim) {
      backend = std::make_unique<testing::DeviceSimBackend>();
    } else {
      auto cpu = CreateBackend(BackendKind::kCpu);
      Q3VL_CHECK_OK(cpu.status());
      backend = *std::move(cpu);
    }
    auto golden = launcher::ReadGoldenCase(case_dir);
    if (!golden.ok()) return void(error = golden.status().ToString());
    auto model = model::Qwen3VL::Load(case_dir + "/model", *backend, {.topology = &*topology, .groups = &*groups});
    if (!model.ok()) return void(error = model.status().ToString());
    body(world.rank(), **model, *golden);
  });
  return errors;
}

}  // namespace q3vl::testing

#endif  // Q3VL_TESTS_MESH_UTIL_H_
