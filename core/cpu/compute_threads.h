// How many threads compute on this process, and which CPUs it may use.
//
// The model's compute runs on OpenMP teams. libgomp sizes a team from the affinity mask alone,
// so in a container under a CPU quota (docker --cpus, a Kubernetes limit) on a large node it
// starts a thread per node CPU and they fight over the quota; and a team size set with
// omp_set_num_threads applies only to the thread that set it (a std::thread starts from the
// global default). SetComputeThreads records the process's choice; a thread that computes and
// was not started by OpenMP (the engine loop) calls AdoptComputeThreads when it starts.
#ifndef Q3VL_CORE_CPU_COMPUTE_THREADS_H_
#define Q3VL_CORE_CPU_COMPUTE_THREADS_H_

#include <optional>
#include <string>

#include "absl/strings/string_view.h"

namespace q3vl {

struct CpuCount {
  int affinity = 1;                // CPUs in this process's affinity mask
  std::optional<double> quota;     // the tightest cgroup CPU quota over this process, in CPUs
  int usable = 1;                  // min(affinity, ceil(quota)), at least 1
};

// Reads sched_getaffinity and the cgroup quota (v2 cpu.max, else v1 cpu.cfs_quota_us /
// cpu.cfs_period_us) of every cgroup from this process's up to the root. The paths are
// parameters for tests.
CpuCount CountCpus(const std::string& cgroup_root = "/sys/fs/cgroup",
                   const std::string& proc_self_cgroup = "/proc/self/cgroup");

// "200000 100000" -> 2.0; "max 100000" -> nullopt (no limit); malformed -> nullopt.
std::optional<double> ParseCgroupV2CpuMax(absl::string_view text);

// Sets this thread's OpenMP team size and the one AdoptComputeThreads gives other threads.
// REQUIRES: threads >= 1.
void SetComputeThreads(int threads);
// The value set by SetComputeThreads, or 0 when it was never called.
int ComputeThreads();
// Applies SetComputeThreads' value to the calling thread (nothing when it was never called).
void AdoptComputeThreads();

}  // namespace q3vl

#endif  // Q3VL_CORE_CPU_COMPUTE_THREADS_H_
