#include "model/decoder.h"

#include <algorithm>
#include <cmath>
#include <optional>

#include "absl/strings/str_cat.h"
#include "core/check.h"
#include "moe/ep_dispatcher.h"
#include "parallel/layers.h"

namespace q3vl::model {
namespace {
constexpr char kPrefix[] = "model.language_model.";
}  // namespace

namespace {

int Rank(const parallel::Communicator* c) { return c ? c->rank() : 0; }
int Size(const parallel::Communicator* c) { return c ? c->size() : 1; }

// [begin, end) of part `rank` of `n` split into `parts` as evenly as possible.
std::pair<int64_t, int64_t> EvenPart(int64_t n, int rank, int parts) {
  return {n * rank / parts, n * (rank + 1) / parts};
}

}  // namespace

TextDecoder::TextDecoder(const TextConfig& config, WeightLoader& loader, bool tie_word_embeddings,
                         const DecoderShard& shard)
    : config_(config), shard_(shard) {
  DecoderShard& s = shard_;
  if (s.num_heads == 0) s.first_head = 0, s.num_heads = config.num_heads;
  if (s.num_kv_heads == 0) s.first_kv_head = 0, s.num_kv_heads = config.num_kv_heads;
  if (s.num_experts == 0) s.first_expert = 0, s.num_experts = config.num_experts;
  if (s.num_inter == 0) s.first_inter = 0, s.num_inter = config.moe_intermediate_size;
  if (s.num_layers == 0) s.first_layer = 0, s.num_layers = config.num_layers;
  const bool last_stage = Rank(s.pp) == Size(s.pp) - 1;
  const int64_t d = config.hidden_size, hd = config.head_dim, v = config.vocab_size;
  const std::string p = kPrefix;
  const int tp_rank = Rank(s.tp), tp = Size(s.tp);
  // The stored (mapped) table: a rank touches only its vocab rows of it, and of those only the
  // rows of the tokens it embeds.
  embed_ = loader.GetStored(p + "embed_tokens.weight", {v, d});
  norm_ = loader.Get(p + "norm.weight", {d});
  vocab_chunk_ = (v + tp - 1) / tp;
  vocab_begin_ = tp_rank * vocab_chunk_;
  const int64_t vocab_end = std::min(v, vocab_begin_ + vocab_chunk_);
  if (!last_stage) {
    loader.Skip("lm_head.weight");  // only the last stage computes logits
  } else {
    // GEMM weights stay bf16 when stored so (half the memory; the backends widen exactly).
    Tensor head = tie_word_embeddings ? embed_.Slice(0, vocab_begin_, vocab_end)
                                      : loader.GetMatrix("lm_head.weight", {v, d}, {{0, vocab_begin_, vocab_end}});
    if (head.dim(0) == vocab_chunk_ && head.is_contiguous() &&
        (head.dtype() == DType::kBF16 || head.dtype() == DType::kF32)) {
      lm_head_ = head;  // a tied head is a view of the table
    } else {  // padded to the chunk (zero rows past V), f16 widened: built on the host
      const Tensor stored = Download(loader.backend(), head);
      const Tensor rows = stored.dtype() == DType::kBF16 ? stored : stored.ToF32();
      Tensor padded = Tensor::Empty(rows.dtype(), {vocab_chunk_, d});
      padded.Slice(0, 0, rows.dim(0)).CopyFrom(rows);
      lm_head_ = loader.Place(padded);
    }
  }
  const std::vector<SliceRange> q_rows = {{0, s.first_head * hd, (s.first_head + s.num_heads) * hd}};
  const std::vector<SliceRange> kv_rows = {{0, s.first_kv_head * hd, (s.first_kv_head + s.num_kv_heads) * hd}};
  const std::vector<SliceRange> o_cols = {{1, s.first_head * hd, (s.first_head + s.num_heads) * hd}};
  for (int64_t l = 0; l < config.num_layers; ++l) {
    const std::string b = absl::StrCat(p, "layers.", l, ".");
    if (l < s.first_layer || l >= s.first_layer + s.num_layers) {
      loader.SkipPrefix(b);
      continue;
    }
    Layer layer{
        .input_norm = loader.Get(b + "input_layernorm.weight", {d}),
        .post_norm = loader.Get(b + "post_attention_layernorm.weight", {d}),
        .q_proj = loader.GetMatrix(b + "self_attn.q_proj.weight", {config.num_heads * hd, d}, q_rows),
        .k_proj = loader.GetMatrix(b + "self_attn.k_proj.weight", {config.num_kv_heads * hd, d}, kv_rows),
        .v_proj = loader.GetMatrix(b + "self_attn.v_proj.weight", {config.num_kv_heads * hd, d}, kv_rows),
        .o_proj = loader.GetMatrix(b + "self_attn.o_proj.weight", {d, config.num_heads * hd}, o_cols),
        .q_norm = loader.Get(b + "self_attn.q_norm.weight", {hd}),
        .k_norm = loader.Get(b + "self_attn.k_norm.weight", {hd}),
        .moe = config.IsMoeLayer(l),
    };
    if (layer.moe) {
      LoadExperts(loader, b + "mlp.", layer);
    } else {
      const int64_t inter = config.intermediate_size;
      const auto [i0, i1] = EvenPart(inter, tp_rank, tp);
      layer.dense_gate = loader.GetMatrix(b + "mlp.gate_proj.weight", {inter, d}, {{0, i0, i1}});
      layer.dense_up = loader.GetMatrix(b + "mlp.up_proj.weight", {inter, d}, {{0, i0, i1}});
      layer.dense_down = loader.GetMatrix(b + "mlp.down_proj.weight", {d, inter}, {{1, i0, i1}});
    }
    layers_.push_back(std::move(layer));
  }
}

namespace {

// dst[x][j][i] = src[x][i][j] for x < E, i < A, j < B: src any strides (a view of the mapped
// checkpoint), dst rows of `dst_row` elements, experts `dst_expert` apart. One pass, blocked
// so both sides stay in cache; experts and row blocks run in parallel (load time only).
template <typename T>
void TransposeInto(const Tensor& src, T* dst, int64_t dst_expert, int64_t dst_row) {
  const int64_t e = src.dim(0), a = src.dim(1), b = src.dim(2);
  const int64_t se = src.strides()[0], sa = src.strides()[1], sb = src.strides()[2];
  const T* base = static_cast<const T*>(src.raw_data());
  constexpr int64_t kBlock = 32;
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t x = 0; x < e; ++x) {
    for (int64_t j0 = 0; j0 < b; j0 += kBlock) {
      const T* s = base + x * se;
      T* d = dst + x * dst_expert;
      for (int64_t i0 = 0; i0 < a; i0 += kBlock) {
        const int64_t i1 = std::min(a, i0 + kBlock), j1 = std::min(b, j0 + kBlock);
        for (int64_t i = i0; i < i1; ++i) {
          for (int64_t j = j0; j < j1; ++j) d[j * dst_row + i] = s[i * sa + j * sb];
        }
      }
    }
  }
}

// dst [E, B, A] region (see TransposeInto) of `out` from `src` [E, A, B]; both f32 or both bf16.
void TransposeExperts(const Tensor& src, Tensor& out, int64_t first_row) {
  Q3VL_CHECK(src.dtype() == out.dtype()) << src.DebugString() << " into " << out.DebugString();
  const int64_t dst_expert = out.dim(1) * out.dim(2), dst_row = out.dim(2);
  if (src.dtype() == DType::kBF16) {
    TransposeInto(src, out.data<uint16_t>() + first_row * dst_row, dst_expert, dst_row);
  } else {
    TransposeInto(src, out.data<float>() + first_row * dst_row, dst_expert, dst_row);
  }
}

}  // namespace

