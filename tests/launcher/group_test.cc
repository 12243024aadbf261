// The pure part of `q3vl group`: the LWS environment, pod names, ranks per pod, the ssh
// configurations, the hostfile and mpirun's command line. The processes themselves (sshd,
// mpirun over ssh between network namespaces) are tested by tests/k8s/lws_group_test.mjs.
#include "launcher/group.h"

#include <map>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace q3vl::launcher {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

absl::StatusOr<GroupEnv> FromMap(const std::map<std::string, std::string>& vars) {
  return GroupEnvFrom([&](const char* name) -> const char* {
    auto it = vars.find(name);
    return it == vars.end() ? nullptr : it->second.c_str();
  });
}

TEST(GroupEnvTest, ReadsTheThreeLwsVariables) {
  auto env = FromMap({{"LWS_LEADER_ADDRESS", "q3vl-replica-1.q3vl-replica.default"},
                      {"LWS_GROUP_SIZE", "4"},
                      {"LWS_WORKER_INDEX", "2"}});
  ASSERT_TRUE(env.ok()) << env.status();
  EXPECT_EQ(env->leader_address, "q3vl-replica-1.q3vl-replica.default");
  EXPECT_EQ(env->size, 4);
  EXPECT_EQ(env->worker_index, 2);
  EXPECT_FALSE(env->leader());
}

TEST(GroupEnvTest, NamesTheMissingOrMalformedVariable) {
  auto missing = FromMap({{"LWS_GROUP_SIZE", "2"}, {"LWS_WORKER_INDEX", "0"}});
  ASSERT_FALSE(missing.ok());
  EXPECT_THAT(missing.status().message(), HasSubstr("LWS_LEADER_ADDRESS is not set"));

  auto no_size = FromMap({{"LWS_LEADER_ADDRESS", "a-0.a"}, {"LWS_WORKER_INDEX", "0"}});
  ASSERT_FALSE(no_size.ok());
  EXPECT_THAT(no_size.status().message(), HasSubstr("LWS_GROUP_SIZE is not set"));

  auto bad = FromMap({{"LWS_LEADER_ADDRESS", "a-0.a"}, {"LWS_GROUP_SIZE", "two"}, {"LWS_WORKER_INDEX", "0"}});
  ASSERT_FALSE(bad.ok());
  EXPECT_THAT(bad.status().message(), HasSubstr("LWS_GROUP_SIZE=\"two\" is not an integer >= 1"));

  auto zero = FromMap({{"LWS_LEADER_ADDRESS", "a-0.a"}, {"LWS_GROUP_SIZE", "0"}, {"LWS_WORKER_INDEX", "0"}});
  EXPECT_FALSE(zero.ok());

  auto beyond = FromMap({{"LWS_LEADER_ADDRESS", "a-0.a"}, {"LWS_GROUP_SIZE", "2"}, {"LWS_WORKER_INDEX", "2"}});
  ASSERT_FALSE(beyond.ok());
  EXPECT_THAT(beyond.status().message(), HasSubstr("LWS_WORKER_INDEX=2 is not below LWS_GROUP_SIZE=2"));
}

TEST(GroupPodNamesTest, WorkersAreTheLeadersNameWithTheirIndex) {
  auto names = GroupPodNames({.leader_address = "q3vl-replica-3.q3vl-replica.serving.svc.cluster.local",
                              .size = 3,
                              .worker_index = 0});
  ASSERT_TRUE(names.ok()) << names.status();
  EXPECT_THAT(*names, ElementsAre("q3vl-replica-3.q3vl-replica.serving.svc.cluster.local",
                                  "q3vl-replica-3-1.q3vl-replica.serving.svc.cluster.local",
                                  "q3vl-replica-3-2.q3vl-replica.serving.svc.cluster.local"));
}

TEST(GroupPodNamesTest, ABareLeaderNameAndAGroupOfOne) {
  auto names = GroupPodNames({.leader_address = "lws-0", .size = 2, .worker_index = 1});
  ASSERT_TRUE(names.ok()) << names.status();
  EXPECT_THAT(*names, ElementsAre("lws-0", "lws-0-1"));
  // A group of one needs no names but the leader's, whatever its shape.
  auto one = GroupPodNames({.leader_address = "10.0.0.7", .size = 1, .worker_index = 0});
  ASSERT_TRUE(one.ok());
  EXPECT_THAT(*one, ElementsAre("10.0.0.7"));
}

TEST(GroupPodNamesTest, RejectsAnAddressThatIsNoLeaderName) {
  for (const char* address : {"10.0.0.7", "leader.svc", "-3.svc", "leader-x.svc"}) {
    auto names = GroupPodNames({.leader_address = address, .size = 2, .worker_index = 0});
    ASSERT_FALSE(names.ok()) << address;
    EXPECT_THAT(names.status().message(), HasSubstr("is not a LeaderWorkerSet leader's name")) << address;
  }
}

TEST(RanksPerPodTest, TheMeshDividedOverThePods) {
  auto r = RanksPerPod({"serve", "--model", "/m", "--mesh", "tp=8,ep=16"}, 2);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(*r, 8);
  auto eq = RanksPerPod({"serve", "--mesh=vision=1,tp=3,ep=3", "--model", "/m"}, 2);
  ASSERT_TRUE(eq.ok()) << eq.status();
  EXPECT_EQ(*eq, 2);
  auto single = RanksPerPod({"serve", "--model", "/m"}, 1);
  ASSERT_TRUE(single.ok());
  EXPECT_EQ(*single, 1);
}

