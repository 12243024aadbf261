// Token sampling from one row of logits: greedy (argmax, lowest id on ties) or temperature
// sampling restricted by top-k and top-p. Each sequence owns its Rng, so results depend only
// on the seed and the logits. Stateless apart from the Rng passed in.
#ifndef Q3VL_MODEL_SAMPLER_H_
#define Q3VL_MODEL_SAMPLER_H_

#include <cstdint>
#include <random>
#include <vector>

#include "absl/status/status.h"

namespace q3vl::model {

struct SamplingParams {
  float temperature = 0.0f;  // 0: greedy
  int64_t top_k = 0;         // 0: all tokens
  float top_p = 1.0f;        // nucleus mass in (0, 1]
  uint64_t seed = 0;
  int64_t max_new_tokens = 16;
  std::vector<int64_t> stop_tokens;  // generation ends after emitting one of these

  // InvalidArgument naming the bad field.
  absl::Status Validate() const;
};

using Rng = std::mt19937_64;

int64_t Sample(const float* logits, int64_t vocab, const SamplingParams& params, Rng& rng);

// The same draw from candidates (logits[i] of token ids[i], any order) known to contain the
// top_k tokens of the full row (greedy: its maximum): the result equals Sample on the full row.
// Vocab-parallel sampling gathers each rank's local top-k and calls this on the union.
int64_t SampleCandidates(const float* logits, const int64_t* ids, int64_t n, const SamplingParams& params,
                         Rng& rng);

}  // namespace q3vl::model

#endif  // Q3VL_MODEL_SAMPLER_H_