// The expert layout is decided from the tensor names, never from shapes: the official fused
// layout ("experts.gate_up_proj" [E, D, 2I], "experts.down_proj" [E, I, D], used as x @ W) or
// per-expert nn.Linear tensors ("experts.N.{gate,up,down}_proj.weight"). Either way the experts
// are held as nn.Linear rows, gate_up [E, 2I, D] and down [E, D, I] (see moe/moe.h).
void TextDecoder::LoadExperts(WeightLoader& loader, const std::string& prefix, Layer& layer) const {
  const int64_t d = config_.hidden_size, e = config_.num_experts, inter = config_.moe_intermediate_size;
  const int64_t e0 = shard_.first_expert, ne = shard_.num_experts;
  const int64_t i0 = shard_.first_inter, ni = shard_.num_inter;
  layer.experts.router = loader.Get(prefix + "gate.weight", {e, d});
  layer.experts.first_expert = e0;
  const std::string fused = prefix + "experts.gate_up_proj";
  if (loader.Has(fused) || !loader.Has(prefix + "experts.0.gate_proj.weight")) {
    // [E, D, 2I] = [gate | up] along the last dim: this rank's columns of each half.
    // Views of the mapped checkpoint, transposed straight into nn.Linear rows: one pass and
    // one allocation per weight.
    Tensor gate = loader.GetView(fused, {e, d, 2 * inter}, {{0, e0, e0 + ne}, {2, i0, i0 + ni}});  // [E_l, D, I_l]
    Tensor up = loader.GetView(fused, {e, d, 2 * inter}, {{0, e0, e0 + ne}, {2, inter + i0, inter + i0 + ni}});
    Tensor down = loader.GetView(prefix + "experts.down_proj", {e, inter, d}, {{0, e0, e0 + ne}, {1, i0, i0 + ni}});
    if (loader.declare_only()) return;  // names and shapes are all that is wanted
    if (gate.dtype() != up.dtype()) gate = gate.ToF32(), up = up.ToF32();  // a failed read is f32 zeros
    Tensor gate_up = Tensor::Empty(gate.dtype(), {ne, 2 * ni, d});  // [E_local, 2I_local, D]
    TransposeExperts(gate, gate_up, 0);
    TransposeExperts(up, gate_up, ni);
    Tensor down_rows = Tensor::Empty(down.dtype(), {ne, d, ni});  // [E_local, D, I_local]
    TransposeExperts(down, down_rows, 0);
    layer.experts.gate_up = loader.Place(gate_up);
    layer.experts.down = loader.Place(down_rows);
    return;
  }
  // bf16 when every local expert is stored bf16, else f32.
  DType dtype = DType::kBF16;
  for (int64_t x = e0; x < e0 + ne; ++x) {
    for (const char* w : {"gate_proj.weight", "up_proj.weight", "down_proj.weight"}) {
      const TensorInfo* info = loader.Find(absl::StrCat(prefix, "experts.", x, ".", w));
      if (info == nullptr || info->dtype != DType::kBF16) dtype = DType::kF32;
    }
  }
  auto as = [&](const Tensor& t) { return t.dtype() == dtype ? t : t.ToF32(); };
  Tensor gate_up = Tensor::Empty(dtype, {ne, 2 * ni, d});  // [E_local, 2I_local, D]
  Tensor down = Tensor::Empty(dtype, {ne, d, ni});         // [E_local, D, I_local]
  for (int64_t x = 0; x < e; ++x) {
    const std::string b = absl::StrCat(prefix, "experts.", x, ".");
    if (x < e0 || x >= e0 + ne) {  // another rank's expert
      for (const char* w : {"gate_proj.weight", "up_proj.weight", "down_proj.weight"}) loader.Skip(b + w);
      continue;
    }
    const Tensor gate = as(loader.GetMatrixOnHost(b + "gate_proj.weight", {inter, d}, {{0, i0, i0 + ni}}));  // [I_local, D]
    const Tensor up = as(loader.GetMatrixOnHost(b + "up_proj.weight", {inter, d}, {{0, i0, i0 + ni}}));      // [I_local, D]
    const Tensor dn = as(loader.GetMatrixOnHost(b + "down_proj.weight", {d, inter}, {{1, i0, i0 + ni}}));    // [D, I_local]
    Tensor gu = gate_up.Select(x - e0);
    gu.Slice(0, 0, ni).CopyFrom(gate);
    gu.Slice(0, ni, 2 * ni).CopyFrom(up);
    down.Select(x - e0).CopyFrom(dn);
  }
  layer.experts.gate_up = loader.Place(gate_up);
  layer.experts.down = loader.Place(down);
}

