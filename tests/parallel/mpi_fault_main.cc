// Fault injection under mpirun: after a barrier, rank 1 fails (mode "exit": _exit(7),
// "abort": std::abort(), "stall": sleeps through the collectives while staying alive) and the
// other ranks run all-reduces with a 3 s timeout. A rank whose call fails calls
// MpiRuntime::Abort, so mpirun must exit non-zero within seconds (expect_fast_failure.sh).
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>

#include "parallel/mpi/mpi_comm.h"

int main(int argc, char** argv) {
  namespace qp = q3vl::parallel;
  auto runtime = qp::MpiRuntime::Init(&argc, &argv);
  if (!runtime.ok() || argc != 2) {
    std::fprintf(stderr, "usage: mpirun -np N mpi_fault_test exit|abort|stall\n");
    return 2;
  }
  const std::string mode = argv[1];
  const int rank = (*runtime)->world_rank();
  auto world = qp::CreateMpiWorld({.timeout = absl::Seconds(3)});
  if (!world.ok() || !(*world)->Barrier().ok()) qp::MpiRuntime::Abort(2);
  if (rank == 1) {
    if (mode == "exit") _exit(7);
    if (mode == "abort") std::abort();
    std::this_thread::sleep_for(std::chrono::seconds(120));  // "stall": alive but absent
    return 0;
  }
  q3vl::Tensor x = q3vl::Tensor::Empty(q3vl::DType::kF32, {1 << 16});
  for (int step = 0; step < 100; ++step) {
    const absl::Status status = (*world)->AllReduce({.in = x, .out = x});
    if (!status.ok()) {
      std::fprintf(stderr, "[rank %d] step %d: %s\n", rank, step,
                   std::string(status.message()).c_str());
      qp::MpiRuntime::Abort(4);
    }
  }
  std::fprintf(stderr, "[rank %d] every all-reduce succeeded without rank 1\n", rank);
  world->reset();
  return 0;
}
