// q3vl group: one replica over the pods of a LeaderWorkerSet group (launcher/group.h). The
// same command line runs in every pod of the group; LWS_WORKER_INDEX decides the part:
//   leader (0):  waits until each worker's ssh server answers and accepts the group's key,
//                then runs `mpirun --hostfile <the group's pods> ... q3vl COMMAND ...` as its
//                child (passing SIGTERM to the ranks, so a replica drains) and exits with it;
//   worker (>0): makes a host key and becomes the OpenSSH server mpirun reaches it through.
// A group of one pod runs COMMAND under a local mpirun (or alone, for one rank): no ssh.
#include <arpa/inet.h>
#include <dirent.h>
#include <fcntl.h>
#include <netdb.h>
#include <signal.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/file_io.h"
#include "launcher/group.h"
#include "launcher/options.h"

extern char** environ;

namespace q3vl::launcher {
namespace {

constexpr char kName[] = "group";

absl::Status WriteFile(const std::string& path, const std::string& text, mode_t mode) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
  if (fd < 0) return absl::UnavailableError(absl::StrCat("cannot write ", path, ": ", std::strerror(errno)));
  if (absl::Status st = WriteAll(fd, text, path); !st.ok()) {
    ::close(fd);
    return st;
  }
  ::fchmod(fd, mode);
  ::close(fd);
  return absl::OkStatus();
}

// Replaces this process with argv. Returns only on failure.
absl::Status Exec(const std::vector<std::string>& argv) {
  std::vector<char*> cargv;
  for (const std::string& a : argv) cargv.push_back(const_cast<char*>(a.c_str()));
  cargv.push_back(nullptr);
  std::cout << std::flush;
  std::cerr << std::flush;
  ::execvp(cargv[0], cargv.data());
  return absl::UnavailableError(absl::StrCat("cannot run ", argv[0], ": ", std::strerror(errno)));
}

// Runs argv to completion; its stderr (and stdout) returned in `output`.
int RunAndWait(const std::vector<std::string>& argv, std::string* output) {
  int pipefd[2];
  if (::pipe2(pipefd, O_CLOEXEC) != 0) return -1;
  const pid_t pid = ::fork();
  if (pid < 0) return -1;
  if (pid == 0) {
    ::dup2(pipefd[1], 1);
    ::dup2(pipefd[1], 2);
    ::close(0);
    ::open("/dev/null", O_RDONLY);
    std::fprintf(stderr, "%s\n", std::string(Exec(argv).message()).c_str());
    ::_exit(127);
  }
  ::close(pipefd[1]);
  char buffer[4096];
  for (ssize_t n; (n = ::read(pipefd[0], buffer, sizeof buffer)) != 0;) {
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) break;
    output->append(buffer, static_cast<size_t>(n));
  }
  ::close(pipefd[0]);
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}


// Whether process `pid` is a rank of an Open MPI job (mpirun's other children are the ssh
// clients that hold its daemons on the other pods).
bool IsRank(pid_t pid) {
  std::ifstream in(absl::StrCat("/proc/", pid, "/environ"), std::ios::binary);
  for (std::string entry; std::getline(in, entry, '\0');) {
    if (absl::StartsWith(entry, "OMPI_COMM_WORLD_RANK=")) return true;
  }
  return false;
}

// The ranks mpirun (`parent`) runs on this pod: its children that are ranks.
std::vector<pid_t> RanksOf(pid_t parent) {
  std::vector<pid_t> children;
  DIR* proc = ::opendir("/proc");
  if (proc == nullptr) return children;
  while (const dirent* e = ::readdir(proc)) {
    int pid = 0;
    if (!absl::SimpleAtoi(e->d_name, &pid)) continue;
    std::ifstream stat(absl::StrCat("/proc/", pid, "/stat"));
    std::string line;
    if (!std::getline(stat, line)) continue;
    // "pid (comm) state ppid ...": comm may hold spaces and parentheses; ppid follows the last ')'.
    const size_t close = line.rfind(')');
    int ppid = 0;
    if (close != std::string::npos && std::sscanf(line.c_str() + close + 1, " %*c %d", &ppid) == 1 && ppid == parent &&
        IsRank(pid)) {
      children.push_back(pid);
    }
  }
  ::closedir(proc);
  return children;
}