TEST(RanksPerPodTest, SaysWhatDoesNotFit) {
  auto odd = RanksPerPod({"serve", "--mesh", "tp=2,ep=2,vision=1"}, 2);
  ASSERT_FALSE(odd.ok());
  EXPECT_THAT(odd.status().message(), HasSubstr("has 3 ranks, which do not divide over the group's 2 pods"));
  auto far = RanksPerPod({"serve", "--mesh", "vision=2,tp=2"}, 4);
  ASSERT_FALSE(far.ok());
  EXPECT_THAT(far.status().message(), HasSubstr("its leader is rank 2, which would run on a worker pod"));
  auto none = RanksPerPod({"serve", "--model", "/m"}, 2);
  ASSERT_FALSE(none.ok());
  EXPECT_THAT(none.status().message(), HasSubstr("no --mesh"));
  auto bad = RanksPerPod({"serve", "--mesh", "tp=3,ep=2"}, 2);
  ASSERT_FALSE(bad.ok());
  EXPECT_THAT(bad.status().message(), HasSubstr("--mesh"));
}

TEST(SshConfigTest, TheServerTakesOnlyTheGroupsKey) {
  const std::string config = SshdConfig({.port = 2022, .host_key = "/run/k", .authorized_keys = "/etc/q3vl/ssh/authorized_keys"});
  EXPECT_THAT(config, HasSubstr("\nPort 2022\n"));
  EXPECT_THAT(config, HasSubstr("\nHostKey /run/k\n"));
  EXPECT_THAT(config, HasSubstr("\nAuthorizedKeysFile /etc/q3vl/ssh/authorized_keys\n"));
  EXPECT_THAT(config, HasSubstr("\nPasswordAuthentication no\n"));
  EXPECT_THAT(config, HasSubstr("\nAllowTcpForwarding no\n"));
}

TEST(SshConfigTest, TheClientNeverPrompts) {
  const std::string config = SshClientConfig({.port = 2022, .identity = "/tmp/g/id"});
  EXPECT_THAT(config, HasSubstr("\n  Port 2022\n"));
  EXPECT_THAT(config, HasSubstr("\n  IdentityFile /tmp/g/id\n"));
  EXPECT_THAT(config, HasSubstr("\n  BatchMode yes\n"));
  EXPECT_THAT(config, HasSubstr("\n  StrictHostKeyChecking no\n"));
}

TEST(HostfileTest, LeaderFirstWithItsSlots) {
  EXPECT_EQ(Hostfile({"10.1.0.4", "10.1.0.9"}, 8), "10.1.0.4 slots=8\n10.1.0.9 slots=8\n");
}

TEST(ForwardedEnvTest, OnlyTheRuntimesVariables) {
  EXPECT_THAT(ForwardedEnv({"PATH=/usr/bin", "NCCL_SOCKET_IFNAME=eth0", "LWS_GROUP_SIZE=2", "HOME=/root",
                            "LD_LIBRARY_PATH=/usr/local/cuda/lib64", "Q3VL_API_KEY=k", "CUDA_VISIBLE_DEVICES=0,1",
                            "OMP_NUM_THREADS=4", "NCCL_SOCKET_IFNAME=eth0", "LD_PRELOAD=x", "=odd",
                            "OMPI_MCA_btl_vader_single_copy_mechanism=none", "OMPI_COMM_WORLD_SIZE=2"}),
              ElementsAre("CUDA_VISIBLE_DEVICES", "LD_LIBRARY_PATH", "LWS_GROUP_SIZE", "NCCL_SOCKET_IFNAME",
                          "OMPI_MCA_btl_vader_single_copy_mechanism", "OMP_NUM_THREADS", "Q3VL_API_KEY"));
}

TEST(MpirunArgvTest, HostfileSshLauncherRanksThenTheCommand) {
  const std::vector<std::string> argv =
      MpirunArgv({.mpirun = "mpirun",
                  .ssh = "/usr/bin/ssh",
                  .ssh_config = "/tmp/g/ssh_config",
                  .hostfile = "/tmp/g/hostfile",
                  .ranks = 16,
                  .ranks_per_pod = 8,
                  .as_root = true,
                  .forward_env = {"NCCL_SOCKET_IFNAME"},
                  .program = "/usr/local/bin/q3vl",
                  .command = {"serve", "--mesh", "tp=8,ep=16"}});
  EXPECT_THAT(argv, ElementsAre("mpirun", "--hostfile", "/tmp/g/hostfile", "-np", "16", "--map-by", "ppr:8:node",
                                "--bind-to", "none", "--mca",
                                "plm_rsh_agent", "/usr/bin/ssh", "--mca", "plm_rsh_args", "-F /tmp/g/ssh_config",
                                "--allow-run-as-root", "-x", "NCCL_SOCKET_IFNAME", "/usr/local/bin/q3vl", "serve",
                                "--mesh", "tp=8,ep=16"));
}

TEST(MpirunArgvTest, OnePodNeedsNoSsh) {
  const std::vector<std::string> argv = MpirunArgv({.hostfile = "/tmp/g/hostfile",
                                                    .ranks = 8,
                                                    .ranks_per_pod = 8,
                                                    .program = "/usr/local/bin/q3vl",
                                                    .command = {"serve"}});
  EXPECT_THAT(argv, ElementsAre("mpirun", "--hostfile", "/tmp/g/hostfile", "-np", "8", "--map-by", "ppr:8:node",
                                "--bind-to", "none", "/usr/local/bin/q3vl", "serve"));
}

}  // namespace
}  // namespace q3vl::launcher
