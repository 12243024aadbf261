#include "model/sampler.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "absl/strings/str_cat.h"

namespace q3vl::model {

absl::Status SamplingParams::Validate() const {
  if (!(temperature >= 0.0f) || !std::isfinite(temperature)) {
    return absl::InvalidArgumentError(absl::StrCat("temperature must be >= 0, got ", temperature));
  }
  if (top_k < 0) return absl::InvalidArgumentError(absl::StrCat("top_k must be >= 0, got ", top_k));
  if (!(top_p > 0.0f && top_p <= 1.0f)) {
    return absl::InvalidArgumentError(absl::StrCat("top_p must be in (0, 1], got ", top_p));
  }
  if (max_new_tokens < 0) {
    return absl::InvalidArgumentError(absl::StrCat("max_new_tokens must be >= 0, got ", max_new_tokens));
  }
  return absl::OkStatus();
}

int64_t Sample(const float* logits, int64_t vocab, const SamplingParams& params, Rng& rng) {
  if (params.temperature == 0.0f || params.top_k == 1) {
    return std::max_element(logits, logits + vocab) - logits;  // first maximum
  }
  std::vector<int64_t> order(vocab);
  std::iota(order.begin(), order.end(), 0);
  const int64_t k = params.top_k > 0 ? std::min(params.top_k, vocab) : vocab;
  auto by_logit = [&](int64_t a, int64_t b) { return logits[a] > logits[b] || (logits[a] == logits[b] && a < b); };
  std::partial_sort(order.begin(), order.begin() + k, order.end(), by_logit);
  order.resize(k);
  std::vector<double> prob(k);
  const double max_logit = logits[order[0]];
  double sum = 0.0;
  for (int64_t i = 0; i < k; ++i) sum += prob[i] = std::exp((logits[order[i]] - max_logit) / params.temperature);
  // Nucleus: the smallest prefix whose mass reaches top_p (at least one token).
  int64_t keep = k;
  if (params.top_p < 1.0f) {
    double mass = 0.0;
    for (int64_t i = 0; i < k; ++i) {
      mass += prob[i] / sum;
      if (mass >= params.top_p) {
        keep = i + 1;
        break;
      }
    }
  }
  std::discrete_distribution<int64_t> dist(prob.begin(), prob.begin() + keep);
  return order[dist(rng)];
}

int64_t SampleCandidates(const float* logits, const int64_t* ids, int64_t n, const SamplingParams& params,
                         Rng& rng) {
  // Candidates in full-row order (logit descending, id ascending): Sample on them then picks
  // the same top-k prefix, the same nucleus and, with the same Rng state, the same token.
  std::vector<int64_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
    return logits[a] > logits[b] || (logits[a] == logits[b] && ids[a] < ids[b]);
  });
  std::vector<float> sorted(n);
  for (int64_t i = 0; i < n; ++i) sorted[i] = logits[order[i]];
  return ids[order[Sample(sorted.data(), n, params, rng)]];
}

}  // namespace q3vl::model
