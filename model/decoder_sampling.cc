// TextDecoder::SampleRows: vocab-parallel sampling (see decoder.h).
#include <algorithm>
#include <limits>

#include "core/check.h"
#include "model/decoder.h"
#include "parallel/layers.h"

namespace q3vl::model {

std::vector<int64_t> TextDecoder::SampleRows(Backend& backend, const Tensor& hidden,
                                             const std::vector<int64_t>& rows,
                                             const std::vector<const SamplingParams*>& params,
                                             const std::vector<Rng*>& rngs) const {
  const int64_t n = static_cast<int64_t>(rows.size()), v = config_.vocab_size;
  const int tp = shard_.tp ? shard_.tp->size() : 1;
  std::vector<int64_t> tokens(n);
  // Candidates per row: 1 for greedy, top_k for top-k; 0 (whole rows) when top_p needs them all.
  int64_t k = 0;
  bool whole_rows = false;
  for (const SamplingParams* p : params) {
    if (p->temperature == 0.0f || p->top_k == 1) {
      k = std::max<int64_t>(k, 1);
    } else if (p->top_k > 0 && p->top_k <= kMaxSampleCandidates) {
      k = std::max(k, p->top_k);
    } else {
      whole_rows = true;
    }
  }
  if (whole_rows) {
    const Tensor logits = tp == 1 ? Download(backend, LocalLogits(backend, hidden, rows, nullptr))
                                  : Logits(backend, hidden, rows, nullptr);  // [N, V] (tp: gathered)
    const int64_t ld = tp == 1 ? vocab_chunk_ : v;
    for (int64_t i = 0; i < n; ++i) tokens[i] = Sample(logits.data<float>() + i * ld, v, *params[i], *rngs[i]);
    return tokens;
  }
  // Each rank's top k of its vocabulary chunk, picked on the backend: the host reads n x k
  // candidates instead of n whole rows. Padded with (-inf, V) where a chunk is narrower than k,
  // so that every rank contributes the same count.
  const Tensor local = LocalLogits(backend, hidden, rows, nullptr);  // [N, V_chunk]
  const int64_t width = std::max<int64_t>(0, std::min(v, vocab_begin_ + vocab_chunk_) - vocab_begin_);
  const int64_t take = std::min(k, width);
  Tensor top_values, top_ids;
  if (take > 0) {
    Tensor values = backend.AllocateUninitialized(DType::kF32, {n, take});
    Tensor ids = backend.AllocateUninitialized(DType::kI32, {n, take});
    backend.TopK({.x = local.Slice(1, 0, width), .k = take, .values = values, .ids = ids});
    top_values = Download(backend, values);
    top_ids = Download(backend, ids);
  }
  Tensor mine = Tensor::Empty(DType::kF32, {n, 2, k});  // per row: logits then ids (exact below 2^24)
  for (int64_t i = 0; i < n; ++i) {
    float* dst = mine.data<float>() + i * 2 * k;
    for (int64_t j = 0; j < k; ++j) {
      dst[j] = j < take ? top_values.data<float>()[i * take + j] : -std::numeric_limits<float>::infinity();
      dst[k + j] = static_cast<float>(j < take ? vocab_begin_ + top_ids.data<int32_t>()[i * take + j] : v);
    }
  }
  const Tensor all = tp == 1 ? mine : parallel::GatherFromAll(shard_.tp_host, mine);  // [tp, N, 2, k]
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
