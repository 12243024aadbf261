#include "cluster/engine/engine.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "core/check.h"
#include "core/cpu/compute_threads.h"
#include "core/status_macros.h"

namespace q3vl::cluster {

struct Engine::Live {
  int64_t id = 0;
  std::string name;  // the caller's id
  std::shared_ptr<RequestStream> stream;
  std::vector<int64_t> stop_tokens;
  std::vector<std::string> stop;
  size_t max_stop = 0;  // longest stop string
  int64_t min_tokens = 0, max_new_tokens = 0;
  int64_t prompt_tokens = 0, generated = 0;
  int64_t cached_prompt_tokens = 0;  // the prefix cache's hit at the first admission
  std::unique_ptr<model::StreamDecoder> detok;
  std::string text;    // generated text so far (cut at a stop string)
  size_t emitted = 0;  // bytes of text already sent
  absl::Time arrival, scheduled = absl::InfinitePast(), first_token, last_token;
};

Engine::Engine(model::StepRunner& runner, EngineConfig config, const model::Tokenizer* tokenizer, const Clock* clock)
    : runner_(runner),
      config_(std::move(config)),
      tokenizer_(tokenizer),
      clock_(clock != nullptr ? *clock : real_clock_),
      scheduler_(config_.scheduler) {}

Engine::~Engine() { Shutdown(); }

absl::StatusOr<std::shared_ptr<RequestStream>> Engine::Submit(EngineRequest request) {
  model::RunnerRequest& in = request.input;
  if (!request.ignore_eos) {
    in.sampling.stop_tokens.insert(in.sampling.stop_tokens.end(), config_.eos_token_ids.begin(),
                                   config_.eos_token_ids.end());
  }
  if (!request.stop.empty() && tokenizer_ == nullptr) {
    return absl::InvalidArgumentError("stop strings need a tokenizer (this engine produces token ids only)");
  }
  for (const std::string& s : request.stop) {
    if (s.empty()) return absl::InvalidArgumentError("stop strings must not be empty");
  }
  Q3VL_RETURN_IF_ERROR(runner_.Validate(in));
  Q3VL_RETURN_IF_ERROR(scheduler_.CheckFits(static_cast<int64_t>(in.input_ids.size()), in.sampling.max_new_tokens));
  // The prefix-cache keys hash the prompt and its media on the caller's thread, not the loop's.
  std::vector<kv::PageKey> keys;
  if (scheduler_.config().enable_prefix_caching) {
    // Hashed once: the runner's encoder cache reuses these digests.
    if (!in.media_digests && (!in.images.grids.empty() || !in.videos.grids.empty())) {
      in.media_digests = model::DigestMedia(in.images, in.videos);
    }
    keys = runner_.PrefixKeys(in, scheduler_.config().page_size);
  }
  auto stream = std::make_shared<RequestStream>();
  absl::MutexLock lock(&mu_);
  if (stop_) return absl::UnavailableError("the engine is shutting down");
  if (request.id.empty()) request.id = absl::StrCat("req-", next_id_);
  if (ids_.contains(request.id)) return absl::AlreadyExistsError(absl::StrCat("request id '", request.id, "' is in use"));
  if (config_.max_waiting_requests > 0 && num_waiting_ >= config_.max_waiting_requests) {
    return absl::ResourceExhaustedError(absl::StrCat("the queue is full (", num_waiting_, " requests waiting)"));
  }
  const int64_t id = next_id_++;
  ids_[request.id] = id;
  ++num_waiting_;
  pending_.push_back(
      {.id = id, .request = std::move(request), .keys = std::move(keys), .stream = stream, .arrival = clock_.Now()});
  return stream;
}

void Engine::Cancel(const std::string& id) {
  absl::MutexLock lock(&mu_);
  cancels_.push_back(id);
}

void Engine::Intake() {
  std::vector<Pending> pending;
  std::vector<std::string> cancels;
  {
    absl::MutexLock lock(&mu_);
    pending.swap(pending_);
    cancels.swap(cancels_);
  }
  for (Pending& p : pending) {
    auto live = std::make_unique<Live>();
    EngineRequest& r = p.request;
    live->id = p.id;
    live->name = r.id;
    live->stream = p.stream;
    live->stop_tokens = r.input.sampling.stop_tokens;
    live->stop = r.stop;
    for (const std::string& s : r.stop) live->max_stop = std::max(live->max_stop, s.size());
    live->min_tokens = r.input.min_tokens;
    live->max_new_tokens = r.input.sampling.max_new_tokens;
    live->prompt_tokens = static_cast<int64_t>(r.input.input_ids.size());
    if (tokenizer_ != nullptr) live->detok = std::make_unique<model::StreamDecoder>(*tokenizer_, r.skip_special_tokens);
    live->arrival = p.arrival;
    Live& l = *live;
    live_[p.id] = std::move(live);
    const absl::Status added = runner_.Add(p.id, std::move(r.input));
    if (!added.ok()) {
      End(l, {}, FinishReason::kError, added);
      continue;
    }
    scheduler_.Add(p.id, l.prompt_tokens, std::move(p.keys));
  }
  for (const std::string& name : cancels) {
    int64_t id = -1;
    {
      absl::MutexLock lock(&mu_);
      auto it = ids_.find(name);
      if (it != ids_.end()) id = it->second;
    }
    auto it = live_.find(id);
    if (it != live_.end()) End(*it->second, {}, FinishReason::kAbort, absl::CancelledError("cancelled"));
  }
}

bool Engine::Step() {
  Intake();
  const model::StepPlan plan = scheduler_.Schedule();
  if (plan.seqs.empty()) {
    if (!plan.released.empty()) {
      Q3VL_CHECK(runner_.Execute(plan).ok());
      last_sent_ = clock_.Now();
    }
    PublishGauges();
    return !plan.released.empty();
  }
  const absl::Time now = clock_.Now();
  last_sent_ = now;
  for (const model::StepSequence& s : plan.seqs) {
    Live& l = *live_.at(s.request);
    if (l.scheduled == absl::InfinitePast()) {
      l.scheduled = now;
      l.cached_prompt_tokens = s.begin;  // first admission: it starts after the cached prefix
    }
  }
  absl::StatusOr<model::StepOutput> out = runner_.Execute(plan);
  if (!out.ok()) {
    // The step failed as a whole: its requests fail, the others go on.
    for (const model::StepSequence& s : plan.seqs) {
      auto it = live_.find(s.request);
      if (it != live_.end()) End(*it->second, {}, FinishReason::kError, out.status());
    }
    PublishGauges();
    return true;
  }
  Q3VL_CHECK_EQ(out->seqs.size(), plan.seqs.size());
  scheduler_.Commit(plan);
  Emit(plan, *out);
  PublishGauges();
  return true;
}

void Engine::Emit(const model::StepPlan& plan, const model::StepOutput& out) {
  int64_t prompt_done = 0, generated = 0;
  for (size_t i = 0; i < plan.seqs.size(); ++i) {
    const model::StepSequence& s = plan.seqs[i];
    const model::SequenceOutput& o = out.seqs[i];
    auto it = live_.find(s.request);
    if (it == live_.end()) continue;
    Live& l = *it->second;
    RequestOutput delta;
    delta.first_prompt_row = o.first_prompt_row;
    delta.prompt_logprobs = o.prompt_logprobs;
    if (o.prompt_logits.defined()) delta.prompt_logits.push_back(o.prompt_logits);
    bool ended = false;
    if (o.token.has_value()) {
      if (l.generated == 0) prompt_done += l.prompt_tokens;
      if (l.max_new_tokens == 0) {  // prompt only (prompt logprobs): nothing is generated
        End(l, std::move(delta), FinishReason::kLength);
        continue;
      }
      ++generated;
      if (o.logprob.has_value()) delta.logprobs.push_back(*o.logprob);
      ended = AcceptToken(l, *o.token, delta);
    }
    if (ended) continue;
    delta.prompt_tokens = l.prompt_tokens;
    delta.cached_prompt_tokens = l.cached_prompt_tokens;
    delta.completion_tokens = l.generated;
    if (!delta.token_ids.empty() || !delta.prompt_logprobs.empty() || !delta.prompt_logits.empty()) {
      l.stream->Push(std::move(delta));
    }
  }
  metrics_.AddStep(prompt_done, generated);
}

bool Engine::AcceptToken(Live& l, int64_t token, RequestOutput& delta) {
  const absl::Time now = clock_.Now();
  if (l.generated == 0) {
    l.first_token = now;
    metrics_.ObserveTtft(absl::ToDoubleSeconds(now - l.arrival));
  } else {
    metrics_.ObserveInterToken(absl::ToDoubleSeconds(now - l.last_token));
  }
  l.last_token = now;
  ++l.generated;
  delta.token_ids.push_back(token);
  std::optional<FinishReason> finish;
  if (std::find(l.stop_tokens.begin(), l.stop_tokens.end(), token) != l.stop_tokens.end()) {
    finish = FinishReason::kStop;
    delta.stop_reason = absl::StrCat(token);
  } else if (l.detok != nullptr) {
    const size_t before = l.text.size();
    l.text += l.detok->Push(static_cast<int32_t>(token));
    if (!l.stop.empty() && l.generated > l.min_tokens) {
      // A match can start up to max_stop - 1 bytes before the new text.
      const size_t from = before >= l.max_stop ? before - l.max_stop + 1 : 0;
      size_t best = std::string::npos;
      for (const std::string& s : l.stop) {
        const size_t at = l.text.find(s, from);
        if (at < best) best = at, delta.stop_reason = s;
      }
      if (best != std::string::npos) {
        l.text.resize(best);
        finish = FinishReason::kStop;
      }
    }
  }
  if (!finish && l.generated >= l.max_new_tokens) finish = FinishReason::kLength;
  if (finish && *finish == FinishReason::kLength && l.detok != nullptr) l.text += l.detok->Flush();
  // Text that cannot be part of a stop string yet, cut at a character boundary.
  size_t limit = l.text.size();
  if (!finish && l.max_stop > 1) limit = limit >= l.max_stop - 1 ? limit - (l.max_stop - 1) : 0;
  limit = std::max(limit, l.emitted);
  while (limit > l.emitted && limit < l.text.size() && (static_cast<unsigned char>(l.text[limit]) & 0xC0) == 0x80) {
    --limit;
  }
  delta.text = l.text.substr(l.emitted, limit - l.emitted);
  l.emitted = limit;
  if (!finish) return false;
  End(l, std::move(delta), *finish);
  return true;
}

void Engine::End(Live& l, RequestOutput delta, FinishReason reason, absl::Status error) {
  const absl::Time now = clock_.Now();
  if (l.emitted < l.text.size() && reason != FinishReason::kError) delta.text += l.text.substr(l.emitted);
  delta.finish = reason;
  delta.error = std::move(error);
  delta.prompt_tokens = l.prompt_tokens;
  delta.cached_prompt_tokens = l.cached_prompt_tokens;
  delta.completion_tokens = l.generated;
  const absl::Time scheduled = l.scheduled == absl::InfinitePast() ? now : l.scheduled;
  delta.queue_seconds = absl::ToDoubleSeconds(scheduled - l.arrival);
  delta.ttft_seconds = l.generated > 0 ? absl::ToDoubleSeconds(l.first_token - l.arrival) : 0.0;
  delta.e2e_seconds = absl::ToDoubleSeconds(now - l.arrival);
  metrics_.ObserveFinished(FinishReasonName(reason), delta.e2e_seconds, delta.queue_seconds);
  const int64_t id = l.id;
  std::shared_ptr<RequestStream> stream = l.stream;
  {
    absl::MutexLock lock(&mu_);
    ids_.erase(l.name);
  }
  scheduler_.Finish(id);
  runner_.Remove(id);
  live_.erase(id);  // `l` is gone from here on
  stream->Push(std::move(delta));
}

void Engine::PublishGauges() {
  {
    absl::MutexLock lock(&mu_);
    num_waiting_ = static_cast<int64_t>(pending_.size()) + scheduler_.num_waiting();
  }
  metrics_.SetGauges(scheduler_.num_running(), scheduler_.num_waiting(),
                     static_cast<double>(scheduler_.used_pages()) / scheduler_.total_pages(),
                     scheduler_.num_preemptions());
  const model::RunnerCounters counters = runner_.counters();
  metrics_.SetMmCache(counters.mm_cache_queries, counters.mm_cache_hits, counters.vision_seconds);
  metrics_.SetPrefixCache(scheduler_.prefix_queries(), scheduler_.prefix_hits());
  const std::vector<kv::KvEvent> events = scheduler_.TakeKvEvents();
  kv_events_.Append(events);
}

void Engine::Loop() {
  while (true) {
    {
      absl::MutexLock lock(&mu_);
      if (stop_) return;
    }
    if (Step()) continue;
    bool idle = false;
    {
      absl::MutexLock lock(&mu_);
      auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
        return stop_ || !pending_.empty() || !cancels_.empty();
      };
      idle = !mu_.AwaitWithTimeout(absl::Condition(&ready), config_.heartbeat);
    }
    // A failure means a lost follower: the next step fails its requests and says so.
    if (idle) (void)runner_.Heartbeat();
  }
}

void Engine::KeepAlive() {
  const absl::Time now = clock_.Now();
  if (now - last_sent_ < config_.heartbeat) return;
  last_sent_ = now;
  (void)runner_.Heartbeat();  // a failure means a lost follower: the next step says so
}

void Engine::Start() {
  Q3VL_CHECK(!thread_.joinable()) << "Start called twice";
  thread_ = std::thread([this] {
    AdoptComputeThreads();  // the team size the process chose, not libgomp's global default
    Loop();
  });
}

void Engine::Shutdown() {
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
  }
  if (thread_.joinable()) thread_.join();
  Intake();  // requests submitted meanwhile end too
  while (!live_.empty()) End(*live_.begin()->second, {}, FinishReason::kAbort, absl::CancelledError("engine shut down"));
}

}  // namespace q3vl::cluster