void TextDecoder::Embed(Backend& backend, const std::vector<int64_t>& ids, Tensor& out) const {
  const int64_t n = static_cast<int64_t>(ids.size()), d = config_.hidden_size;
  if (shard_.tp == nullptr || shard_.tp->size() == 1) {
    backend.GatherRows({.table = embed_, .ids = Upload(backend, Tensor::FromVectorI64(ids, {n})), .out = out});
    return;
  }
  // Vocab-parallel: this rank's rows [vocab_begin_, end), zeros for the other ranks' ids, summed
  // over tp (a sum of one row and zeros: every rank gets the exact embedding).
  const int64_t end = std::min(config_.vocab_size, vocab_begin_ + vocab_chunk_);
  std::vector<int64_t> local(n);  // row in this rank's slice (0 if not ours)
  std::vector<int64_t> others;
  for (int64_t i = 0; i < n; ++i) {
    const bool mine = ids[i] >= vocab_begin_ && ids[i] < end;
    local[i] = mine ? ids[i] - vocab_begin_ : 0;
    if (!mine) others.push_back(i);
  }
  backend.GatherRows({.table = embed_.Slice(0, vocab_begin_, end),
                      .ids = Upload(backend, Tensor::FromVectorI64(local, {n})), .out = out});
  if (!others.empty()) {
    const int64_t m = static_cast<int64_t>(others.size());
    backend.ScatterAddRows({.src = backend.Allocate(DType::kF32, {m, d}),  // zeros
                            .ids = Upload(backend, Tensor::FromVectorI64(others, {m})), .out = out,
                            .accumulate = false});
  }
  parallel::SumPartials(shard_.tp, out);
}

