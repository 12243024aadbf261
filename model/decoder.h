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
#include "model/sampler.h"
#include "model/trace.h"
#include "model/weight_loader.h"
#include "moe/moe.h"
#include "parallel/communicator.h"

namespace q3vl::model {

// This rank's part of the decoder and the groups its parallel layers talk to; the default is one
// rank holding everything. Counts of 0 mean "all". The math per layer:
//   attention: heads split over tp (q, k, v column-parallel; o row-parallel: Y = Σ_r X_r O_rᵀ,
//              all-reduced over tp); KV heads split too, or replicated when tp > KV heads
//   MoE:       experts split over ep (tokens exchanged by all-to-all, moe/ep_dispatcher.h), each
//              expert's intermediate width split over etp (down row-parallel, all-reduced)
//   dense MLP: intermediate split over tp (all-reduced); LM head: vocab split over tp
//              (all-gathered, so every tp rank holds identical logits)
struct DecoderShard {
  int64_t first_head = 0, num_heads = 0;        // query heads
  int64_t first_kv_head = 0, num_kv_heads = 0;  // KV heads
  int64_t first_expert = 0, num_experts = 0;    // local experts
  int64_t first_inter = 0, num_inter = 0;       // slice of each expert's intermediate width
  int64_t first_layer = 0, num_layers = 0;      // this pipeline stage's layers
  parallel::Communicator* tp = nullptr;   // attention, dense MLP, LM head (nullptr: size 1)
  parallel::Communicator* ep = nullptr;   // expert all-to-all (nullptr: all experts local)
  parallel::Communicator* etp = nullptr;  // expert intermediate slices (nullptr: size 1)
  // Pipeline: one rank per stage, rank = stage. Stage p receives the hidden states from p - 1,
  // runs its layers and sends them to p + 1; the last stage's logits are broadcast to all
  // stages so that every rank samples the same token.
  parallel::Communicator* pp = nullptr;
  // The control planes of tp, ep and pp (host communicators over the same ranks; the same
  // objects as above on a CPU mesh): small host messages such as sampled tokens, sampling
  // candidates, pipeline headers and all-to-all counts. tp, ep, etp and pp above are the data
  // planes and carry the backend's tensors (NCCL on a GPU mesh).
  parallel::Communicator* tp_host = nullptr;
  parallel::Communicator* ep_host = nullptr;
  parallel::Communicator* pp_host = nullptr;
  // Data-parallel attention (stage size S > T): the stage's S / T attention groups each run
  // their own sequences, the MoE all-to-all mixes them, and `stage` (the S ranks' host
  // communicator) lets the groups agree on the step count and share results (generator.h).
  int attn_groups = 1, attn_group = 0;
  parallel::Communicator* stage = nullptr;
};

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
  TextDecoder(const TextConfig& config, WeightLoader& loader, bool tie_word_embeddings,
              const DecoderShard& shard = {});

  // KV heads and layers this rank caches (size its PagedKvCache with them; cache layer i is
  // decoder layer first_layer + i).
  int64_t local_kv_heads() const { return shard_.num_kv_heads; }
  int64_t local_layers() const { return shard_.num_layers; }
  int64_t vocab_size() const { return config_.vocab_size; }
  // This rank's part (counts filled in).
  const DecoderShard& shard() const { return shard_; }

  // out [N, D] = embed_tokens[ids] (vocab-parallel over tp: this rank's rows, all-reduced).
  void Embed(Backend& backend, const std::vector<int64_t>& ids, Tensor& out) const;
  // Runs this pipeline stage's layers on batch.hidden (the stage's input: embeddings on stage
  // 0); appends the new tokens to the KV cache (committed at the end). Moving hidden states
  // between stages is the stage runner's (model/pipeline_stage.h).
  void Forward(Backend& backend, DecoderBatch& batch) const;
  // logits [N, V] = RMSNorm(hidden[rows]) · lm_headᵀ for the given rows of `hidden`, as a
  // host tensor (the vocab-parallel LM head, gathered over tp). REQUIRES: the last stage.
  Tensor Logits(Backend& backend, const Tensor& hidden, const std::vector<int64_t>& rows,
                const TraceFn* trace = nullptr) const;

  // One token per row of `hidden` (rows[i] sampled with *params[i] and *rngs[i]) without the
  // full logits on any rank or on the host: the backend picks each tp rank's argmax or top-k
  // (value, id) pairs of its vocab chunk (Backend::TopK), the candidates are all-gathered and
  // sampled identically on every tp rank (SampleCandidates); top-p without a top-k of at most
  // kMaxSampleCandidates falls back to whole rows. Every tp rank returns the same tokens.
  // REQUIRES: the last stage (PipelineStage::SampleRows brings the tokens to every stage).
  static constexpr int64_t kMaxSampleCandidates = 1024;
  std::vector<int64_t> SampleRows(Backend& backend, const Tensor& hidden, const std::vector<int64_t>& rows,
                                  const std::vector<const SamplingParams*>& params,
                                  const std::vector<Rng*>& rngs) const;

 private:
  struct Layer {
    Tensor input_norm;   // [D]
    Tensor post_norm;    // [D]
    Tensor q_proj;       // [H_local hd, D]
    Tensor k_proj;       // [KV_local hd, D]
    Tensor v_proj;       // [KV_local hd, D]
    Tensor o_proj;       // [D, H_local hd]
    Tensor q_norm;       // [hd]
    Tensor k_norm;       // [hd]
    bool moe = true;
    moe::ExpertWeights experts;
    Tensor dense_gate;   // [Iff_local, D] (dense layers)
    Tensor dense_up;     // [Iff_local, D]
    Tensor dense_down;   // [D, Iff_local]
  };
  void LoadExperts(WeightLoader& loader, const std::string& prefix, Layer& layer) const;
  void Attention(Backend& backend, const Layer& layer, int64_t cache_layer, DecoderBatch& batch,
                 const kv::KvStepPlan& plan, const Tensor& x, Tensor& out) const;
  void DenseMlp(Backend& backend, const Layer& layer, const Tensor& x, Tensor& out) const;
  // This rank's chunk of the logits: [N, vocab_chunk_] (columns past V are padding), in the
  // backend's memory.
  Tensor LocalLogits(Backend& backend, const Tensor& hidden, const std::vector<int64_t>& rows,
                     const TraceFn* trace) const;

  TextConfig config_;
  DecoderShard shard_;     // counts filled in (never 0)
  int64_t vocab_begin_ = 0, vocab_chunk_ = 0;  // LM head rows [begin, begin + chunk) (padded)
  Tensor embed_;    // [V, D], as stored (mapped); this rank reads rows [vocab_begin_, +chunk)
  Tensor norm_;     // [D]
  Tensor lm_head_;  // [vocab_chunk, D]: this rank's vocab rows (zero past V)
  std::vector<Layer> layers_;  // layers [shard_.first_layer, + num_layers)
};

}  // namespace q3vl::model

#endif  // Q3VL_MODEL_DECODER_H_
