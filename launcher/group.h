// A replica over several pods: one group of a Kubernetes LeaderWorkerSet (LWS) runs one mpirun
// job, the same job `mpirun --hostfile` runs on machines. The leader pod (LWS_WORKER_INDEX 0)
// starts mpirun with a hostfile of the group's pods and Open MPI's ssh launcher; every worker
// pod runs an OpenSSH server, through which mpirun starts its daemon (orted) and ranks there.
// The ranks then meet as under any mpirun (MPI over TCP, NCCL bootstrapped over MPI).
//
// This file is the pure part of `q3vl group` (launcher/group_command.cc): the group read from
// the LWS environment, the pods' addresses, the sshd and ssh configurations and the mpirun
// command line. Nothing here touches the network or the file system.
#ifndef Q3VL_LAUNCHER_GROUP_H_
#define Q3VL_LAUNCHER_GROUP_H_

#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace q3vl::launcher {

// The variables LWS sets in every pod of a group.
struct GroupEnv {
  std::string leader_address;  // LWS_LEADER_ADDRESS: the leader pod's DNS name
  int size = 1;                // LWS_GROUP_SIZE: pods in the group, leader included
  int worker_index = 0;        // LWS_WORKER_INDEX: 0 on the leader, 1..size-1 on the workers

  bool leader() const { return worker_index == 0; }
};

// Reads the group from `getenv` (std::getenv in the command). InvalidArgument naming the
// variable when one is missing or malformed.
absl::StatusOr<GroupEnv> GroupEnvFrom(const std::function<const char*(const char*)>& getenv);

// The DNS names of the group's pods, leader first. LWS names a group's leader pod NAME-G and
// its workers NAME-G-I, all under the LWS's headless Service, so the worker I of the leader
// "NAME-G.SUBDOMAIN..." is "NAME-G-I.SUBDOMAIN...". InvalidArgument when the leader address has
// no such shape (an IP address, say).
absl::StatusOr<std::vector<std::string>> GroupPodNames(const GroupEnv& env);

// Ranks per pod: the mesh's ranks (the command's --mesh) divided over the pods. Fails with a
// message giving the sizes when they do not divide.
absl::StatusOr<int> RanksPerPod(const std::vector<std::string>& command, int pods);

// The worker's OpenSSH server: key-only logins with the group's key, no forwarding, in the
// foreground. Paths are absolute.
struct SshdSettings {
  int port = 2222;
  std::string host_key;         // this pod's host key (made at start)
  std::string authorized_keys;  // the group's public key(s)
};
std::string SshdConfig(const SshdSettings& settings);

// The leader's ssh client configuration for mpirun's launcher: the group's key, the workers'
// port, batch mode (never a prompt), and no known_hosts (workers make a new host key at each
// start; the client authenticates with the group's key, which only the group's pods hold).
struct SshSettings {
  int port = 2222;
  std::string identity;  // the group's private key
  int connect_timeout_s = 10;
};
std::string SshClientConfig(const SshSettings& settings);

// mpirun's hostfile: one line per pod, `ADDRESS slots=R`, leader first.
std::string Hostfile(const std::vector<std::string>& addresses, int ranks_per_pod);

// The names of the environment variables the ranks on other pods must see as the leader
// does (mpirun -x): NCCL_*, CUDA_*, Q3VL_*, OMP_*, OPENBLAS_*, LWS_*, OMPI_MCA_* and
// LD_LIBRARY_PATH (ranks on a worker start in an ssh session, without the pod's env), from
// `environ`-style "NAME=VALUE" entries, sorted.
std::vector<std::string> ForwardedEnv(const std::vector<std::string>& environment);

struct MpirunSettings {
  std::string mpirun = "mpirun";
  std::string ssh = "ssh";
  std::string ssh_config;  // the file SshClientConfig was written to; "" for a group of one pod
  std::string hostfile;    // the file Hostfile was written to
  int ranks = 1;           // pods x ranks per pod
  int ranks_per_pod = 1;
  bool as_root = false;    // adds --allow-run-as-root
  std::vector<std::string> forward_env;  // names, for -x
  std::string program;                   // this q3vl binary (absolute path)
  std::vector<std::string> command;      // the q3vl command and its arguments
};
// mpirun's argv (argv[0] included).
std::vector<std::string> MpirunArgv(const MpirunSettings& settings);

}  // namespace q3vl::launcher

#endif  // Q3VL_LAUNCHER_GROUP_H_
