// What an engine records for a server to export, with vLLM's meanings (the HTTP server renders
// them as Prometheus text): gauges of running and waiting requests and KV usage, token and
// request counters, preemptions, encoder (multimodal) cache queries and hits, and latency
// histograms (TTFT, inter-token latency, end to end,
// queue time). EngineMetrics is written by the engine loop and read by any thread: every
// method is thread-safe; Snapshot() copies.
#ifndef Q3VL_CLUSTER_ENGINE_METRICS_H_
#define Q3VL_CLUSTER_ENGINE_METRICS_H_

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"

namespace q3vl::cluster {

// Cumulative histogram of seconds (Prometheus semantics: counts[i] observations <= bounds[i],
// the last count is +Inf).
struct Histogram {
  std::vector<double> bounds;
  std::vector<int64_t> counts;  // bounds.size() + 1, not cumulative
  double sum = 0.0;
  int64_t count = 0;

  explicit Histogram(std::vector<double> upper_bounds = {});
  void Observe(double seconds);
  // The value below which `q` of the observations fall, interpolated within its bucket.
  double Quantile(double q) const;
};

struct MetricsSnapshot {
  int64_t num_requests_running = 0;
  int64_t num_requests_waiting = 0;
  double kv_cache_usage = 0.0;  // used / total pages, in [0, 1]
  int64_t prompt_tokens_total = 0;
  int64_t generation_tokens_total = 0;
  int64_t num_preemptions_total = 0;
  int64_t steps_total = 0;
  int64_t mm_cache_queries_total = 0;  // encoder cache lookups (images and videos)
  int64_t mm_cache_hits_total = 0;
  double vision_encode_seconds_total = 0.0;  // RunnerCounters::vision_seconds (the leader's)
  int64_t prefix_cache_queries_total = 0;  // prompt tokens of admitted requests
  int64_t prefix_cache_hits_total = 0;     // of those, tokens found in the prefix cache
  std::map<std::string, int64_t> request_success_total;  // by finish reason: stop, length, abort, error
  Histogram time_to_first_token;
  Histogram inter_token_latency;
  Histogram e2e_request_latency;
  Histogram request_queue_time;
};

class EngineMetrics {
 public:
  EngineMetrics();
  void SetGauges(int64_t running, int64_t waiting, double kv_usage, int64_t preemptions);
  void AddStep(int64_t prompt_tokens, int64_t generated_tokens);
  void SetMmCache(int64_t queries, int64_t hits, double vision_seconds);
  void SetPrefixCache(int64_t queries, int64_t hits);
  void ObserveTtft(double s);
  void ObserveInterToken(double s);
  void ObserveFinished(const std::string& reason, double e2e_s, double queue_s);
  MetricsSnapshot Snapshot() const;

 private:
  mutable absl::Mutex mu_;
  MetricsSnapshot m_ ABSL_GUARDED_BY(mu_);
};

}  // namespace q3vl::cluster

#endif  // Q3VL_CLUSTER_ENGINE_METRICS_H_
