#include "launcher/group.h"

#include <algorithm>
#include <climits>
#include <cstdlib>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "parallel/topology.h"

namespace q3vl::launcher {
namespace {

absl::StatusOr<int> IntVariable(const std::function<const char*(const char*)>& getenv, const char* name,
                                int min) {
  const char* value = getenv(name);
  if (value == nullptr || *value == '\0') {
    return absl::InvalidArgumentError(absl::StrCat(
        name, " is not set: q3vl group runs in a pod of a LeaderWorkerSet group, which sets "
              "LWS_LEADER_ADDRESS, LWS_GROUP_SIZE and LWS_WORKER_INDEX"));
  }
  int parsed = 0;
  if (!absl::SimpleAtoi(value, &parsed) || parsed < min) {
    return absl::InvalidArgumentError(absl::StrCat(name, "=\"", value, "\" is not an integer >= ", min));
  }
  return parsed;
}

}  // namespace

absl::StatusOr<GroupEnv> GroupEnvFrom(const std::function<const char*(const char*)>& getenv) {
  GroupEnv env;
  const char* leader = getenv("LWS_LEADER_ADDRESS");
  if (leader == nullptr || *leader == '\0') {
    return absl::InvalidArgumentError(
        "LWS_LEADER_ADDRESS is not set: q3vl group runs in a pod of a LeaderWorkerSet group, which "
        "sets LWS_LEADER_ADDRESS, LWS_GROUP_SIZE and LWS_WORKER_INDEX");
  }
  env.leader_address = leader;
  auto size = IntVariable(getenv, "LWS_GROUP_SIZE", 1);
  if (!size.ok()) return size.status();
  auto index = IntVariable(getenv, "LWS_WORKER_INDEX", 0);
  if (!index.ok()) return index.status();
  if (*index >= *size) {
    return absl::InvalidArgumentError(
        absl::StrCat("LWS_WORKER_INDEX=", *index, " is not below LWS_GROUP_SIZE=", *size));
  }
  env.size = *size;
  env.worker_index = *index;
  return env;
}

absl::StatusOr<std::vector<std::string>> GroupPodNames(const GroupEnv& env) {
  std::vector<std::string> names = {env.leader_address};
  if (env.size == 1) return names;
  const size_t dot = env.leader_address.find('.');
  const std::string first = env.leader_address.substr(0, dot);
  const std::string rest = dot == std::string::npos ? "" : env.leader_address.substr(dot);
  // A leader pod is NAME-G: its first label ends in "-<group index>". An IP address has no
  // such label and cannot name the workers.
  const size_t dash = first.rfind('-');
  int group = 0;
  if (dash == std::string::npos || dash == 0 || !absl::SimpleAtoi(first.substr(dash + 1), &group) ||
      absl::ascii_isdigit(static_cast<unsigned char>(first[0]))) {
    return absl::InvalidArgumentError(absl::StrCat(
        "LWS_LEADER_ADDRESS=\"", env.leader_address,
        "\" is not a LeaderWorkerSet leader's name (NAME-GROUP.SERVICE...): the workers' names are "
        "derived from it"));
  }
  for (int i = 1; i < env.size; ++i) names.push_back(absl::StrCat(first, "-", i, rest));
  return names;
}

absl::StatusOr<int> RanksPerPod(const std::vector<std::string>& command, int pods) {
  std::string mesh;
  for (size_t i = 0; i < command.size(); ++i) {
    if (command[i] == "--mesh" && i + 1 < command.size()) mesh = command[i + 1];
    if (absl::StartsWith(command[i], "--mesh=")) mesh = command[i].substr(7);
  }
  if (mesh.empty() && pods > 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the command has no --mesh: give the mesh the group's ranks form (e.g. --mesh tp=", pods,
        " for ", pods, " pods of one rank each)"));
  }
  auto config = parallel::ParallelConfig::FromString(mesh);
  if (!config.ok()) return absl::InvalidArgumentError(absl::StrCat("--mesh: ", config.status().message()));
  const int ranks = config->world_size();
  if (ranks % pods != 0) {
    return absl::InvalidArgumentError(absl::StrCat("the mesh ", config->ToString(), " has ", ranks,
                                                   " ranks, which do not divide over the group's ", pods,
                                                   " pods (LWS_GROUP_SIZE)"));
  }
  const int per_pod = ranks / pods;
  // The replica's leader (the HTTP and gRPC server) is its first rank after the vision ranks:
  // it must run in the leader pod, where the Service and the probes reach it.
  if (config->vision >= per_pod) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the mesh ", config->ToString(), " puts its vision ranks first, so its leader is rank ", config->vision,
        ", which would run on a worker pod (", per_pod, " ranks per pod); use fewer vision ranks or fewer pods"));
  }
  return per_pod;
}

