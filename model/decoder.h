// The Qwen3-VL-MoE text decoder: token embedding, layers of (RMSNorm, GQA attention with
// q/k norm and interleaved M-RoPE over the paged KV cache, RMSNorm, MoE or dense SwiGLU), the
// DeepStack injection after the first layers at visual rows, final norm and the LM head.
// Weights are immutable after construction; Forward mutates only the batch and the KV cache.
#ifndef Q3VL_MODEL_DECODER_H_
#define Q3VL_MODEL_DECODER_H_

#include <vector>

#include "core/backend.h"
#include "kv/paged_kv_cache.h"
#include "model/config.h"
#include "model/rope.h"
#include "model/trace.h"
#include "model/weight_loader.h"
#include "moe/moe.h"

namespace q3vl::model {

// One forward step over packed sequences (prefill chunks and decode tokens alike).
struct DecoderBatch {
  Tensor hidden;                  // [T, D], embeddings in, residual stream out
  std::vector<int64_t> seq_ids;   // [num_seqs] KV cache sequence ids (reserved by the caller)
  std::vector<int64_t> q_starts;  // [num_seqs + 1] CSR rows of each sequence in `hidden`
  RopeTables rope;                // cos/sin [T, head_dim]
  Tensor visual_rows;             // [Nv] i64 rows receiving DeepStack features (may be empty)
  std::vector<Tensor> deepstack;  // per DeepStack layer: [Nv, D]
  kv::PagedKvCache* kv = nullptr;
  const TraceFn* trace = nullptr;  // "layer_hidden", "router_topk" (index = layer)
};

class TextDecoder {
 public:
  TextDecoder(const TextConfig& config, WeightLoader& loader, bool tie_word_embeddings);

  // out [N, D] = embed_tokens[ids].
  void Embed(Backend& backend, const Tensor& ids, Tensor& out) const;
  // Runs every layer; appends the new tokens to the KV cache (committed at the end).
  void Forward(Backend& backend, DecoderBatch& batch) const;
  // logits [N, V] = RMSNorm(hidden[rows]) · lm_headᵀ for the given rows of `hidden`.
  Tensor Logits(Backend& backend, const Tensor& hidden, const std::vector<int64_t>& rows,
                const TraceFn* trace = nullptr) const;

 private:
  struct Layer {
    Tensor input_norm;   // [D]
    Tensor post_norm;    // [D]
    Tensor q_proj;       // [H hd, D]
    Tensor k_proj;       // [KV hd, D]
    Tensor v_proj;       // [KV hd, D]
    Tensor o_proj;       // [D, H hd]
    Tensor q_norm;       // [hd]
    Tensor k_norm;       // [hd]
    bool moe = true;
    moe::ExpertWeights experts;
    Tensor dense_gate;   // [Iff, D] (dense layers)
    Tensor dense_up;     // [Iff, D]
    Tensor dense_down;   // [D, Iff]
  };
  void LoadExperts(WeightLoader& loader, const std::string& prefix, Layer& layer) const;
  void Attention(Backend& backend, const Layer& layer, int64_t index, DecoderBatch& batch,
                 const Tensor& x, Tensor& out) const;
  void DenseMlp(Backend& backend, const Layer& layer, const Tensor& x, Tensor& out) const;

  TextConfig config_;
  Tensor embed_;    // [V, D], as stored
  Tensor norm_;     // [D]
  Tensor lm_head_;  // [V, D]
  std::vector<Layer> layers_;
};

}  // namespace q3vl::model

#endif  // Q3VL_MODEL_DECODER_H_
