#include "core/cpu/compute_threads.h"

#include <omp.h>
#include <sched.h>

#include <atomic>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "core/check.h"

namespace q3vl {
namespace {

namespace fs = std::filesystem;

std::atomic<int> g_compute_threads{0};

std::optional<std::string> ReadFile(const fs::path& path) {
  std::ifstream in(path);
  if (!in) return std::nullopt;
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

// The v1 quota of one cgroup directory: cfs_quota_us / cfs_period_us, none when -1.
std::optional<double> V1Quota(const fs::path& dir) {
  const auto quota = ReadFile(dir / "cpu.cfs_quota_us"), period = ReadFile(dir / "cpu.cfs_period_us");
  int64_t q = 0, p = 0;
  if (!quota || !period || !absl::SimpleAtoi(absl::StripAsciiWhitespace(*quota), &q) ||
      !absl::SimpleAtoi(absl::StripAsciiWhitespace(*period), &p) || q <= 0 || p <= 0) {
    return std::nullopt;
  }
  return static_cast<double>(q) / static_cast<double>(p);
}

std::optional<double> V2Quota(const fs::path& dir) {
  const auto text = ReadFile(dir / "cpu.max");
  return text ? ParseCgroupV2CpuMax(*text) : std::nullopt;
}

// The tightest quota from `mount`/`path` up to `mount`. A path that does not exist under the
// mount (a container without a cgroup namespace sees its host path) falls back to the mount,
// which is then the container's own cgroup.
std::optional<double> TightestQuota(const fs::path& mount, const std::string& path,
                                    std::optional<double> (*quota_of)(const fs::path&)) {
  fs::path dir = mount / fs::path(path).relative_path();
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) dir = mount;
  std::optional<double> tightest;
  for (fs::path d = dir;; d = d.parent_path()) {
    if (const auto q = quota_of(d); q && (!tightest || *q < *tightest)) tightest = q;
    if (d == mount || d == d.parent_path() || d.string().size() <= mount.string().size()) break;
  }
  return tightest;
}

}  // namespace

std::optional<double> ParseCgroupV2CpuMax(absl::string_view text) {
  const std::vector<absl::string_view> parts =
      absl::StrSplit(absl::StripAsciiWhitespace(text), ' ', absl::SkipEmpty());
  int64_t quota = 0, period = 0;
  if (parts.size() != 2 || parts[0] == "max" || !absl::SimpleAtoi(parts[0], &quota) ||
      !absl::SimpleAtoi(parts[1], &period) || quota <= 0 || period <= 0) {
    return std::nullopt;
  }
  return static_cast<double>(quota) / static_cast<double>(period);
}

CpuCount CountCpus(const std::string& cgroup_root, const std::string& proc_self_cgroup) {
  CpuCount count;
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof(set), &set) == 0) count.affinity = std::max(1, CPU_COUNT(&set));
  // /proc/self/cgroup: "0::/path" (v2) or "N:cpu,cpuacct:/path" (v1), one line per hierarchy.
  const fs::path root(cgroup_root);
  for (absl::string_view line : absl::StrSplit(ReadFile(proc_self_cgroup).value_or(""), '\n', absl::SkipEmpty())) {
    const std::vector<std::string> fields = absl::StrSplit(line, absl::MaxSplits(':', 2));
    if (fields.size() != 3) continue;
    std::optional<double> quota;
    if (fields[0] == "0" && fields[1].empty()) {
      // v2, mounted at the root (a hybrid system mounts it at unified/ without the cpu controller).
      if (fs::exists(root / "cgroup.controllers")) quota = TightestQuota(root, fields[2], V2Quota);
    } else {
      const std::vector<absl::string_view> controllers = absl::StrSplit(fields[1], ',');
      if (std::find(controllers.begin(), controllers.end(), "cpu") == controllers.end()) continue;
      for (const std::string& mount : {fields[1], std::string("cpu"), std::string("cpu,cpuacct")}) {
        if (fs::is_directory(root / mount)) {
          quota = TightestQuota(root / mount, fields[2], V1Quota);
          break;
        }
      }
    }
    if (quota && (!count.quota || *quota < *count.quota)) count.quota = quota;
  }
  count.usable = count.affinity;
  if (count.quota) count.usable = std::max(1, std::min(count.affinity, static_cast<int>(std::ceil(*count.quota - 1e-9))));
  return count;
}

void SetComputeThreads(int threads) {
  Q3VL_CHECK(threads >= 1) << "compute threads must be >= 1, got " << threads;
  g_compute_threads.store(threads);
  omp_set_num_threads(threads);
}

int ComputeThreads() { return g_compute_threads.load(); }

void AdoptComputeThreads() {
  if (const int threads = g_compute_threads.load(); threads > 0) omp_set_num_threads(threads);
}

}  // namespace q3vl