// Runs mpirun as this process's child until it ends; returns its exit code (128 + signal when
// killed). SIGTERM and SIGINT go to mpirun's ranks on this pod, not to mpirun: mpirun would
// kill every rank a second later, while the replica's leader rank drains on SIGTERM (finishes
// what is in flight, bounded by serve's --drain-timeout) and then stops the other ranks itself.
// Before any rank runs, or at a second signal, the signal goes to mpirun (it ends the job).
int RunMpirun(const std::vector<std::string>& argv) {
  sigset_t signals;
  sigemptyset(&signals);
  for (int sig : {SIGTERM, SIGINT, SIGCHLD}) sigaddset(&signals, sig);
  sigset_t previous;
  ::sigprocmask(SIG_BLOCK, &signals, &previous);
  std::cout << std::flush;
  std::cerr << std::flush;
  const pid_t child = ::fork();
  if (child < 0) return Fail(kName, absl::UnavailableError(absl::StrCat("fork: ", std::strerror(errno))));
  if (child == 0) {
    ::sigprocmask(SIG_SETMASK, &previous, nullptr);
    std::fprintf(stderr, "q3vl group: %s\n", std::string(Exec(argv).message()).c_str());
    ::_exit(127);
  }
  int signalled = 0;
  for (;;) {
    siginfo_t info{};
    const int sig = ::sigwaitinfo(&signals, &info);
    if (sig < 0) continue;
    if (sig == SIGCHLD) {
      int status = 0;
      const pid_t done = ::waitpid(child, &status, WNOHANG);
      if (done == child) return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
      continue;
    }
    const std::vector<pid_t> ranks = RanksOf(child);
    if (signalled++ > 0 || ranks.empty()) {
      ::kill(child, sig);
    } else {
      std::cerr << "q3vl group: " << (sig == SIGTERM ? "SIGTERM" : "SIGINT") << ": passed to the " << ranks.size()
                << " rank" << (ranks.size() == 1 ? "" : "s") << " on this pod (the replica drains, then stops)"
                << std::endl;
      for (pid_t rank : ranks) ::kill(rank, sig);
    }
  }
}

// The address `name` resolves to (IPv4 first), numeric, in `address`; `why` says what failed.
bool Resolve(const std::string& name, std::string* address, std::string* why) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* found = nullptr;
  if (const int err = ::getaddrinfo(name.c_str(), nullptr, &hints, &found); err != 0) {
    *why = absl::StrCat("name not resolved: ", ::gai_strerror(err));
    return false;
  }
  const addrinfo* pick = found;
  for (const addrinfo* a = found; a != nullptr; a = a->ai_next) {
    if (a->ai_family == AF_INET) {
      pick = a;
      break;
    }
  }
  char host[INET6_ADDRSTRLEN] = {};
  const int err = ::getnameinfo(pick->ai_addr, pick->ai_addrlen, host, sizeof host, nullptr, 0, NI_NUMERICHOST);
  ::freeaddrinfo(found);
  if (err != 0) {
    *why = absl::StrCat("name not resolved: ", ::gai_strerror(err));
    return false;
  }
  *address = host;
  return true;
}