void TextDecoder::Attention(Backend& backend, const Layer& layer, int64_t cache_layer, DecoderBatch& batch,
                            const kv::KvStepPlan& plan, const Tensor& x, Tensor& out) const {
  const int64_t t = x.dim(0), h = shard_.num_heads, kvh = shard_.num_kv_heads, hd = config_.head_dim;
  Tensor q = backend.AllocateUninitialized(DType::kF32, {t, h, hd});    // [T, H, hd]
  Tensor k = backend.AllocateUninitialized(DType::kF32, {t, kvh, hd});  // [T, KV, hd]
  Tensor v = backend.AllocateUninitialized(DType::kF32, {t, kvh, hd});  // [T, KV, hd]
  backend.Gemm({.a = x, .b = layer.q_proj, .out = q.Reshape({t, h * hd})});
  backend.Gemm({.a = x, .b = layer.k_proj, .out = k.Reshape({t, kvh * hd})});
  backend.Gemm({.a = x, .b = layer.v_proj, .out = v.Reshape({t, kvh * hd})});
  backend.RmsNorm({.x = q, .weight = layer.q_norm, .out = q, .eps = config_.rms_norm_eps});
  backend.RmsNorm({.x = k, .weight = layer.k_norm, .out = k, .eps = config_.rms_norm_eps});
  backend.Rope({.x = q, .cos = batch.rope.cos, .sin = batch.rope.sin});
  backend.Rope({.x = k, .cos = batch.rope.cos, .sin = batch.rope.sin});
  batch.kv->Write(cache_layer, plan, k, v);
  Tensor attn = backend.AllocateUninitialized(DType::kF32, {t, h, hd});  // [T, H, hd]
  // Straight from the cache's pages, through the step's block tables.
  backend.Attention({.q = q, .k = batch.kv->keys(cache_layer), .v = batch.kv->values(cache_layer),
                     .q_starts = batch.q_starts, .k_starts = plan.k_starts, .causal = true,
                     .scale = 1.0f / std::sqrt(static_cast<float>(hd)), .out = attn,
                     .block_tables = plan.block_tables, .page_size = batch.kv->config().page_size,
                     .k_scale = batch.kv->key_scales(cache_layer), .v_scale = batch.kv->value_scales(cache_layer)});
  backend.Gemm({.a = attn.Reshape({t, h * hd}), .b = layer.o_proj, .out = out});
  parallel::SumPartials(shard_.tp, out);
}

void TextDecoder::DenseMlp(Backend& backend, const Layer& layer, const Tensor& x, Tensor& out) const {
  const int64_t t = x.dim(0), inter = layer.dense_gate.dim(0);
  Tensor gate_up = backend.AllocateUninitialized(DType::kF32, {t, 2 * inter});  // [T, 2 Iff] = [gate | up]
  backend.Gemm({.a = x, .b = layer.dense_gate, .out = gate_up.Slice(1, 0, inter)});
  backend.Gemm({.a = x, .b = layer.dense_up, .out = gate_up.Slice(1, inter, 2 * inter)});
  Tensor act = backend.AllocateUninitialized(DType::kF32, {t, inter});  // [T, Iff]
  backend.Activation({.kind = ActivationKind::kSiluMul, .x = gate_up, .out = act});
  backend.Gemm({.a = act, .b = layer.dense_down, .out = out});
  parallel::SumPartials(shard_.tp, out);
}

