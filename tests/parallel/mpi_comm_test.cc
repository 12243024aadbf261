// The conformance suite over the MPI communicator, one process per rank under mpirun
// (ctest runs it with -np 2 and -np 4). A custom main initialises MPI; only rank 0 prints the
// GoogleTest report, other ranks print just their failures (prefixed "[rank r]"), and the exit
// status is non-zero on every rank if any rank failed.
#include "parallel/mpi/mpi_comm.h"

#include <cstdio>

#include "gtest/gtest.h"
#include "tests/parallel/communicator_conformance.h"

namespace q3vl::parallel::testing {
namespace {

Communicator* g_world = nullptr;  // set by main for the test's lifetime

class MpiHarness final : public CommHarness {
 public:
  int size() const override { return g_world->size(); }
  void Run(const std::function<void(Communicator&)>& body) override { body(*g_world); }
};

INSTANTIATE_TEST_SUITE_P(Mpi, CommConformanceTest,
                         ::testing::Values(ConformanceParam{
                             .name = "world",
                             .make = [] { return std::make_unique<MpiHarness>(); }}),
                         ParamName);

// Prints failed assertions of a rank other than 0 (whose default printer is removed).
class FailurePrinter final : public ::testing::EmptyTestEventListener {
 public:
  explicit FailurePrinter(int rank) : rank_(rank) {}
  void OnTestPartResult(const ::testing::TestPartResult& result) override {
    if (!result.failed()) return;
    std::fprintf(stderr, "[rank %d] %s:%d: %s\n", rank_,
                 result.file_name() ? result.file_name() : "?", result.line_number(),
                 result.summary());
  }

 private:
  int rank_;
};

}  // namespace
}  // namespace q3vl::parallel::testing

int main(int argc, char** argv) {
  namespace qp = q3vl::parallel;
  auto runtime = qp::MpiRuntime::Init(&argc, &argv);
  if (!runtime.ok()) {
    std::fprintf(stderr, "mpi_comm_test: %s\n", std::string(runtime.status().message()).c_str());
    return 2;
  }
  const int rank = (*runtime)->world_rank();
  ::testing::InitGoogleTest(&argc, argv);
  if (rank != 0) {
    ::testing::TestEventListeners& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
    listeners.Append(new qp::testing::FailurePrinter(rank));
  }
  auto world = qp::CreateMpiWorld({.timeout = absl::Seconds(20)});
  if (!world.ok()) {
    std::fprintf(stderr, "mpi_comm_test: %s\n", std::string(world.status().message()).c_str());
    qp::MpiRuntime::Abort(2);
  }
  qp::testing::g_world = world->get();
  const int failed = RUN_ALL_TESTS() != 0 ? 1 : 0;
  auto failures = qp::AllGatherValue(**world, failed);
  if (!failures.ok()) {
    std::fprintf(stderr, "[rank %d] could not agree on the result: %s\n", rank,
                 std::string(failures.status().message()).c_str());
    qp::MpiRuntime::Abort(3);
  }
  int failed_ranks = 0;
  for (int64_t f : *failures) failed_ranks += static_cast<int>(f);
  if (rank == 0 && failed_ranks > 0) {
    std::fprintf(stderr, "mpi_comm_test: %d of %d ranks failed\n", failed_ranks,
                 (*runtime)->world_size());
  }
  qp::testing::g_world = nullptr;
  world->reset();
  runtime->reset();  // MPI_Finalize
  return failed_ranks > 0 ? 1 : 0;
}