// Whether a TCP connection to the numeric `address` on `port` opens within `timeout`.
bool Reachable(const std::string& address, int port, std::chrono::milliseconds timeout, std::string* why) {
  addrinfo hints{};
  hints.ai_flags = AI_NUMERICHOST;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* found = nullptr;
  if (const int err = ::getaddrinfo(address.c_str(), std::to_string(port).c_str(), &hints, &found); err != 0) {
    *why = ::gai_strerror(err);
    return false;
  }
  const int fd = ::socket(found->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  int err = fd < 0 ? errno : 0;
  if (fd >= 0 && ::connect(fd, found->ai_addr, found->ai_addrlen) != 0) {
    err = errno;
    if (err == EINPROGRESS) {
      pollfd p{.fd = fd, .events = POLLOUT, .revents = 0};
      err = ETIMEDOUT;
      if (::poll(&p, 1, static_cast<int>(timeout.count())) == 1) {
        socklen_t len = sizeof err;
        ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
      }
    }
  }
  if (fd >= 0) ::close(fd);
  ::freeaddrinfo(found);
  if (err != 0) *why = absl::StrCat(address, ":", port, ": ", std::strerror(err));
  return err == 0;
}


struct Settings {
  std::string ssh_dir;
  int ssh_port = 2222;
  double wait_s = 600;
  std::string run_dir;
  std::string mpirun, ssh, sshd, ssh_keygen;
};

int RunWorker(const GroupEnv& env, const Settings& s) {
  const std::string authorized = s.ssh_dir + "/authorized_keys";
  if (::access(authorized.c_str(), R_OK) != 0) {
    return Fail(kName, absl::NotFoundError(absl::StrCat(
                           "cannot read ", authorized, " (", std::strerror(errno),
                           "): mount the group's ssh Secret there (k8s/README.md, \"Replica groups of several pods\")")));
  }
  const std::string host_key = s.run_dir + "/ssh_host_ed25519_key";
  ::unlink(host_key.c_str());  // a new key at each start (ssh-keygen would ask before overwriting)
  ::unlink((host_key + ".pub").c_str());
  std::string output;
  if (const int rc = RunAndWait({s.ssh_keygen, "-q", "-t", "ed25519", "-N", "", "-C", "q3vl-group", "-f", host_key}, &output);
      rc != 0) {
    return Fail(kName, absl::UnavailableError(absl::StrCat("ssh-keygen failed (exit ", rc, "): ", output)));
  }
  const std::string config = s.run_dir + "/sshd_config";
  if (auto st = WriteFile(config, SshdConfig({.port = s.ssh_port, .host_key = host_key, .authorized_keys = authorized}), 0600);
      !st.ok()) {
    return Fail(kName, st);
  }
  // As root, sshd wants its privilege-separation directory (made at boot on a full system).
  if (::geteuid() == 0) ::mkdir("/run/sshd", 0755);
  std::cerr << "q3vl group: worker " << env.worker_index << " of " << env.size << " in " << env.leader_address
            << "'s group: ssh server on port " << s.ssh_port << " for the leader's mpirun" << std::endl;
  return Fail(kName, Exec({s.sshd, "-D", "-e", "-f", config}));
}

int RunLeader(const GroupEnv& env, const Settings& s, int ranks_per_pod, const std::vector<std::string>& command) {
  MpirunSettings mpirun{.mpirun = s.mpirun,
                        .ssh = s.ssh,
                        .ranks = ranks_per_pod * env.size,
                        .ranks_per_pod = ranks_per_pod,
                        .as_root = ::geteuid() == 0,
                        .program = SelfExecutable(),
                        .command = command};
  std::vector<std::string> environment;
  for (char** e = environ; *e != nullptr; ++e) environment.emplace_back(*e);
  mpirun.forward_env = ForwardedEnv(environment);

  if (env.size == 1) {
    if (ranks_per_pod == 1) {
      std::vector<std::string> argv = {mpirun.program};
      argv.insert(argv.end(), command.begin(), command.end());
      return Fail(kName, Exec(argv));
    }
    // One pod: a local mpirun, as `mpirun -np R q3vl ...` on one machine.
    mpirun.hostfile = s.run_dir + "/hostfile";
    if (auto st = WriteFile(mpirun.hostfile, Hostfile({"localhost"}, ranks_per_pod), 0644); !st.ok()) return Fail(kName, st);
    return RunMpirun(MpirunArgv(mpirun));
  }

  auto names = GroupPodNames(env);
  if (!names.ok()) return UsageError(kName, std::string(names.status().message()));
  const std::string key_source = s.ssh_dir + "/ssh-privatekey";
  auto key = ReadFile(key_source);
  if (!key.ok()) {
    return Fail(kName, absl::NotFoundError(absl::StrCat(key.status().message(),
                                                        ": mount the group's ssh Secret there (k8s/README.md, "
                                                        "\"Replica groups of several pods\")")));
  }
  // ssh refuses a private key others may read; the Secret's file mode is the kubelet's, so
  // the leader uses a copy only it can read.
  const std::string identity = s.run_dir + "/id";
  if (auto st = WriteFile(identity, *key, 0600); !st.ok()) return Fail(kName, st);
  mpirun.ssh_config = s.run_dir + "/ssh_config";
  if (auto st = WriteFile(mpirun.ssh_config, SshClientConfig({.port = s.ssh_port, .identity = identity}), 0600);
      !st.ok()) {
    return Fail(kName, st);
  }

  // LWS's headless Service publishes the pods' names before they are ready.
  std::cerr << "q3vl group: leader of " << env.size << " pods, " << ranks_per_pod << " rank"
            << (ranks_per_pod == 1 ? "" : "s") << " each; waiting for the workers' ssh servers (up to " << s.wait_s
            << " s)" << std::endl;
  const auto start = std::chrono::steady_clock::now();
  const auto deadline = start + std::chrono::milliseconds(static_cast<int64_t>(s.wait_s * 1000));
  auto last_report = start;
  std::vector<std::string> addresses(names->size());
  std::vector<std::string> why(names->size());
  std::vector<bool> ready(names->size(), false);
  for (;;) {
    int pending = 0;
    for (size_t i = 0; i < names->size(); ++i) {
      if (ready[i]) continue;
      // Every pod's name must resolve (the leader's to this pod: mpirun starts its ranks here
      // without ssh); on the workers the ssh server must accept connections.
      ready[i] = Resolve((*names)[i], &addresses[i], &why[i]) &&
                 (i == 0 || Reachable(addresses[i], s.ssh_port, std::chrono::seconds(2), &why[i]));
      pending += ready[i] ? 0 : 1;
    }
    if (pending == 0) break;
    const auto now = std::chrono::steady_clock::now();
    std::vector<std::string> waiting;
    for (size_t i = 0; i < names->size(); ++i) {
      if (!ready[i]) waiting.push_back(absl::StrCat((*names)[i], " (", why[i], ")"));
    }
    if (now >= deadline) {
      return Fail(kName, absl::DeadlineExceededError(absl::StrCat("after ", s.wait_s, " s, ", pending, " of ",
                                                                  env.size, " pods are not reachable: ",
                                                                  absl::StrJoin(waiting, ", "))));
    }
    if (now - last_report >= std::chrono::seconds(10)) {
      last_report = now;
      std::cerr << "q3vl group: waiting for " << pending << " of " << env.size << " pods ("
                << std::chrono::duration_cast<std::chrono::seconds>(now - start).count()
                << " s): " << absl::StrJoin(waiting, ", ") << std::endl;
    }
    std::this_thread::sleep_for(std::chrono::seconds(1));
  }
  // The key must open each worker: a wrong key fails here with ssh's own words, not later as
  // mpirun's "unable to reliably start one or more daemons".
  for (size_t i = 1; i < addresses.size(); ++i) {
    std::string output;
    if (const int rc = RunAndWait({s.ssh, "-F", mpirun.ssh_config, addresses[i], "true"}, &output); rc != 0) {
      return Fail(kName, absl::PermissionDeniedError(absl::StrCat("ssh to ", (*names)[i], " (", addresses[i],
                                                                  ") failed (exit ", rc, "): ", output)));
    }
  }
  mpirun.hostfile = s.run_dir + "/hostfile";
  if (auto st = WriteFile(mpirun.hostfile, Hostfile(addresses, ranks_per_pod), 0644); !st.ok()) return Fail(kName, st);
  std::cerr << "q3vl group: starting " << mpirun.ranks << " ranks on " << absl::StrJoin(addresses, ", ")
            << std::endl;
  return RunMpirun(MpirunArgv(mpirun));
}

}  // namespace

