#include "model/generator.h"

#include <algorithm>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "core/check.h"
#include "core/status_macros.h"
#include "kv/paged_kv_cache.h"
#include "model/pipeline_stage.h"
#include "parallel/layers.h"
#include "model/visual_features.h"

namespace q3vl::model {
absl::Status Generator::Check(const GenerationRequest& r) const {
  return CheckPrompt(model_.config(), r.input_ids, r.images, r.videos, r.sampling);
}

namespace {

// Data-parallel attention: request i runs on one attention group, the one with the fewest
// tokens (prompt + max_new_tokens) so far, ties to the lowest index, so request 0 runs on
// group 0 (the replica leader's). Every rank computes the same assignment.
std::vector<int> AssignAttentionGroups(const std::vector<GenerationRequest>& requests, int groups) {
  std::vector<int64_t> load(groups, 0);
  std::vector<int> owner;
  for (const GenerationRequest& r : requests) {
    const int g = static_cast<int>(std::min_element(load.begin(), load.end()) - load.begin());
    owner.push_back(g);
    load[g] += static_cast<int64_t>(r.input_ids.size()) + r.sampling.max_new_tokens;
  }
  return owner;
}

int GroupSize(const parallel::Communicator* c) { return c ? c->size() : 1; }

// A result's finish reason and tokens as bytes for a broadcast, and back.
std::string PackResult(const GenerationResult& r) {
  std::string bytes = r.finish_reason + '\0';
  bytes.append(reinterpret_cast<const char*>(r.tokens.data()), r.tokens.size() * sizeof(int64_t));
  return bytes;
}

void UnpackResult(const std::string& bytes, GenerationResult& r) {
  const size_t end = bytes.find('\0');
  Q3VL_CHECK(end != std::string::npos && (bytes.size() - end - 1) % sizeof(int64_t) == 0);
  r.finish_reason = bytes.substr(0, end);
  r.tokens.resize((bytes.size() - end - 1) / sizeof(int64_t));
  std::memcpy(r.tokens.data(), bytes.data() + end + 1, r.tokens.size() * sizeof(int64_t));
}

}  // namespace

absl::StatusOr<std::vector<GenerationResult>> Generator::Generate(const std::vector<GenerationRequest>& requests) {
  const ModelConfig& cfg = model_.config();
  Backend& backend = model_.backend();
  const TextDecoder& decoder = model_.decoder();
  const DecoderShard& shard = decoder.shard();
  const int64_t d = cfg.text.hidden_size, vocab = cfg.text.vocab_size;
  const size_t num_deepstack = cfg.vision.deepstack_visual_indexes.size();
  std::vector<GenerationResult> results(requests.size());
  for (size_t i = 0; i < requests.size(); ++i) {
    Q3VL_RETURN_IF_ERROR(Annotate(Check(requests[i]), absl::StrCat("request ", i)));
    Q3VL_ASSIGN_OR_RETURN(results[i].rope, GetRopeIndex({.input_ids = &requests[i].input_ids,
        .image_grids = &requests[i].images.grids, .video_grids = &requests[i].videos.grids,
        .image_token_id = cfg.image_token_id, .video_token_id = cfg.video_token_id,
        .spatial_merge_size = cfg.vision.spatial_merge_size}));
  }
  // This rank's sequences: all of them, or its attention group's share. Sequence j of this
  // rank (its KV cache id) is request mine[j].
  const std::vector<int> owner = AssignAttentionGroups(requests, shard.attn_groups);
  std::vector<size_t> mine;
  for (size_t i = 0; i < requests.size(); ++i) {
    if (owner[i] == shard.attn_group) mine.push_back(i);
  }
  const size_t n = mine.size();
  // Later pipeline stages receive their hidden states: only stage 0 embeds tokens and places
  // visual features (DeepStack layers are stage 0's too).
  const bool first_stage = shard.pp == nullptr || shard.pp->rank() == 0;
  int64_t pages = 0;
  for (size_t i : mine) {
    const int64_t tokens = static_cast<int64_t>(requests[i].input_ids.size()) + requests[i].sampling.max_new_tokens;
    pages += (tokens + options_.page_size - 1) / options_.page_size;
  }
  // The groups share every MoE step: all of them start, or none does.
  const bool fits = options_.kv_pages == 0 || pages <= options_.kv_pages;
  if (parallel::MaxOverGroup(shard.stage, fits ? 0 : 1) > 0) {
    return absl::ResourceExhaustedError(
        fits ? "another attention group's share of the batch does not fit its KV cache"
             : absl::StrCat("the batch needs ", pages, " KV pages of ", options_.page_size,
                            " tokens; the cache holds ", options_.kv_pages));
  }
  stats_ = {.sequences = static_cast<int64_t>(n), .kv_pages = options_.kv_pages > 0 ? options_.kv_pages : pages};
  kv::PagedKvCache cache({.num_layers = decoder.local_layers(), .num_kv_heads = decoder.local_kv_heads(),
                          .head_dim = cfg.text.head_dim, .page_size = options_.page_size,
                          .num_pages = options_.kv_pages > 0 ? options_.kv_pages : std::max<int64_t>(pages, 1),
                          .dtype = DType::kF32},  // the whole-batch path keeps the fp32 contract
                         backend);

  // Prefill: every prompt of this rank packed into one batch (none: the rank still joins the
  // MoE exchanges with zero tokens).
  DecoderBatch batch{.q_starts = {0}, .kv = &cache, .trace = options_.trace};
  std::vector<int64_t> all_ids, positions[3], visual_rows;
  std::vector<Tensor> visual_embeds;                         // per request [Nv_i, D]
  std::vector<std::vector<Tensor>> deepstack(num_deepstack);  // per layer, per request
  for (size_t i = 0, j = 0; i < requests.size(); ++i) {
    const GenerationRequest& r = requests[i];
    if (owner[i] != shard.attn_group) {
      // Another group's request: received features arrive by a collective over all of stage 0,
      // so take part in it and drop them.
      if (model_.vision_is_collective()) {
        if (!r.images.grids.empty()) model_.RunVision(r.images);
        if (!r.videos.grids.empty()) model_.RunVision(r.videos);
      }
      continue;
    }
    const int64_t seq = static_cast<int64_t>(j++);
    const int64_t s = static_cast<int64_t>(r.input_ids.size());
    const int64_t base = batch.q_starts.back();
    Q3VL_RETURN_IF_ERROR(cache.Reserve(seq, s));
    batch.seq_ids.push_back(seq);
    batch.q_starts.push_back(base + s);
    all_ids.insert(all_ids.end(), r.input_ids.begin(), r.input_ids.end());
    for (int a = 0; a < 3; ++a) {
      const auto& p = results[i].rope.positions;
      positions[a].insert(positions[a].end(), p.begin() + a * s, p.begin() + (a + 1) * s);
    }
    std::vector<int64_t> visual_ids;
    for (int64_t t = 0; t < s; ++t) {
      if (r.input_ids[t] == cfg.image_token_id || r.input_ids[t] == cfg.video_token_id) {
        visual_rows.push_back(base + t);
        visual_ids.push_back(r.input_ids[t]);
      }
    }
    if (visual_ids.empty() || !first_stage) continue;
    VisualFeatures features = EncodeVisualFeatures(model_, r.input_ids, r.images, r.videos, options_.trace);
    visual_embeds.push_back(features.embeds);
    for (size_t k = 0; k < num_deepstack; ++k) deepstack[k].push_back(features.deepstack[k]);
  }
  const int64_t total = static_cast<int64_t>(all_ids.size());
  const int64_t num_visual = static_cast<int64_t>(visual_rows.size());
  batch.hidden = backend.Allocate(DType::kF32, {total, d});
  if (first_stage) decoder.Embed(backend, all_ids, batch.hidden);
  if (num_visual > 0 && first_stage) {
    batch.visual_rows = Upload(backend, Tensor::FromVectorI64(visual_rows, {num_visual}));
    backend.ScatterAddRows({.src = ConcatRows(backend, visual_embeds), .ids = batch.visual_rows,
                            .out = batch.hidden, .accumulate = false});
    for (size_t k = 0; k < num_deepstack; ++k) batch.deepstack.push_back(ConcatRows(backend, deepstack[k]));
  }
  Trace(backend, options_.trace, "inputs_embeds", 0, batch.hidden);
  std::vector<int64_t> flat_positions;
  for (const auto& axis : positions) flat_positions.insert(flat_positions.end(), axis.begin(), axis.end());
  batch.rope = Upload(backend, MropeTables(cfg.text, flat_positions, total));
  const PipelineStage pipeline(decoder);
  pipeline.Forward(backend, batch);

  std::vector<int64_t> logit_rows;
  for (size_t j = 0; j < n; ++j) {
    const int64_t begin = options_.keep_prefill_logits ? batch.q_starts[j] : batch.q_starts[j + 1] - 1;
    for (int64_t row = begin; row < batch.q_starts[j + 1]; ++row) logit_rows.push_back(row);
  }

  // Sample the first token of each sequence, then decode the active ones together.
  std::vector<Rng> rngs;
  for (size_t i : mine) rngs.emplace_back(requests[i].sampling.seed);
  std::vector<int64_t> lengths(n);  // tokens in the KV cache per sequence
  std::vector<bool> active(n, true);
  auto emit = [&](size_t j, int64_t token) {
    const size_t i = mine[j];
    const SamplingParams& sp = requests[i].sampling;
    if (static_cast<int64_t>(results[i].tokens.size()) >= sp.max_new_tokens) {
      results[i].finish_reason = "length";
      active[j] = false;
      return;
    }
    results[i].tokens.push_back(token);
    if (options_.on_token) options_.on_token(i, token);
    if (std::find(sp.stop_tokens.begin(), sp.stop_tokens.end(), token) != sp.stop_tokens.end()) {
      results[i].finish_reason = "stop";
      active[j] = false;
    } else if (static_cast<int64_t>(results[i].tokens.size()) >= sp.max_new_tokens) {
      results[i].finish_reason = "length";
      active[j] = false;
    }
  };
  // Sampling never needs the full logits (pipeline.SampleRows); only a caller that keeps every
  // prefill logit (eval-case) gathers them.
  auto sample = [&](const Tensor& hidden, const std::vector<int64_t>& rows, const std::vector<int64_t>& seqs) {
    std::vector<const SamplingParams*> params;
    std::vector<Rng*> seq_rngs;
    for (int64_t j : seqs) params.push_back(&requests[mine[j]].sampling), seq_rngs.push_back(&rngs[j]);
    return pipeline.SampleRows(backend, hidden, rows, params, seq_rngs);
  };
  std::vector<int64_t> all_seqs(n);
  for (size_t j = 0; j < n; ++j) {
    all_seqs[j] = static_cast<int64_t>(j);
    lengths[j] = static_cast<int64_t>(requests[mine[j]].input_ids.size());
  }
  if (options_.keep_prefill_logits) {
    const Tensor logits = pipeline.Logits(backend, batch.hidden, logit_rows, options_.trace);  // [rows, V]
    int64_t row = 0;
    for (size_t j = 0; j < n; ++j) {
      const size_t i = mine[j];
      results[i].prefill_logits = logits.Slice(0, row, row + lengths[j]).Clone();
      row += lengths[j];
      emit(j, Sample(logits.data<float>() + (row - 1) * vocab, vocab, requests[i].sampling, rngs[j]));
    }
  } else {
    const std::vector<int64_t> first = sample(batch.hidden, logit_rows, all_seqs);
    for (size_t j = 0; j < n; ++j) emit(j, first[j]);
  }
  if (options_.on_prefill) options_.on_prefill();
  const int stages = GroupSize(shard.pp);
  const int64_t micro = std::min<int64_t>(std::max(options_.micro_batches, 1), stages);
  if (micro > 1 && parallel::MaxOverGroup(shard.stage, static_cast<int64_t>(n)) >= 2) {
    // Micro-batched pipeline: sequence j decodes in micro-batch j % micro, and the stages work
    // on different micro-batches at once. Stage 0 sends each item (one step of one
    // micro-batch: its sequences and positions, then the hidden states) down the pipeline; the
    // last stage samples and returns the tokens to stage 0, which has them by the time that
    // micro-batch comes round again. The token message is small, so the last stage's send
    // completes before stage 0 posts its receive.
    const int stage = shard.pp->rank(), last = stages - 1;
    std::vector<std::vector<int64_t>> in_flight(micro);  // stage 0: each micro-batch's last item
    auto run_item = [&](const std::vector<int64_t>& seqs, const std::vector<int64_t>& positions,
                        const std::vector<int64_t>& ids) -> absl::Status {
      const int64_t m = static_cast<int64_t>(seqs.size());
      DecoderBatch step{.seq_ids = seqs, .q_starts = {0}, .kv = &cache};
      for (int64_t j = 0; j < m; ++j) {
        Q3VL_RETURN_IF_ERROR(cache.Reserve(seqs[j], 1));
        step.q_starts.push_back(j + 1);
      }
      std::vector<int64_t> pos3;
      for (int a = 0; a < 3; ++a) pos3.insert(pos3.end(), positions.begin(), positions.end());
      step.rope = Upload(backend, MropeTables(cfg.text, pos3, m));
      step.hidden = backend.Allocate(DType::kF32, {m, d});
      if (first_stage) decoder.Embed(backend, ids, step.hidden);
      pipeline.Forward(backend, step);  // receives from stage - 1, sends to stage + 1
      ++stats_.decode_steps;
      if (stage == last) {
        std::vector<const SamplingParams*> params;
        std::vector<Rng*> seq_rngs;
        for (int64_t j : seqs) params.push_back(&requests[mine[j]].sampling), seq_rngs.push_back(&rngs[j]);
        std::vector<int64_t> rows(m);
        for (int64_t j = 0; j < m; ++j) rows[j] = j;
        parallel::SendValues(shard.pp_host, 0, decoder.SampleRows(backend, step.hidden, rows, params, seq_rngs));
      }
      return absl::OkStatus();
    };
    // Stage 0: the tokens of item `k` from the last stage.
    auto collect = [&](int64_t k) {
      const std::vector<int64_t>& seqs = in_flight[k % micro];
      const std::vector<int64_t> tokens = parallel::ReceiveValues(shard.pp_host, last);
      Q3VL_CHECK_EQ(tokens.size(), seqs.size());
      for (size_t j = 0; j < seqs.size(); ++j) emit(static_cast<size_t>(seqs[j]), tokens[j]);
    };
    if (stage == 0) {
      for (int64_t item = 0;; ++item) {
        if (item >= micro) collect(item - micro);
        const int64_t remaining = std::count(active.begin(), active.end(), true);
        // Every attention group stops at the same item (they share the MoE exchanges).
        if (parallel::MaxOverGroup(shard.stage, remaining) == 0) {
          parallel::SendValues(shard.pp_host, 1, {});  // stop
          for (int64_t k = std::max<int64_t>(0, item - micro + 1); k < item; ++k) collect(k);
          break;
        }
        std::vector<int64_t> seqs, positions, ids;
        for (size_t j = item % micro; j < n; j += micro) {
          if (!active[j]) continue;
          seqs.push_back(static_cast<int64_t>(j));
          positions.push_back(lengths[j] + results[mine[j]].rope.rope_delta);
          ids.push_back(results[mine[j]].tokens.back());
          ++lengths[j];
        }
        std::vector<int64_t> header = {static_cast<int64_t>(seqs.size())};
        header.insert(header.end(), seqs.begin(), seqs.end());
        header.insert(header.end(), positions.begin(), positions.end());
        parallel::SendValues(shard.pp_host, 1, header);
        in_flight[item % micro] = seqs;
        Q3VL_RETURN_IF_ERROR(run_item(seqs, positions, ids));
      }
    } else {
      while (true) {
        const std::vector<int64_t> header = parallel::ReceiveValues(shard.pp_host, stage - 1);
        if (stage < last) parallel::SendValues(shard.pp_host, stage + 1, header);
        if (header.empty()) break;  // stop
        const int64_t m = header[0];
        Q3VL_CHECK_EQ(static_cast<int64_t>(header.size()), 1 + 2 * m);
        Q3VL_RETURN_IF_ERROR(run_item(std::vector<int64_t>(header.begin() + 1, header.begin() + 1 + m),
                                      std::vector<int64_t>(header.begin() + 1 + m, header.end()), {}));
      }
      // Only stage 0 saw the tokens: take them from there.
      for (size_t j = 0; j < n; ++j) {
        GenerationResult& r = results[mine[j]];
        std::string bytes;
        parallel::BroadcastFrom(shard.pp_host, 0, bytes);
        UnpackResult(bytes, r);
        if (options_.on_token) {
          for (size_t t = 1; t < r.tokens.size(); ++t) options_.on_token(mine[j], r.tokens[t]);
        }
      }
    }
    if (stage == 0) {
      for (size_t j = 0; j < n; ++j) {
        std::string bytes = PackResult(results[mine[j]]);
        parallel::BroadcastFrom(shard.pp_host, 0, bytes);
      }
    }
    if (shard.attn_groups > 1) ShareResults(requests, owner, results);
    return results;
  }
  while (true) {
    DecoderBatch step{.q_starts = {0}, .kv = &cache};
    std::vector<int64_t> ids, step_positions;
    for (size_t j = 0; j < n; ++j) {
      if (!active[j]) continue;
      Q3VL_RETURN_IF_ERROR(cache.Reserve(static_cast<int64_t>(j), 1));
      step.seq_ids.push_back(static_cast<int64_t>(j));
      step.q_starts.push_back(step.q_starts.back() + 1);
      ids.push_back(results[mine[j]].tokens.back());
      step_positions.push_back(lengths[j] + results[mine[j]].rope.rope_delta);
      ++lengths[j];
    }
    const int64_t m = static_cast<int64_t>(ids.size());
    // A group whose sequences are done keeps stepping with zero tokens while another has work.
    if (parallel::MaxOverGroup(shard.stage, m) == 0) break;
    ++stats_.decode_steps;
    std::vector<int64_t> pos3;
    for (int a = 0; a < 3; ++a) pos3.insert(pos3.end(), step_positions.begin(), step_positions.end());
    step.rope = Upload(backend, MropeTables(cfg.text, pos3, m));
    step.hidden = backend.Allocate(DType::kF32, {m, d});
    if (first_stage) decoder.Embed(backend, ids, step.hidden);
    pipeline.Forward(backend, step);
    std::vector<int64_t> rows(m);
    for (int64_t j = 0; j < m; ++j) rows[j] = j;
    const std::vector<int64_t> next = sample(step.hidden, rows, step.seq_ids);
    for (int64_t j = 0; j < m; ++j) emit(static_cast<size_t>(step.seq_ids[j]), next[j]);
  }
  if (shard.attn_groups > 1) ShareResults(requests, owner, results);
  return results;
}

// Every request's result from the group that ran it (its tp rank 0) to every rank of the
// stage; tokens of other groups' requests are reported to on_token here, in request order.
void Generator::ShareResults(const std::vector<GenerationRequest>& requests, const std::vector<int>& owner,
                             std::vector<GenerationResult>& results) const {
  const DecoderShard& shard = model_.decoder().shard();
  const int tp = GroupSize(shard.tp);
  for (size_t i = 0; i < requests.size(); ++i) {
    const int root = owner[i] * tp;  // stage rank of the owning group's first rank
    const bool ran_here = owner[i] == shard.attn_group;
    GenerationResult& r = results[i];
    std::string bytes = ran_here ? PackResult(r) : std::string();
    parallel::BroadcastFrom(shard.stage, root, bytes);
    if (options_.keep_prefill_logits) {
      if (!ran_here) {
        r.prefill_logits = Tensor::Empty(DType::kF32, {static_cast<int64_t>(requests[i].input_ids.size()),
                                                       model_.config().text.vocab_size});
      }
      parallel::BroadcastFrom(shard.stage, root, r.prefill_logits);
    }
    if (ran_here) continue;
    UnpackResult(bytes, r);
    if (options_.on_token) {
      for (int64_t token : r.tokens) options_.on_token(i, token);
    }
  }
}

void ServeVisionFor(const Qwen3VL& model, const std::vector<GenerationRequest>& requests) {
  for (const GenerationRequest& r : requests) {
    if (!r.images.grids.empty()) model.ServeVision(r.images);
    if (!r.videos.grids.empty()) model.ServeVision(r.videos);
  }
}

}  // namespace q3vl::model
