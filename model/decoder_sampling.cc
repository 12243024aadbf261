// TextDecoder::SampleRows: vocab-parallel sampling (see decoder.h).
#include <algorithm>
#include <limits>

#include "core/check.h"
#include "model/decoder.h"
#include "model/parallel_layers.h"

namespace q3vl::model {
namespace {

// Local (logit, global id) candidates per row: the argmax, or the top `k` of the chunk.
// Padded with (-inf, V) so that every rank contributes the same count.
void LocalCandidates(const float* row, int64_t width, int64_t begin, int64_t k, int64_t vocab,
                     float* out_logit, float* out_id) {
  std::vector<int64_t> order(width);
  for (int64_t i = 0; i < width; ++i) order[i] = i;
  const int64_t take = std::min(k, width);
  std::partial_sort(order.begin(), order.begin() + take, order.end(), [&](int64_t a, int64_t b) {
    return row[a] > row[b] || (row[a] == row[b] && a < b);
  });
  for (int64_t i = 0; i < k; ++i) {
    out_logit[i] = i < take ? row[order[i]] : -std::numeric_limits<float>::infinity();
    out_id[i] = static_cast<float>(i < take ? begin + order[i] : vocab);  // exact below 2^24
  }
}

}  // namespace

std::vector<int64_t> TextDecoder::SampleRows(Backend& backend, const Tensor& hidden,
                                             const std::vector<int64_t>& rows,
                                             const std::vector<const SamplingParams*>& params,
                                             const std::vector<Rng*>& rngs) const {
  const int64_t n = static_cast<int64_t>(rows.size());
  const int last = shard_.pp ? shard_.pp->size() - 1 : 0;
  const bool sampler = !shard_.pp || shard_.pp->rank() == last;
  std::vector<int64_t> tokens = sampler ? SampleStage(backend, hidden, rows, params, rngs)
                                        : std::vector<int64_t>(n, 0);
  if (last > 0) {  // the last stage's tokens to every stage
    Tensor t = Tensor::FromVectorI64(tokens, {n});
    BroadcastFromLastStage(shard_.pp, t);
    tokens.assign(t.data<int64_t>(), t.data<int64_t>() + n);
  }
  return tokens;
}

std::vector<int64_t> TextDecoder::SampleStage(Backend& backend, const Tensor& hidden,
                                              const std::vector<int64_t>& rows,
                                              const std::vector<const SamplingParams*>& params,
                                              const std::vector<Rng*>& rngs) const {
  const int64_t n = static_cast<int64_t>(rows.size()), v = config_.vocab_size;
  const int tp = shard_.tp ? shard_.tp->size() : 1;
  std::vector<int64_t> tokens(n);
  if (tp == 1) {
    const Tensor logits = Download(backend, LocalLogits(backend, hidden, rows, nullptr));  // [N, V]
    for (int64_t i = 0; i < n; ++i) tokens[i] = Sample(logits.data<float>() + i * vocab_chunk_, v, *params[i], *rngs[i]);
    return tokens;
  }
  // Candidates per row: 1 for greedy, top_k for top-k; 0 (whole rows) when top_p needs them all.
  int64_t k = 0;
  bool whole_rows = false;
  for (const SamplingParams* p : params) {
    if (p->temperature == 0.0f || p->top_k == 1) {
      k = std::max<int64_t>(k, 1);
    } else if (p->top_k > 0 && p->top_k <= 1024) {
      k = std::max(k, p->top_k);
    } else {
      whole_rows = true;
    }
  }
  if (whole_rows) {
    const Tensor logits = StageLogits(backend, hidden, rows, nullptr);  // [N, V], gathered
    for (int64_t i = 0; i < n; ++i) tokens[i] = Sample(logits.data<float>() + i * v, v, *params[i], *rngs[i]);
    return tokens;
  }
  const Tensor local = Download(backend, LocalLogits(backend, hidden, rows, nullptr));  // [N, V_chunk]
  const int64_t width = std::max<int64_t>(0, std::min(v, vocab_begin_ + vocab_chunk_) - vocab_begin_);
  Tensor mine = Tensor::Empty(DType::kF32, {n, 2, k});  // per row: logits then ids
  for (int64_t i = 0; i < n; ++i) {
    float* dst = mine.data<float>() + i * 2 * k;
    LocalCandidates(local.data<float>() + i * vocab_chunk_, width, vocab_begin_, k, v, dst, dst + k);
  }
  const Tensor all = GatherFromAll(shard_.tp, mine);  // [T, N, 2, k]
  std::vector<float> logit(tp * k);
  std::vector<int64_t> id(tp * k);
  for (int64_t i = 0; i < n; ++i) {
    for (int r = 0; r < tp; ++r) {
      const float* src = all.data<float>() + ((r * n + i) * 2) * k;
      for (int64_t j = 0; j < k; ++j) {
        logit[r * k + j] = src[j];
        id[r * k + j] = static_cast<int64_t>(src[k + j]);
      }
    }
    tokens[i] = SampleCandidates(logit.data(), id.data(), tp * k, *params[i], *rngs[i]);
  }
  return tokens;
}

}  // namespace q3vl::model