void TextDecoder::Forward(Backend& backend, DecoderBatch& batch) const {
  Tensor& h = batch.hidden;
  const int64_t t = h.dim(0), d = config_.hidden_size;
  Tensor a = backend.AllocateUninitialized(DType::kF32, {t, d});      // [T, D] normed input
  Tensor delta = backend.AllocateUninitialized(DType::kF32, {t, d});  // [T, D] block output
  const kv::KvStepPlan plan = batch.kv->Plan(batch.seq_ids, batch.q_starts);  // one upload per step
  moe::LocalDispatcher local;
  std::optional<moe::AllToAllDispatcher> all_to_all;
  if (shard_.ep != nullptr && shard_.ep->size() > 1) {
    // The ranks holding this rank's tokens: its attention group when the groups are
    // data-parallel, else the whole ep group (attention ran tensor-parallel over all of it).
    all_to_all.emplace(*shard_.ep, *shard_.ep_host, shard_.num_experts, shard_.attn_groups > 1 ? shard_.tp : shard_.ep);
  }
  moe::Dispatcher& dispatcher = all_to_all ? static_cast<moe::Dispatcher&>(*all_to_all) : local;
  // Residual adds are fused into the next RMSNorm (h += delta, a = norm(h)): the attention
  // output's always, the MLP output's when the next layer's input norm follows directly (no
  // DeepStack add or trace in between, not the stage's last layer).
  bool pending = false;  // delta holds the previous MLP output, not yet added into h
  for (int64_t i = 0; i < shard_.num_layers; ++i) {
    const int64_t l = shard_.first_layer + i;  // global layer index (KV cache, DeepStack, traces)
    const Layer& layer = layers_[i];
    backend.RmsNorm({.x = h, .weight = layer.input_norm, .out = a, .eps = config_.rms_norm_eps,
                     .residual = pending ? delta : Tensor()});
    Attention(backend, layer, i, batch, plan, a, delta);  // KV cache layers are this stage's
    backend.RmsNorm({.x = h, .weight = layer.post_norm, .out = a, .eps = config_.rms_norm_eps, .residual = delta});
    if (layer.moe) {
      moe::Routing routing;
      moe::MoeForward(backend, dispatcher, layer.experts,
                      {.x = a, .out = delta, .top_k = static_cast<int>(config_.top_k),
                       .renormalize = config_.norm_topk_prob,
                       .routing_out = batch.trace ? &routing : nullptr});
      parallel::SumPartials(shard_.etp, delta);
      if (batch.trace) Trace(backend, batch.trace, "router_topk", l, routing.expert_ids);
    } else {
      DenseMlp(backend, layer, a, delta);
    }
    const bool deepstack = l < static_cast<int64_t>(batch.deepstack.size()) && batch.visual_rows.defined() &&
                           batch.visual_rows.numel() > 0;
    pending = !deepstack && batch.trace == nullptr && i + 1 < shard_.num_layers;
    if (pending) continue;
    backend.Add({.a = h, .b = delta, .out = h});
    if (deepstack) backend.ScatterAddRows({.src = batch.deepstack[l], .ids = batch.visual_rows, .out = h});
    Trace(backend, batch.trace, "layer_hidden", l, h);
  }
  for (size_t s = 0; s < batch.seq_ids.size(); ++s) {
    batch.kv->Commit(batch.seq_ids[s], batch.q_starts[s + 1] - batch.q_starts[s]);
  }
}

Tensor TextDecoder::Logits(Backend& backend, const Tensor& hidden, const std::vector<int64_t>& rows,
                           const TraceFn* trace) const {
  return parallel::GatherVocab(backend, shard_.tp, LocalLogits(backend, hidden, rows, trace), config_.vocab_size);
}

Tensor TextDecoder::LocalLogits(Backend& backend, const Tensor& hidden, const std::vector<int64_t>& rows,
                                const TraceFn* trace) const {
  const int64_t n = static_cast<int64_t>(rows.size()), d = config_.hidden_size;
  Tensor selected = backend.AllocateUninitialized(DType::kF32, {n, d});  // [N, D]
  backend.GatherRows({.table = hidden, .ids = Upload(backend, Tensor::FromVectorI64(rows, {n})), .out = selected});
  backend.RmsNorm({.x = selected, .weight = norm_, .out = selected, .eps = config_.rms_norm_eps});
  Trace(backend, trace, "final_hidden_normed", 0, selected);
  Tensor local = backend.AllocateUninitialized(DType::kF32, {n, vocab_chunk_});  // [N, V_chunk]
  backend.Gemm({.a = selected, .b = lm_head_, .out = local});
  return local;
}

}  // namespace q3vl::model
