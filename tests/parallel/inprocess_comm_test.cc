// The conformance suite over the in-process communicator with 1-4 ranks, plus what only a
// shared-memory implementation can check: barrier ordering, stuck peers timing out, and
// ranks that disagree on the collective.
#include "parallel/inprocess_comm.h"

#include <atomic>
#include <chrono>
#include <thread>

#include "gtest/gtest.h"
#include "tests/parallel/communicator_conformance.h"
#include "tests/parallel/conformance_util.h"

namespace q3vl::parallel::testing {
namespace {

class InProcessHarness final : public CommHarness {
 public:
  explicit InProcessHarness(int size) : size_(size) {}
  int size() const override { return size_; }
  void Run(const std::function<void(Communicator&)>& body) override {
    RunInProcessRanks(size_, {.timeout = absl::Seconds(30)}, body);
  }

 private:
  int size_;
};

ConformanceParam Ranks(int n) {
  return {.name = "ranks" + std::to_string(n),
          .make = [n] { return std::make_unique<InProcessHarness>(n); }};
}

INSTANTIATE_TEST_SUITE_P(InProcess, CommConformanceTest,
                         ::testing::Values(Ranks(1), Ranks(2), Ranks(3), Ranks(4)), ParamName);

TEST(InProcessCommTest, BarrierOrdersWritesBeforeReads) {
  std::atomic<int> arrived{0};
  RunInProcessRanks(4, {}, [&](Communicator& world) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5 * world.rank()));
    arrived.fetch_add(1);
    Q3VL_ASSERT_OK(world.Barrier());
    EXPECT_EQ(arrived.load(), 4);
  });
}

TEST(InProcessCommTest, StuckPeerTimesOutInsteadOfHanging) {
  const auto start = std::chrono::steady_clock::now();
  RunInProcessRanks(3, {.timeout = absl::Milliseconds(200)}, [](Communicator& world) {
    Tensor x = Tensor::Empty(DType::kF32, {16});
    if (world.rank() == 2) {
      std::this_thread::sleep_for(std::chrono::milliseconds(600));  // misses the all-reduce
      const absl::Status late = world.AllReduce({.in = x, .out = x});
      EXPECT_EQ(late.code(), absl::StatusCode::kDeadlineExceeded) << late;  // already broken
      return;
    }
    const absl::Status status = world.AllReduce({.in = x, .out = x});
    EXPECT_EQ(status.code(), absl::StatusCode::kDeadlineExceeded) << status;
    EXPECT_FALSE(world.Barrier().ok());  // the group stays broken
  });
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(5));
}

TEST(InProcessCommTest, RecvWithoutSendTimesOut) {
  RunInProcessRanks(2, {.timeout = absl::Milliseconds(100)}, [](Communicator& world) {
    if (world.rank() == 1) return;
    Tensor x = Tensor::Empty(DType::kF32, {4});
    EXPECT_EQ(world.Recv(x, 1).code(), absl::StatusCode::kDeadlineExceeded);
  });
}

TEST(InProcessCommTest, RanksThatDisagreeOnTheCollectiveAllGetAnError) {
  RunInProcessRanks(2, {.timeout = absl::Seconds(5)}, [](Communicator& world) {
    Tensor x = Tensor::Empty(DType::kF32, {4});
    Tensor gathered = Tensor::Empty(DType::kF32, {8});
    const absl::Status status = world.rank() == 0 ? world.AllReduce({.in = x, .out = x})
                                                  : world.AllGather({.in = x, .out = gathered});
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
    EXPECT_NE(status.message().find("disagree"), absl::string_view::npos) << status;
  });
}

TEST(InProcessCommTest, AllToAllCountMismatchIsReportedOnEveryRank) {
  RunInProcessRanks(2, {.timeout = absl::Seconds(5)}, [](Communicator& world) {
    const std::vector<int64_t> send = {1, 1};
    const std::vector<int64_t> recv =
        world.rank() == 0 ? std::vector<int64_t>{1, 2} : std::vector<int64_t>{1, 1};
    Tensor in = Tensor::Empty(DType::kF32, {2, 3});
    Tensor out = Tensor::Empty(DType::kF32, {recv[0] + recv[1], 3});
    const absl::Status status =
        world.AllToAll({.in = in, .send_counts = send, .out = out, .recv_counts = recv});
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
  });
}

}  // namespace
}  // namespace q3vl::parallel::testing