int GroupCommand(const Args& all_args) {
  // q3vl group [options] -- COMMAND ...: the options end at "--".
  Args args;
  std::vector<std::string> command;
  bool in_command = false;
  for (const std::string& a : all_args) {
    if (!in_command && a == "--") {
      in_command = true;
      continue;
    }
    (in_command ? command : args).push_back(a);
  }
  po::options_description options("options");
  options.add_options()
      ("ssh-dir", po::value<std::string>()->default_value("/etc/q3vl/ssh"),
       "the group's ssh Secret: ssh-privatekey (read by the leader) and authorized_keys (by the workers)")
      ("ssh-port", po::value<int>()->default_value(2222), "the workers' ssh server port")
      ("wait", po::value<double>()->default_value(600), "leader: seconds to wait for every worker's ssh server")
      ("run-dir", po::value<std::string>(), "where the configuration files go (default: a new directory under $TMPDIR or /tmp)")
      ("mpirun", po::value<std::string>()->default_value("mpirun"), "Open MPI's mpirun")
      ("ssh", po::value<std::string>()->default_value("ssh"), "the ssh client mpirun launches with")
      ("sshd", po::value<std::string>()->default_value("/usr/sbin/sshd"), "the OpenSSH server (absolute path)")
      ("ssh-keygen", po::value<std::string>()->default_value("ssh-keygen"), "makes a worker's host key");
  po::positional_options_description positional;
  auto parsed = ParseArgs(
      kName,
      "[options] -- COMMAND [ARGS...]\n\n"
      "Runs one q3vl replica over the pods of a LeaderWorkerSet group: give every pod of the group the\n"
      "same command line. LWS_LEADER_ADDRESS, LWS_GROUP_SIZE and LWS_WORKER_INDEX (set by LWS) say\n"
      "which pod this is. The leader waits for the workers, then runs\n"
      "  mpirun --hostfile <the group's pods> -np <the mesh's ranks> q3vl COMMAND ARGS...\n"
      "over ssh; each worker runs the OpenSSH server mpirun reaches it through. COMMAND is a q3vl\n"
      "command with its --mesh (e.g. serve --model DIR --mesh tp=8,ep=16); the mesh's ranks are\n"
      "spread evenly over the pods, the leader's first.",
      options, positional, args);
  if (std::holds_alternative<int>(parsed)) return std::get<int>(parsed);
  const po::variables_map& vm = std::get<po::variables_map>(parsed);
  if (command.empty()) return UsageError(kName, "no command: give the q3vl command after \"--\" (e.g. -- serve --model DIR --mesh tp=2)");
  if (command[0] == "q3vl") command.erase(command.begin());
  if (command.empty() || command[0].empty() || command[0][0] == '-') {
    return UsageError(kName, "the command after \"--\" must be a q3vl command (serve, run, ...)");
  }

  Settings s{.ssh_dir = vm["ssh-dir"].as<std::string>(),
             .ssh_port = vm["ssh-port"].as<int>(),
             .wait_s = vm["wait"].as<double>(),
             .mpirun = vm["mpirun"].as<std::string>(),
             .ssh = vm["ssh"].as<std::string>(),
             .sshd = vm["sshd"].as<std::string>(),
             .ssh_keygen = vm["ssh-keygen"].as<std::string>()};
  if (s.ssh_port < 1 || s.ssh_port > 65535) return UsageError(kName, "--ssh-port must be in [1, 65535]");
  if (!(s.wait_s >= 0)) return UsageError(kName, "--wait must be >= 0");

  auto env = GroupEnvFrom([](const char* name) { return std::getenv(name); });
  if (!env.ok()) return UsageError(kName, std::string(env.status().message()));
  auto ranks_per_pod = RanksPerPod(command, env->size);
  if (!ranks_per_pod.ok()) return UsageError(kName, std::string(ranks_per_pod.status().message()));

  if (vm.count("run-dir")) {
    s.run_dir = vm["run-dir"].as<std::string>();
    if (::mkdir(s.run_dir.c_str(), 0700) != 0 && errno != EEXIST) {
      return Fail(kName, absl::UnavailableError(absl::StrCat("cannot create ", s.run_dir, ": ", std::strerror(errno))));
    }
  } else {
    const char* tmp = std::getenv("TMPDIR");
    std::string pattern = absl::StrCat(tmp != nullptr && *tmp != '\0' ? tmp : "/tmp", "/q3vl-group-XXXXXX");
    if (::mkdtemp(pattern.data()) == nullptr) {
      return Fail(kName, absl::UnavailableError(absl::StrCat("cannot create ", pattern, ": ", std::strerror(errno))));
    }
    s.run_dir = pattern;
  }
  return env->leader() ? RunLeader(*env, s, *ranks_per_pod, command) : RunWorker(*env, s);
}

}  // namespace q3vl::launcher
