#include "model/model_runner.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "core/check.h"
#include "core/status_macros.h"
#include "model/pipeline_stage.h"
#include "parallel/layers.h"

namespace q3vl::model {
namespace {

// SequenceOutputs as bytes for a broadcast (data-parallel attention groups share them), and back.
class Packer {
 public:
  template <typename T>
  void Put(const T& v) { bytes.append(reinterpret_cast<const char*>(&v), sizeof(T)); }
  template <typename T>
  void PutArray(const T* v, int64_t n) {
    Put(n);
    bytes.append(reinterpret_cast<const char*>(v), n * sizeof(T));
  }
  void Put(const SequenceOutput& o) {
    Put<int64_t>(o.token.value_or(-1));
    Put<int8_t>(o.logprob.has_value());
    if (o.logprob) {
      Put(o.logprob->token);
      Put(o.logprob->logprob);
      Put<int64_t>(static_cast<int64_t>(o.logprob->top.size()));
      for (const auto& [id, lp] : o.logprob->top) Put(id), Put(lp);
    }
    Put(o.first_prompt_row);
    PutArray(o.prompt_logprobs.data(), static_cast<int64_t>(o.prompt_logprobs.size()));
    Put<int64_t>(o.prompt_logits.defined() ? o.prompt_logits.dim(1) : 0);
    PutArray(o.prompt_logits.defined() ? o.prompt_logits.data<float>() : nullptr,
             o.prompt_logits.defined() ? o.prompt_logits.numel() : 0);
  }
  std::string bytes;
};

class Unpacker {
 public:
  explicit Unpacker(const std::string& bytes) : bytes_(bytes) {}
  template <typename T>
  T Get() {
    Q3VL_CHECK_LE(at_ + sizeof(T), bytes_.size()) << "truncated step outputs";
    T v;
    std::memcpy(&v, bytes_.data() + at_, sizeof(T));
    at_ += sizeof(T);
    return v;
  }
  template <typename T>
  void GetArray(T* out, int64_t n) {
    Q3VL_CHECK_LE(at_ + n * sizeof(T), bytes_.size()) << "truncated step outputs";
    if (n > 0) std::memcpy(out, bytes_.data() + at_, n * sizeof(T));
    at_ += n * sizeof(T);
  }
  SequenceOutput GetOutput() {
    SequenceOutput o;
    if (const auto token = Get<int64_t>(); token >= 0) o.token = token;
    if (Get<int8_t>()) {
      TokenLogprob lp{.token = Get<int64_t>(), .logprob = Get<float>()};
      lp.top.resize(Get<int64_t>());
      for (auto& [id, value] : lp.top) id = Get<int64_t>(), value = Get<float>();
      o.logprob = std::move(lp);
    }
    o.first_prompt_row = Get<int64_t>();
    o.prompt_logprobs.resize(Get<int64_t>());
    GetArray(o.prompt_logprobs.data(), static_cast<int64_t>(o.prompt_logprobs.size()));
    const int64_t vocab = Get<int64_t>(), n = Get<int64_t>();
    if (vocab > 0) {
      o.prompt_logits = Tensor::Empty(DType::kF32, {n / vocab, vocab});
      GetArray(o.prompt_logits.data<float>(), n);
    } else {
      GetArray<float>(nullptr, n);
    }
    return o;
  }

