// The replica executor with fake runners on an in-process world whose calls time out fast: an
// idle engine's heartbeats keep its followers waiting past the communicator timeout, and the
// replica still serves the next request.
#include "cluster/engine/executor.h"

#include <thread>

#include "cluster/engine/engine.h"
#include "gtest/gtest.h"
#include "parallel/inprocess_comm.h"

namespace q3vl::cluster {
namespace {

// One token per sampled step (always 7); counts what it executed.
class CountingRunner : public model::StepRunner {
 public:
  absl::Status Validate(const model::RunnerRequest&) const override { return absl::OkStatus(); }
  absl::Status Add(int64_t, model::RunnerRequest) override { return absl::OkStatus(); }
  void Remove(int64_t) override {}
  absl::StatusOr<model::StepOutput> Execute(const model::StepPlan& plan) override {
    ++steps;
    model::StepOutput out;
    for (const model::StepSequence& s : plan.seqs) {
      model::SequenceOutput o;
      if (s.sample) o.token = 7;
      out.seqs.push_back(o);
    }
    return out;
  }
  int steps = 0;
};

TEST(ReplicaExecutor, IdleHeartbeatsKeepFollowersPastTheTimeout) {
  constexpr absl::Duration kTimeout = absl::Milliseconds(400);
  std::vector<absl::Status> follower(2);
  std::vector<int> steps(2, 0);
  RequestOutput result;
  parallel::RunInProcessRanks(2, {.timeout = kTimeout}, [&](parallel::Communicator& world) {
    CountingRunner runner;
    if (world.rank() != 0) {
      follower[world.rank()] = FollowReplica(world, 0, runner);
      steps[world.rank()] = runner.steps;
      return;
    }
    ReplicaExecutor executor(world, runner);
    Engine engine(executor, {.scheduler = {.max_num_batched_tokens = 16, .max_num_seqs = 4, .page_size = 4,
                                           .num_pages = 16, .max_model_len = 64},
                             .heartbeat = absl::Milliseconds(50)});
    engine.Start();
    std::this_thread::sleep_for(std::chrono::milliseconds(1200));  // idle for three timeouts
    EngineRequest r{.id = "after_idle", .ignore_eos = true};
    r.input.input_ids = {1, 2, 3};
    r.input.sampling.max_new_tokens = 3;
    auto stream = engine.Submit(std::move(r));
    ASSERT_TRUE(stream.ok()) << stream.status();
    result = Collect(**stream);
    engine.Shutdown();
    steps[0] = runner.steps;
    ASSERT_TRUE(executor.Stop().ok());
  });
  EXPECT_TRUE(follower[1].ok()) << follower[1];
  EXPECT_EQ(result.finish, FinishReason::kLength) << result.error;
  EXPECT_EQ(result.token_ids, (std::vector<int64_t>{7, 7, 7}));
  EXPECT_EQ(steps[1], steps[0]);
}

}  // namespace
}  // namespace q3vl::cluster
