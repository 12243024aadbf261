#include "cluster/engine/metrics.h"

#include <algorithm>

namespace q3vl::cluster {
namespace {

// vLLM's bucket bounds (seconds), so that dashboards built for it read ours.
const std::vector<double> kTtftBuckets = {0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75,
                                          1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0};
const std::vector<double> kItlBuckets = {0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75,
                                         1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0};
const std::vector<double> kRequestBuckets = {0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0,
                                             40.0, 50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0};

}  // namespace

Histogram::Histogram(std::vector<double> upper_bounds)
    : bounds(std::move(upper_bounds)), counts(bounds.size() + 1, 0) {}

void Histogram::Observe(double seconds) {
  const size_t i = std::lower_bound(bounds.begin(), bounds.end(), seconds) - bounds.begin();
  ++counts[i];
  sum += seconds;
  ++count;
}

double Histogram::Quantile(double q) const {
  if (count == 0) return 0.0;
  const double rank = q * static_cast<double>(count);
  int64_t below = 0;
  for (size_t i = 0; i < counts.size(); ++i) {
    if (below + counts[i] >= rank && counts[i] > 0) {
      if (i == bounds.size()) return bounds.empty() ? 0.0 : bounds.back();
      const double lo = i == 0 ? 0.0 : bounds[i - 1];
      return lo + (bounds[i] - lo) * (rank - below) / static_cast<double>(counts[i]);
    }
    below += counts[i];
  }
  return bounds.empty() ? 0.0 : bounds.back();
}

EngineMetrics::EngineMetrics() {
  m_.time_to_first_token = Histogram(kTtftBuckets);
  m_.inter_token_latency = Histogram(kItlBuckets);
  m_.e2e_request_latency = Histogram(kRequestBuckets);
  m_.request_queue_time = Histogram(kRequestBuckets);
}

void EngineMetrics::SetGauges(int64_t running, int64_t waiting, double kv_usage, int64_t preemptions) {
  absl::MutexLock lock(&mu_);
  m_.num_requests_running = running;
  m_.num_requests_waiting = waiting;
  m_.kv_cache_usage = kv_usage;
  m_.num_preemptions_total = preemptions;
}

void EngineMetrics::AddStep(int64_t prompt_tokens, int64_t generated_tokens) {
  absl::MutexLock lock(&mu_);
  ++m_.steps_total;
  m_.prompt_tokens_total += prompt_tokens;
  m_.generation_tokens_total += generated_tokens;
}

void EngineMetrics::SetMmCache(int64_t queries, int64_t hits, double vision_seconds) {
  absl::MutexLock lock(&mu_);
  m_.mm_cache_queries_total = queries;
  m_.mm_cache_hits_total = hits;
  m_.vision_encode_seconds_total = vision_seconds;
}

void EngineMetrics::SetPrefixCache(int64_t queries, int64_t hits) {
  absl::MutexLock lock(&mu_);
  m_.prefix_cache_queries_total = queries;
  m_.prefix_cache_hits_total = hits;
}

void EngineMetrics::ObserveTtft(double s) {
  absl::MutexLock lock(&mu_);
  m_.time_to_first_token.Observe(s);
}

void EngineMetrics::ObserveInterToken(double s) {
  absl::MutexLock lock(&mu_);
  m_.inter_token_latency.Observe(s);
}

void EngineMetrics::ObserveFinished(const std::string& reason, double e2e_s, double queue_s) {
  absl::MutexLock lock(&mu_);
  ++m_.request_success_total[reason];
  m_.e2e_request_latency.Observe(e2e_s);
  m_.request_queue_time.Observe(queue_s);
}

MetricsSnapshot EngineMetrics::Snapshot() const {
  absl::MutexLock lock(&mu_);
  return m_;
}

}  // namespace q3vl::cluster