 private:
  const std::string& bytes_;
  size_t at_ = 0;
};

// Whether a step's tokens [s.begin, s.begin + s.num_tokens) reach a visual token of the prompt
// (`visual_before`: VisualPrefixCounts of it).
bool ReachesVisual(const StepSequence& s, const std::vector<int64_t>& visual_before, int64_t prompt) {
  return s.begin < prompt && visual_before[std::min(s.begin + s.num_tokens, prompt)] > visual_before[s.begin];
}

}  // namespace

void ModelRunner::ShareOutputs(const StepPlan& plan, StepOutput& out) {
  const DecoderShard& shard = model_.decoder().shard();
  const int tp = shard.tp ? shard.tp->size() : 1;
  for (int g = 0; g < shard.attn_groups; ++g) {
    std::string bytes;
    if (g == shard.attn_group) {
      Packer packer;
      for (size_t i = 0; i < plan.seqs.size(); ++i) {
        if (plan.seqs[i].group == g) packer.Put(out.seqs[i]);
      }
      bytes = std::move(packer.bytes);
    }
    parallel::BroadcastFrom(shard.stage, g * tp, bytes);  // from the group's first rank
    if (g == shard.attn_group) continue;
    Unpacker unpacker(bytes);
    for (size_t i = 0; i < plan.seqs.size(); ++i) {
      if (plan.seqs[i].group == g) out.seqs[i] = unpacker.GetOutput();
    }
  }
}

struct ModelRunner::Batch {
  std::vector<int64_t> ids;             // [T] token ids
  std::vector<int64_t> seq_ids;         // [num_seqs] KV sequences (= request ids)
  std::vector<int64_t> q_starts = {0};  // [num_seqs + 1]
  std::vector<int64_t> positions[3];    // [3][T] M-RoPE t, h, w
  std::vector<int64_t> visual_rows;     // batch rows of visual tokens, in batch order
  std::vector<Tensor> visual_parts;     // per sequence with visual rows: [n_i, D]
  std::vector<std::vector<Tensor>> deepstack_parts;  // per DeepStack layer, per sequence
};

ModelRunner::ModelRunner(const Qwen3VL& model, const ModelRunnerOptions& options)
    : model_(model),
      options_(options),
      cache_({.num_layers = model.decoder().local_layers(), .num_kv_heads = model.decoder().local_kv_heads(),
              .head_dim = model.config().text.head_dim, .page_size = options.page_size,
              .num_pages = options.num_pages, .dtype = options.kv_dtype},
             model.backend()),
      encoder_cache_(options.encoder_cache_tokens > 0 ? new EncoderCache(options.encoder_cache_tokens) : nullptr) {
  Q3VL_CHECK_GT(options.num_pages, 0);
}

absl::Status ModelRunner::Validate(const RunnerRequest& r) const {
  Q3VL_RETURN_IF_ERROR(CheckPrompt(model_.config(), r.input_ids, r.images, r.videos, r.sampling));
  if (r.min_tokens < 0 || r.min_tokens > r.sampling.max_new_tokens) {
    return absl::InvalidArgumentError(absl::StrCat("min_tokens must be in [0, max_tokens = ",
                                                   r.sampling.max_new_tokens, "], got ", r.min_tokens));
  }
  if (r.top_logprobs < -1 || r.top_logprobs > RunnerRequest::kMaxTopLogprobs) {
    return absl::InvalidArgumentError(absl::StrCat("top_logprobs must be in [0, ", RunnerRequest::kMaxTopLogprobs,
                                                   "], got ", r.top_logprobs));
  }
  const int64_t prompt = static_cast<int64_t>(r.input_ids.size());
  if (r.prompt_logprobs && (r.prompt_logprobs_start < 1 || r.prompt_logprobs_start > prompt)) {
    return absl::InvalidArgumentError(absl::StrCat("prompt_logprobs_start must be in [1, ", prompt,
                                                   "] (the prompt's length), got ", r.prompt_logprobs_start));
  }
  return absl::OkStatus();
}

absl::Status ModelRunner::Add(int64_t id, RunnerRequest request) {
  Q3VL_CHECK(!seqs_.contains(id)) << "request " << id << " added twice";
  const ModelConfig& cfg = model_.config();
  auto seq = std::make_unique<Sequence>();
  Q3VL_ASSIGN_OR_RETURN(seq->rope, GetRopeIndex({.input_ids = &request.input_ids,
      .image_grids = &request.images.grids, .video_grids = &request.videos.grids,
      .image_token_id = cfg.image_token_id, .video_token_id = cfg.video_token_id,
      .spatial_merge_size = cfg.vision.spatial_merge_size}));
  seq->tokens = request.input_ids;
  seq->visual_before = VisualPrefixCounts(cfg, request.input_ids);
  seq->rng.seed(request.sampling.seed);
  seq->request = std::move(request);
  seqs_[id] = std::move(seq);
  return absl::OkStatus();
}

RunnerCounters ModelRunner::counters() const {
  RunnerCounters c{.vision_seconds = vision_seconds_};
  if (encoder_cache_ != nullptr) {
    c.mm_cache_queries = encoder_cache_->queries();
    c.mm_cache_hits = encoder_cache_->hits();
  }
  return c;
}

void ModelRunner::Remove(int64_t id) {
  cache_.Release(id);
  seqs_.erase(id);
}

std::vector<kv::PageKey> PromptPageKeys(const ModelConfig& cfg, const RunnerRequest& r, int64_t page_size) {
  if (r.keep_prompt_logits || (r.prompt_logprobs && r.prompt_logprobs_start <= 1)) return {};
  // Each cache unit's placeholder span (encoder_cache.h): an image is one run of image tokens;
  // a video frame group is one run of video tokens (timestamps between groups), h * w / merge^2
  // tokens. Keying a video by group lets videos that share their first frames share pages.
  const int64_t merge = cfg.vision.spatial_merge_size * cfg.vision.spatial_merge_size;
  std::vector<kv::MediaSpan> spans;
  const struct { const VisionInput& input; MediaKind kind; int64_t token; } kinds[] = {
      {r.images, MediaKind::kImage, cfg.image_token_id}, {r.videos, MediaKind::kVideo, cfg.video_token_id}};
  const int64_t n = static_cast<int64_t>(r.input_ids.size());
  for (const auto& k : kinds) {
    if (k.input.grids.empty()) continue;
    const VisionInput units = CacheUnits(k.input, k.kind);
    const std::vector<Digest256> digests =
        r.media_digests ? (k.kind == MediaKind::kImage ? r.media_digests->images : r.media_digests->videos)
                        : DigestMediaItems(units, k.kind);
    Q3VL_CHECK_EQ(digests.size(), units.grids.size()) << "media_digests do not match the request's media";
    int64_t at = 0;
    for (size_t item = 0; item < units.grids.size(); ++item) {
      const GridThw& g = units.grids[item];
      int64_t left = g[0] * g[1] * g[2] / merge;
      kv::MediaSpan span{.digest = digests[item], .begin = -1};
      while (left > 0 && at < n) {
        if (r.input_ids[at] == k.token) {
          if (span.begin < 0) span.begin = at;
          --left;
          span.end = at + 1;
        }
        ++at;
      }
      if (span.begin >= 0) spans.push_back(span);
    }
  }
  std::vector<kv::PageKey> keys = kv::PageKeys(r.input_ids, spans, page_size);
  // Prompt logprobs from position p need row p - 1 computed: only pages before it may hit.
  if (r.prompt_logprobs) keys.resize(std::min<size_t>(keys.size(), (r.prompt_logprobs_start - 1) / page_size));
  return keys;
}

std::vector<kv::PageKey> ModelRunner::PrefixKeys(const RunnerRequest& r, int64_t page_size) const {
  return PromptPageKeys(model_.config(), r, page_size);
}

void ModelRunner::AddSequence(const StepSequence& s, Sequence& seq, Batch& b) {
  const int64_t prompt = static_cast<int64_t>(seq.request.input_ids.size());
  const int64_t n = s.num_tokens, base = b.q_starts.back(), end = s.begin + n;
  Q3VL_CHECK_GT(n, 0);
  // The scheduler names the pages: a sequence new to the cache starts with its cached prefix.
  cache_.Assign(s.request, s.pages, /*cached_tokens=*/s.begin);
  Q3VL_CHECK_EQ(cache_.Length(s.request), s.begin) << "request " << s.request;
  Q3VL_CHECK_LE(end, static_cast<int64_t>(seq.tokens.size())) << "request " << s.request;
  Q3VL_CHECK_LE(cache_.Length(s.request) + n, cache_.Capacity(s.request))
      << "request " << s.request << ": the plan gave too few pages for " << n << " tokens";
  b.ids.insert(b.ids.end(), seq.tokens.begin() + s.begin, seq.tokens.begin() + end);
  for (int a = 0; a < 3; ++a) {
    for (int64_t t = s.begin; t < end; ++t) {
      b.positions[a].push_back(t < prompt ? seq.rope.positions[a * prompt + t] : t + seq.rope.rope_delta);
    }
  }
  b.seq_ids.push_back(s.request);
  b.q_starts.push_back(base + n);
  // Visual rows of this chunk: rows [v0, v1) of the request's feature tables.
  const bool first_stage = model_.decoder().shard().pp == nullptr || model_.decoder().shard().pp->rank() == 0;
  if (!first_stage || s.begin >= prompt) return;
  const int64_t v0 = seq.visual_before[s.begin], v1 = seq.visual_before[std::min(end, prompt)];
  if (v1 == v0) return;
  if (!seq.encoded) {
    seq.features = Encode(seq, options_.trace);
    seq.encoded = true;
  }
  for (int64_t t = s.begin; t < std::min(end, prompt); ++t) {
    if (seq.visual_before[t + 1] > seq.visual_before[t]) b.visual_rows.push_back(base + t - s.begin);
  }
  b.visual_parts.push_back(seq.features.embeds.Slice(0, v0, v1));
  b.deepstack_parts.resize(seq.features.deepstack.size());
  for (size_t k = 0; k < seq.features.deepstack.size(); ++k) {
    b.deepstack_parts[k].push_back(seq.features.deepstack[k].Slice(0, v0, v1));
  }
}

VisualFeatures ModelRunner::Encode(const Sequence& seq, const TraceFn* trace) {
  const absl::Time start = absl::Now();
  VisualFeatures features = EncodeVisualFeatures(model_, seq.request.input_ids, seq.request.images,
                                                 seq.request.videos, trace, encoder_cache_.get(),
                                                 seq.request.media_digests ? &*seq.request.media_digests : nullptr);
  vision_seconds_ += absl::ToDoubleSeconds(absl::Now() - start);
  return features;
}

absl::StatusOr<StepOutput> ModelRunner::Execute(const StepPlan& plan) {
  for (int64_t id : plan.released) cache_.Release(id);
  if (plan.seqs.empty()) return StepOutput{};
  const DecoderShard& shard = model_.decoder().shard();
  if (shard.attn_groups <= 1) return ExecuteLocal(plan);
  // Data-parallel attention: this group's sequences only. Encoding comes first, in plan order
  // over every group's sequences: received features arrive by a collective over all of stage 0
  // (every rank takes every input, in the same order, and drops other groups' features).
  StepPlan local{.step = plan.step};
  const bool first_stage = shard.pp == nullptr || shard.pp->rank() == 0;
  for (const StepSequence& s : plan.seqs) {
    auto it = seqs_.find(s.request);
    Q3VL_CHECK(it != seqs_.end()) << "plan names unknown request " << s.request;
    Sequence& seq = *it->second;
    Q3VL_CHECK(s.group >= 0 && s.group < shard.attn_groups) << "plan puts request " << s.request << " in group "
                                                            << s.group << " of " << shard.attn_groups;
    const bool mine = s.group == shard.attn_group;
    if (mine) local.seqs.push_back(s);
    const int64_t prompt = static_cast<int64_t>(seq.request.input_ids.size());
    if (!first_stage || seq.encoded || !ReachesVisual(s, seq.visual_before, prompt)) continue;
    if (!mine && !model_.vision_is_collective()) continue;
    VisualFeatures features = Encode(seq, mine ? options_.trace : nullptr);
    if (mine) seq.features = std::move(features);
    seq.encoded = true;
  }
  const StepOutput mine = ExecuteLocal(local);
  StepOutput out;
  out.seqs.resize(plan.seqs.size());
  for (size_t i = 0, j = 0; i < plan.seqs.size(); ++i) {
    if (plan.seqs[i].group == shard.attn_group) out.seqs[i] = mine.seqs[j++];
  }
  ShareOutputs(plan, out);
  return out;
}

StepOutput ModelRunner::ExecuteLocal(const StepPlan& plan) {
  StepOutput out;
  tokens_run_ += plan.num_tokens();
  step_trace_ = nullptr;
  for (const StepSequence& s : plan.seqs) {
    if (s.begin < static_cast<int64_t>(seqs_.at(s.request)->request.input_ids.size())) step_trace_ = options_.trace;
  }
  Backend& backend = model_.backend();
  const ModelConfig& cfg = model_.config();
  const TextDecoder& decoder = model_.decoder();
  Batch b;
  for (const StepSequence& s : plan.seqs) {
    auto it = seqs_.find(s.request);
    Q3VL_CHECK(it != seqs_.end()) << "plan names unknown request " << s.request;
    AddSequence(s, *it->second, b);
  }
  const int64_t total = b.q_starts.back(), d = cfg.text.hidden_size;
  const bool first_stage = decoder.shard().pp == nullptr || decoder.shard().pp->rank() == 0;
  DecoderBatch batch{.seq_ids = b.seq_ids, .q_starts = b.q_starts, .kv = &cache_, .trace = step_trace_};
  batch.hidden = backend.Allocate(DType::kF32, {total, d});
  if (first_stage) decoder.Embed(backend, b.ids, batch.hidden);
  if (!b.visual_rows.empty()) {
    const int64_t nv = static_cast<int64_t>(b.visual_rows.size());
    batch.visual_rows = Upload(backend, Tensor::FromVectorI64(b.visual_rows, {nv}));
    backend.ScatterAddRows({.src = ConcatRows(backend, b.visual_parts), .ids = batch.visual_rows,
                            .out = batch.hidden, .accumulate = false});
    for (const std::vector<Tensor>& parts : b.deepstack_parts) batch.deepstack.push_back(ConcatRows(backend, parts));
  }
  Trace(backend, step_trace_, "inputs_embeds", 0, batch.hidden);
  std::vector<int64_t> flat;
  for (const auto& axis : b.positions) flat.insert(flat.end(), axis.begin(), axis.end());
  batch.rope = Upload(backend, MropeTables(cfg.text, flat, total));
  PipelineStage(decoder).Forward(backend, batch);
  SampleAndReport(plan, batch.hidden, b.q_starts, out);
  return out;
}

void ModelRunner::SampleAndReport(const StepPlan& plan, const Tensor& hidden, const std::vector<int64_t>& q_starts,
                                  StepOutput& out) {
  Backend& backend = model_.backend();
  const int64_t vocab = model_.config().text.vocab_size;
  const size_t n = plan.seqs.size();
  out.seqs.resize(n);
  // Rows whose whole logits come to the host, and rows sampled from candidates.
  std::vector<int64_t> full_rows, fast_rows, fast_seqs;
  std::vector<int64_t> prompt_first(n, 0), prompt_end(n, 0), full_at(n, -1);
  for (size_t i = 0; i < n; ++i) {
    const StepSequence& s = plan.seqs[i];
    Sequence& q = *seqs_.at(s.request);
    const RunnerRequest& r = q.request;
    const int64_t prompt = static_cast<int64_t>(r.input_ids.size());
    // Row t gives log p(prompt[t + 1]): prompt logprobs need rows from prompt_logprobs_start - 1.
    const int64_t wanted = r.keep_prompt_logits ? 0 : r.prompt_logprobs_start - 1;
    const int64_t first = std::max({s.begin, q.prompt_rows_done, wanted}), end = std::min(s.begin + s.num_tokens, prompt);
    if ((r.keep_prompt_logits || r.prompt_logprobs) && first < end) {
      prompt_first[i] = first;
      prompt_end[i] = end;
      for (int64_t t = first; t < end; ++t) full_rows.push_back(q_starts[i] + t - s.begin);
      q.prompt_rows_done = end;
    }
    if (!s.sample) continue;
    const int64_t row = q_starts[i + 1] - 1;
    const int64_t generated = static_cast<int64_t>(q.tokens.size()) - prompt;
    const bool mask = generated < r.min_tokens && !r.sampling.stop_tokens.empty();
    if (r.top_logprobs >= 0 || mask || r.keep_prompt_logits) {
      auto at = std::find(full_rows.begin(), full_rows.end(), row);
      full_at[i] = at - full_rows.begin();
      if (at == full_rows.end()) full_rows.push_back(row);
    } else {
      fast_rows.push_back(row);
      fast_seqs.push_back(static_cast<int64_t>(i));
    }
  }
  Tensor logits;  // [full_rows, V] host
  const PipelineStage stage(model_.decoder());
  if (!full_rows.empty()) logits = stage.Logits(backend, hidden, full_rows, step_trace_);
  auto row_of = [&](int64_t k) { return logits.data<float>() + k * vocab; };
  int64_t next_full = 0;  // full_rows are in sequence order: prompt rows, then the sampled row
  for (size_t i = 0; i < n; ++i) {
    const StepSequence& s = plan.seqs[i];
    Sequence& q = *seqs_.at(s.request);
    const RunnerRequest& r = q.request;
    SequenceOutput& o = out.seqs[i];
    const int64_t rows = prompt_end[i] - prompt_first[i];
    if (rows > 0) {
      o.first_prompt_row = prompt_first[i];
      if (r.keep_prompt_logits) o.prompt_logits = logits.Slice(0, next_full, next_full + rows).Clone();
      if (r.prompt_logprobs) {
        for (int64_t t = prompt_first[i]; t < prompt_end[i] && t + 1 < static_cast<int64_t>(r.input_ids.size()); ++t) {
          o.prompt_logprobs.push_back(LogprobOf(row_of(next_full + t - prompt_first[i]), vocab, r.input_ids[t + 1], 0).logprob);
        }
      }
      next_full += rows;
    }
    if (!s.sample || full_at[i] < 0) continue;
    if (full_at[i] == static_cast<int64_t>(next_full)) ++next_full;  // a row of its own
    const float* raw = row_of(full_at[i]);
    std::vector<float> masked(raw, raw + vocab);
    const int64_t generated = static_cast<int64_t>(q.tokens.size()) - static_cast<int64_t>(r.input_ids.size());
    if (generated < r.min_tokens) {
      for (int64_t stop : r.sampling.stop_tokens) {
        if (stop >= 0 && stop < vocab) masked[stop] = -std::numeric_limits<float>::infinity();
      }
    }
    const int64_t token = Sample(masked.data(), vocab, r.sampling, q.rng);
    o.token = token;
    if (r.top_logprobs >= 0) o.logprob = LogprobOf(raw, vocab, token, r.top_logprobs);
    q.tokens.push_back(token);
  }
  if (fast_rows.empty()) return;
  std::vector<const SamplingParams*> params;
  std::vector<Rng*> rngs;
  for (int64_t i : fast_seqs) {
    Sequence& q = *seqs_.at(plan.seqs[i].request);
    params.push_back(&q.request.sampling);
    rngs.push_back(&q.rng);
  }
  const std::vector<int64_t> tokens = stage.SampleRows(backend, hidden, fast_rows, params, rngs);
  for (size_t j = 0; j < fast_seqs.size(); ++j) {
    out.seqs[fast_seqs[j]].token = tokens[j];
    seqs_.at(plan.seqs[fast_seqs[j]].request)->tokens.push_back(tokens[j]);
  }
}

std::vector<int64_t> VisualPrefixCounts(const ModelConfig& config, const std::vector<int64_t>& ids) {
  std::vector<int64_t> out = {0};
  for (int64_t id : ids) {
    out.push_back(out.back() + (id == config.image_token_id || id == config.video_token_id ? 1 : 0));
  }
  return out;
}

absl::Status VisionStageRunner::Validate(const RunnerRequest& r) const {
  return CheckPrompt(model_.config(), r.input_ids, r.images, r.videos, r.sampling);
}

absl::Status VisionStageRunner::Add(int64_t id, RunnerRequest request) {
  Sequence& seq = seqs_[id];
  seq.visual_before = VisualPrefixCounts(model_.config(), request.input_ids);
  seq.request = std::move(request);
  return absl::OkStatus();
}

absl::StatusOr<StepOutput> VisionStageRunner::Execute(const StepPlan& plan) {
  StepOutput out;
  out.seqs.resize(plan.seqs.size());
  for (const StepSequence& s : plan.seqs) {
    auto it = seqs_.find(s.request);
    Q3VL_CHECK(it != seqs_.end()) << "plan names unknown request " << s.request;
    Sequence& seq = it->second;
    const int64_t prompt = static_cast<int64_t>(seq.request.input_ids.size());
    if (seq.encoded || !ReachesVisual(s, seq.visual_before, prompt)) continue;
    ServeVisualFeatures(model_, seq.request.images, seq.request.videos, encoder_cache_.get());
    seq.encoded = true;
  }
  return out;
}

TokenLogprob LogprobOf(const float* logits, int64_t vocab, int64_t token, int top) {
  const float max = *std::max_element(logits, logits + vocab);
  double sum = 0.0;
  for (int64_t i = 0; i < vocab; ++i) sum += std::exp(static_cast<double>(logits[i]) - max);
  const double lse = max + std::log(sum);
  TokenLogprob out{.token = token, .logprob = static_cast<float>(logits[token] - lse)};
  if (top <= 0) return out;
  std::vector<int64_t> order(vocab);
  std::iota(order.begin(), order.end(), 0);
  const int64_t k = std::min<int64_t>(top, vocab);
  std::partial_sort(order.begin(), order.begin() + k, order.end(), [&](int64_t a, int64_t b) {
    return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
  });
  for (int64_t j = 0; j < k; ++j) out.top.emplace_back(order[j], static_cast<float>(logits[order[j]] - lse));
  return out;
}

}  // namespace q3vl::model