std::string SshdConfig(const SshdSettings& s) {
  return absl::StrCat(
      "# q3vl group: the worker pod's ssh server, through which the leader's mpirun starts its ranks.\n",
      "Port ", s.port, "\n",
      "HostKey ", s.host_key, "\n",
      "AuthorizedKeysFile ", s.authorized_keys, "\n",
      "PubkeyAuthentication yes\n"
      "PasswordAuthentication no\n"
      "KbdInteractiveAuthentication no\n"
      "PermitRootLogin prohibit-password\n"
      // Kubernetes mounts Secrets group- or world-readable (defaultMode): the key files' modes
      // are the kubelet's, not the user's.
      "StrictModes no\n"
      "UsePAM no\n"
      "PidFile none\n"
      "PrintMotd no\n"
      "PrintLastLog no\n"
      "X11Forwarding no\n"
      "AllowTcpForwarding no\n"
      "AllowAgentForwarding no\n"
      "PermitTunnel no\n"
      "ClientAliveInterval 15\n"
      "ClientAliveCountMax 4\n");
}

std::string SshClientConfig(const SshSettings& s) {
  return absl::StrCat(
      "# q3vl group: how the leader's mpirun reaches the worker pods.\n"
      "Host *\n",
      "  Port ", s.port, "\n",
      "  IdentityFile ", s.identity, "\n",
      "  IdentitiesOnly yes\n"
      "  BatchMode yes\n"
      "  StrictHostKeyChecking no\n"
      "  UserKnownHostsFile /dev/null\n"
      "  LogLevel ERROR\n",
      "  ConnectTimeout ", s.connect_timeout_s, "\n",
      "  ServerAliveInterval 15\n"
      "  ServerAliveCountMax 4\n");
}

std::string Hostfile(const std::vector<std::string>& addresses, int ranks_per_pod) {
  std::string out;
  for (const std::string& a : addresses) absl::StrAppend(&out, a, " slots=", ranks_per_pod, "\n");
  return out;
}

std::vector<std::string> ForwardedEnv(const std::vector<std::string>& environment) {
  static constexpr const char* kPrefixes[] = {"NCCL_", "CUDA_", "Q3VL_", "OMP_", "OPENBLAS_", "LWS_", "OMPI_MCA_"};
  std::vector<std::string> names;
  for (const std::string& entry : environment) {
    const size_t eq = entry.find('=');
    if (eq == std::string::npos || eq == 0) continue;
    const std::string name = entry.substr(0, eq);
    bool forward = name == "LD_LIBRARY_PATH";
    for (const char* prefix : kPrefixes) forward = forward || absl::StartsWith(name, prefix);
    if (forward) names.push_back(name);
  }
  std::sort(names.begin(), names.end());
  names.erase(std::unique(names.begin(), names.end()), names.end());
  return names;
}

std::vector<std::string> MpirunArgv(const MpirunSettings& s) {
  std::vector<std::string> argv = {s.mpirun, "--hostfile", s.hostfile, "-np", absl::StrCat(s.ranks),
                                   // Ranks fill the leader's slots first, then each worker's in
                                   // hostfile order: ranks [i*R, (i+1)*R) on pod i.
                                   "--map-by", absl::StrCat("ppr:", s.ranks_per_pod, ":node"),
                                   // The pod's CPU limit bounds the ranks, not core binding.
                                   "--bind-to", "none"};
  if (!s.ssh_config.empty()) {
    for (const std::string& a : {std::string("--mca"), std::string("plm_rsh_agent"), s.ssh, std::string("--mca"),
                                 std::string("plm_rsh_args"), absl::StrCat("-F ", s.ssh_config)}) {
      argv.push_back(a);
    }
  }
  if (s.as_root) argv.push_back("--allow-run-as-root");
  for (const std::string& name : s.forward_env) {
    argv.push_back("-x");
    argv.push_back(name);
  }
  argv.push_back(s.program);
  argv.insert(argv.end(), s.command.begin(), s.command.end());
  return argv;
}

}  // namespace q3vl::launcher
