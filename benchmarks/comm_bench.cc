// comm_bench: latency and bandwidth of every collective of a communicator, over message sizes,
// as one JSON object on stdout (rank 0). See README.md in this directory.
//   mpirun --allow-run-as-root --oversubscribe -np 4 comm_bench            # MPI
//   comm_bench --backend inprocess --ranks 4                               # threads
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <iostream>
#include <string>
#include <thread>
#include <vector>

#include "nlohmann/json.hpp"
#include "parallel/inprocess_comm.h"
#include "parallel/mpi/mpi_comm.h"

namespace q3vl::parallel {
namespace {

using Clock = std::chrono::steady_clock;

struct BenchOptions {
  std::string backend = "mpi";
  int ranks = 2;  // in-process only
  int64_t max_bytes = 16 << 20;
  double seconds_per_point = 0.1;  // target timed duration per (collective, size)
};

// One collective: `run` does one call on `bytes`-sized buffers; bus_factor(n) converts
// algorithm bandwidth to bus bandwidth (the nccl-tests convention).
struct Collective {
  std::string name;
  std::function<double(int)> bus_factor;
  std::function<absl::Status(Communicator&, int64_t bytes)> prepare;  // allocates, untimed
  std::function<absl::Status(Communicator&)> run;
};

std::vector<Collective> Collectives() {
  // Buffers live in the closures; `prepare` resizes them for each message size.
  auto in = std::make_shared<Tensor>(), out = std::make_shared<Tensor>();
  auto send = std::make_shared<std::vector<int64_t>>();
  auto alloc = [in, out](DType dtype, int64_t in_elems, int64_t out_elems) {
    *in = Tensor::Empty(dtype, {in_elems});
    *out = Tensor::Empty(dtype, {out_elems});
    return absl::OkStatus();
  };
  const auto ring = [](int n) { return 2.0 * (n - 1) / n; };
  const auto part = [](int n) { return (n - 1.0) / n; };
  const auto one = [](int) { return 1.0; };
  std::vector<Collective> all;
  all.push_back(
      {.name = "all_reduce_f32",
       .bus_factor = ring,
       .prepare = [=](Communicator&, int64_t b) { return alloc(DType::kF32, b / 4, b / 4); },
       .run = [=](Communicator& c) { return c.AllReduce({.in = *in, .out = *in}); }});
  all.push_back(
      {.name = "all_reduce_bf16",
       .bus_factor = ring,
       .prepare = [=](Communicator&, int64_t b) { return alloc(DType::kBF16, b / 2, b / 2); },
       .run = [=](Communicator& c) { return c.AllReduce({.in = *in, .out = *in}); }});
  all.push_back({.name = "all_gather",
                 .bus_factor = part,
                 .prepare =
                     [=](Communicator& c, int64_t b) {
                       return alloc(DType::kF32, b / 4 / c.size(), b / 4 / c.size() * c.size());
                     },
                 .run = [=](Communicator& c) { return c.AllGather({.in = *in, .out = *out}); }});
  all.push_back(
      {.name = "reduce_scatter",
       .bus_factor = part,
       .prepare =
           [=](Communicator& c, int64_t b) {
             return alloc(DType::kF32, b / 4 / c.size() * c.size(), b / 4 / c.size());
           },
       .run = [=](Communicator& c) { return c.ReduceScatter({.in = *in, .out = *out}); }});
  all.push_back({.name = "all_to_all",
                 .bus_factor = part,
                 .prepare =
                     [=](Communicator& c, int64_t b) {
                       const int64_t rows = b / 4 / c.size();
                       send->assign(c.size(), rows);
                       *in = Tensor::Empty(DType::kF32, {rows * c.size(), 1});
                       *out = Tensor::Empty(DType::kF32, {rows * c.size(), 1});
                       return absl::OkStatus();
                     },
                 .run =
                     [=](Communicator& c) {
                       return c.AllToAll(
                           {.in = *in, .send_counts = *send, .out = *out, .recv_counts = *send});
                     }});
  all.push_back({.name = "broadcast",
                 .bus_factor = one,
                 .prepare = [=](Communicator&, int64_t b) { return alloc(DType::kF32, b / 4, 0); },
                 .run = [=](Communicator& c) { return c.Broadcast(*in, 0); }});
  // Pairs (0,1), (2,3), ...: even ranks send then receive; one iteration is a round trip.
  all.push_back(
      {.name = "send_recv",
       .bus_factor = [](int) { return 2.0; },
       .prepare = [=](Communicator&, int64_t b) { return alloc(DType::kF32, b / 4, b / 4); },
       .run = [=](Communicator& c) -> absl::Status {
         const int peer = c.rank() ^ 1;
         if (peer >= c.size()) return absl::OkStatus();
         if (c.rank() % 2 == 0) {
           if (absl::Status s = c.Send(*in, peer); !s.ok()) return s;
           return c.Recv(*out, peer);
         }
         if (absl::Status s = c.Recv(*out, peer); !s.ok()) return s;
         return c.Send(*in, peer);
       }});
  return all;
}

// Slowest rank's time for `iters` calls, in seconds.
absl::StatusOr<double> TimeLoop(Communicator& world, const Collective& c, int iters) {
  if (absl::Status s = world.Barrier(); !s.ok()) return s;
  const auto start = Clock::now();
  for (int i = 0; i < iters; ++i) {
    if (absl::Status s = c.run(world); !s.ok()) return s;
  }
  const int64_t ns =
      std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - start).count();
  auto all = AllGatherValue(world, ns);
  if (!all.ok()) return all.status();
  return *std::max_element(all->begin(), all->end()) * 1e-9;
}

absl::StatusOr<nlohmann::json> RunAll(Communicator& world, const BenchOptions& options) {
  nlohmann::json results = nlohmann::json::object();
  const int n = world.size();
  for (const Collective& c : Collectives()) {
    nlohmann::json points = nlohmann::json::array();
    for (int64_t bytes = 8 * n; bytes <= options.max_bytes; bytes *= 8) {
      if (absl::Status s = c.prepare(world, bytes); !s.ok()) return s;
      auto probe = TimeLoop(world, c, 2);  // warm-up and estimate
      if (!probe.ok()) return probe.status();
      const int iters = std::clamp(
          static_cast<int>(options.seconds_per_point / std::max(*probe / 2, 1e-7)), 3, 2000);
      auto seconds = TimeLoop(world, c, iters);
      if (!seconds.ok()) return seconds.status();
      const double per_call = *seconds / iters;
      const double algbw = bytes / per_call;
      points.push_back({{"bytes", bytes},
                        {"iterations", iters},
                        {"latency_us", per_call * 1e6},
                        {"algbw_bytes_per_s", algbw},
                        {"busbw_bytes_per_s", algbw * c.bus_factor(n)}});
    }
    results[c.name] = points;
  }
  // Barrier latency.
  const Collective barrier{.name = "barrier", .run = [](Communicator& c) { return c.Barrier(); }};
  auto seconds = TimeLoop(world, barrier, 200);
  if (!seconds.ok()) return seconds.status();
  results["barrier"] = {{"latency_us", *seconds / 200 * 1e6}};
  return results;
}

nlohmann::json Report(const BenchOptions& options, int ranks, nlohmann::json results) {
  return {{"benchmark", "comm_bench"},
          {"backend", options.backend},
          {"ranks", ranks},
          {"hardware_threads", std::thread::hardware_concurrency()},
          {"notes",
           "latency_us: slowest rank's mean time per call; busbw = algbw x (2(n-1)/n "
           "all_reduce, (n-1)/n all_gather/reduce_scatter/all_to_all, 1 broadcast, 2 "
           "send_recv round trip); bytes: all-reduce/broadcast/send buffer, total output "
           "of all_gather, total input of reduce_scatter and all_to_all"},
          {"collectives", std::move(results)}};
}

int Main(int argc, char** argv) {
  BenchOptions options;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    auto next = [&]() -> std::string { return i + 1 < argc ? argv[++i] : ""; };
    if (arg == "--backend")
      options.backend = next();
    else if (arg == "--ranks")
      options.ranks = std::atoi(next().c_str());
    else if (arg == "--max-bytes")
      options.max_bytes = std::atoll(next().c_str());
    else if (arg == "--quick")
      options.seconds_per_point = 0.02;
    else {
      std::fprintf(stderr,
                   "usage: [mpirun -np N] comm_bench [--backend mpi|inprocess] "
                   "[--ranks N] [--max-bytes B] [--quick]\n");
      return 2;
    }
  }
  if (options.backend == "inprocess") {
    nlohmann::json report;
    absl::Status failure;
    RunInProcessRanks(options.ranks, {.timeout = absl::Seconds(60)}, [&](Communicator& world) {
      auto results = RunAll(world, options);
      if (!results.ok())
        failure = results.status();
      else if (world.rank() == 0)
        report = Report(options, world.size(), *results);
    });
    if (!failure.ok()) {
      std::fprintf(stderr, "comm_bench: %s\n", failure.ToString().c_str());
      return 1;
    }
    std::cout << report.dump(2) << std::endl;
    return 0;
  }
  if (options.backend != "mpi") {
    std::fprintf(stderr, "comm_bench: unknown backend '%s'\n", options.backend.c_str());
    return 2;
  }
  auto runtime = MpiRuntime::Init(&argc, &argv);
  if (!runtime.ok()) return 1;
  auto world = CreateMpiWorld({.timeout = absl::Seconds(60)});
  if (!world.ok()) MpiRuntime::Abort(1);
  auto results = RunAll(**world, options);
  if (!results.ok()) {
    std::fprintf(stderr, "comm_bench: %s\n", results.status().ToString().c_str());
    MpiRuntime::Abort(1);
  }
  if ((*world)->rank() == 0)
    std::cout << Report(options, (*world)->size(), *results).dump(2) << std::endl;
  world->reset();
  return 0;
}

}  // namespace
}  // namespace q3vl::parallel

int main(int argc, char** argv) { return q3vl::parallel::Main(argc, argv); }
