// The communicator conformance suite: one set of tests every Communicator implementation must
// pass. A test binary instantiates CommConformanceTest with harnesses that run a test body on
// every rank of a world (threads for in-process, this process under mpirun for MPI):
//   INSTANTIATE_TEST_SUITE_P(InProcess, CommConformanceTest, ::testing::Values(...), ParamName);
// Bodies make the same collective calls on every rank, so a failure on one rank cannot leave
// the others waiting past the communicator timeout.
#ifndef Q3VL_TESTS_PARALLEL_COMMUNICATOR_CONFORMANCE_H_
#define Q3VL_TESTS_PARALLEL_COMMUNICATOR_CONFORMANCE_H_

#include <functional>
#include <memory>
#include <ostream>
#include <string>

#include "gtest/gtest.h"
#include "parallel/communicator.h"

namespace q3vl::parallel::testing {

class CommHarness {
 public:
  virtual ~CommHarness() = default;
  virtual int size() const = 0;
  // Runs `body(world)` for the ranks this process hosts and returns when they are done.
  virtual void Run(const std::function<void(Communicator& world)>& body) = 0;
};

struct ConformanceParam {
  std::string name;
  std::function<std::unique_ptr<CommHarness>()> make;
};

inline void PrintTo(const ConformanceParam& param, std::ostream* os) { *os << param.name; }

inline std::string ParamName(const ::testing::TestParamInfo<ConformanceParam>& info) {
  return info.param.name;
}

class CommConformanceTest : public ::testing::TestWithParam<ConformanceParam> {
 protected:
  void SetUp() override { harness_ = GetParam().make(); }
  int world_size() const { return harness_->size(); }
  void RunRanks(const std::function<void(Communicator& world)>& body) { harness_->Run(body); }

 private:
  std::unique_ptr<CommHarness> harness_;
};

}  // namespace q3vl::parallel::testing

#endif  // Q3VL_TESTS_PARALLEL_COMMUNICATOR_CONFORMANCE_H_
