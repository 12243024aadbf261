#include "core/cpu/compute_threads.h"

#include <omp.h>

#include <filesystem>
#include <fstream>
#include <thread>

#include "gtest/gtest.h"

namespace q3vl {
namespace {

namespace fs = std::filesystem;

class CgroupTree : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = fs::temp_directory_path() / ("q3vl_cgroup_" + std::to_string(::getpid()) + "_" +
                                         ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(root_);
    fs::create_directories(root_);
  }
  void TearDown() override { fs::remove_all(root_); }

  void Write(const std::string& relative, const std::string& text) {
    const fs::path path = root_ / relative;
    fs::create_directories(path.parent_path());
    std::ofstream(path) << text;
  }
  CpuCount Count(const std::string& proc_cgroup) {
    Write("proc_self_cgroup", proc_cgroup);
    return CountCpus((root_ / "fs").string(), (root_ / "proc_self_cgroup").string());
  }
  int Affinity() { return CountCpus("/nonexistent", "/nonexistent").affinity; }

  fs::path root_;
};

TEST(ParseCgroupV2CpuMax, QuotaOverPeriod) {
  EXPECT_DOUBLE_EQ(*ParseCgroupV2CpuMax("200000 100000\n"), 2.0);
  EXPECT_DOUBLE_EQ(*ParseCgroupV2CpuMax("50000 100000"), 0.5);
  EXPECT_FALSE(ParseCgroupV2CpuMax("max 100000").has_value());
  EXPECT_FALSE(ParseCgroupV2CpuMax("").has_value());
  EXPECT_FALSE(ParseCgroupV2CpuMax("abc 100000").has_value());
  EXPECT_FALSE(ParseCgroupV2CpuMax("100000 0").has_value());
}

TEST_F(CgroupTree, NoCgroupFilesMeansTheAffinityMask) {
  const CpuCount count = Count("0::/\n");
  EXPECT_FALSE(count.quota.has_value());
  EXPECT_EQ(count.usable, count.affinity);
  EXPECT_GE(count.affinity, 1);
}

TEST_F(CgroupTree, V2TakesTheTightestQuotaOnThePath) {
  Write("fs/cgroup.controllers", "cpu memory\n");
  Write("fs/kubepods/cpu.max", "150000 100000\n");
  Write("fs/kubepods/pod1/cpu.max", "max 100000\n");
  Write("fs/kubepods/pod1/ctr/cpu.max", "300000 100000\n");
  const CpuCount count = Count("0::/kubepods/pod1/ctr\n");
  ASSERT_TRUE(count.quota.has_value());
  EXPECT_DOUBLE_EQ(*count.quota, 1.5);
  EXPECT_EQ(count.usable, std::min(Affinity(), 2));
}

TEST_F(CgroupTree, V2PathOutsideTheNamespaceFallsBackToTheMount) {
  Write("fs/cgroup.controllers", "cpu\n");
  Write("fs/cpu.max", "100000 100000\n");
  const CpuCount count = Count("0::/docker/abcdef\n");
  ASSERT_TRUE(count.quota.has_value());
  EXPECT_DOUBLE_EQ(*count.quota, 1.0);
  EXPECT_EQ(count.usable, 1);
}

TEST_F(CgroupTree, V1CfsQuota) {
  Write("fs/cpu,cpuacct/kubepods/pod1/cpu.cfs_quota_us", "50000\n");
  Write("fs/cpu,cpuacct/kubepods/pod1/cpu.cfs_period_us", "100000\n");
  Write("fs/cpu,cpuacct/cpu.cfs_quota_us", "-1\n");
  Write("fs/cpu,cpuacct/cpu.cfs_period_us", "100000\n");
  const CpuCount count = Count("12:memory:/kubepods/pod1\n4:cpu,cpuacct:/kubepods/pod1\n0::/\n");
  ASSERT_TRUE(count.quota.has_value());
  EXPECT_DOUBLE_EQ(*count.quota, 0.5);
  EXPECT_EQ(count.usable, 1);  // never below one
}

TEST_F(CgroupTree, V1UnlimitedQuotaIsNone) {
  Write("fs/cpu/cpu.cfs_quota_us", "-1\n");
  Write("fs/cpu/cpu.cfs_period_us", "100000\n");
  const CpuCount count = Count("3:cpu:/\n");
  EXPECT_FALSE(count.quota.has_value());
  EXPECT_EQ(count.usable, count.affinity);
}

TEST(ComputeThreads, OtherThreadsAdoptTheChoice) {
  const int before = omp_get_max_threads();
  SetComputeThreads(1);
  EXPECT_EQ(ComputeThreads(), 1);
  EXPECT_EQ(omp_get_max_threads(), 1);
  int adopted = -1;
  std::thread([&] {
    AdoptComputeThreads();
    adopted = omp_get_max_threads();
  }).join();
  EXPECT_EQ(adopted, 1);
  SetComputeThreads(before);
}

}  // namespace
}  // namespace q3vl
