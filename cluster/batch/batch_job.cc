#include "cluster/batch/batch_job.h"

#include <cstring>
#include <deque>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "cluster/engine/request_wire.h"
#include "core/status_macros.h"

namespace q3vl::cluster::batch {
namespace {

using Json = nlohmann::json;
constexpr absl::Duration kIdleWait = absl::Milliseconds(1);

// One input line on its way: prepared for the engine, or already failed.
struct Work {
  InputLine line;
  std::string request_id;
  std::optional<api::PreparedRequest> request;
  std::optional<api::ApiError> error;
};

// The API request of an input line, checked: {"custom_id", "method": "POST", "url", "body"}.
api::ApiResult<api::ApiRequest> ParseLine(const InputLine& line, const BatchJobOptions& options) {
  const Json json = Json::parse(line.text, nullptr, false);
  if (json.is_discarded()) return api::InvalidRequest(absl::StrCat("line ", line.number, " is not valid JSON"));
  if (!json.is_object()) return api::InvalidRequest(absl::StrCat("line ", line.number, " is not a JSON object"));
  if (!line.custom_id) {
    return api::InvalidRequest(absl::StrCat("line ", line.number, " has no custom_id (a string)"), "custom_id");
  }
  if (json.contains("method") && json["method"] != "POST") {
    return api::InvalidRequest("method must be POST", "method");
  }
  const std::string url = json.value("url", Json()).is_string() ? json["url"].get<std::string>() : "";
  const std::optional<api::Endpoint> endpoint = api::EndpointOf(url);
  if (!endpoint) {
    return api::InvalidRequest(absl::StrCat("url \"", url, "\" is not supported (use /v1/chat/completions or /v1/completions)"),
                               "url");
  }
  if (!json.contains("body") || !json["body"].is_object()) return api::InvalidRequest("body must be an object", "body");
  auto parsed = api::ParseRequest(*endpoint, api::Json(json["body"]));
  if (auto* r = std::get_if<api::ApiRequest>(&parsed)) {
    if (r->stream) return api::InvalidRequest("stream is not supported in batch jobs", "stream");
    if (!r->model.empty() && !options.served_names.empty() &&
        std::find(options.served_names.begin(), options.served_names.end(), r->model) == options.served_names.end()) {
      return api::ApiError{.status = 404, .message = absl::StrCat("The model `", r->model, "` does not exist."),
                           .type = "NotFoundError", .param = "model", .code = "model_not_found"};
    }
  }
  return parsed;
}

Work PrepareLine(InputLine line, const BatchJobOptions& options) {
  Work w{.line = std::move(line), .request_id = api::NewRequestId()};
  auto parsed = ParseLine(w.line, options);
  if (auto* e = std::get_if<api::ApiError>(&parsed)) {
    w.error = *e;
    return w;
  }
  auto prepared = api::Prepare(std::get<api::ApiRequest>(std::move(parsed)), options.prepare);
  if (auto* e = std::get_if<api::ApiError>(&prepared)) {
    w.error = *e;
  } else {
    w.request = std::get<api::PreparedRequest>(std::move(prepared));
  }
  return w;
}

// Decoded pixels the leader keeps prepared ahead of the engines at most (one item always fits).
constexpr int64_t kReadyPixelBytes = int64_t{2} << 30;

int64_t PixelBytes(const Work& w) {
  int64_t n = 0;
  if (w.request) {
    for (const Tensor& t : PixelTensors(w.request->input)) n += static_cast<int64_t>(t.size_bytes());
  }
  return n;
}

// Prepares the lines in order on a thread of its own, keeping at most `capacity` ready and at
// most kReadyPixelBytes of their pixels (long videos are large once decoded).
class Preparer {
 public:
  Preparer(std::vector<InputLine> lines, const BatchJobOptions& options, size_t capacity)
      : lines_(std::move(lines)), options_(options), capacity_(capacity), thread_([this] { Run(); }) {}
  ~Preparer() { Stop(); }

  std::optional<Work> TryPop() {
    absl::MutexLock lock(&mu_);
    if (ready_.empty()) return std::nullopt;
    Work w = std::move(ready_.front());
    ready_.pop_front();
    ready_bytes_ -= PixelBytes(w);
    return w;
  }
  // Every line has been taken (or the preparer was stopped and its queue taken).
  bool Exhausted() {
    absl::MutexLock lock(&mu_);
    return (next_ == lines_.size() || stop_) && ready_.empty() && !busy_;
  }
  void Stop() {
    {
      absl::MutexLock lock(&mu_);
      stop_ = true;
    }
    if (thread_.joinable()) thread_.join();
    absl::MutexLock lock(&mu_);
    ready_.clear();
    ready_bytes_ = 0;
  }

 private:
  void Run() {
    while (true) {
      InputLine line;
      {
        absl::MutexLock lock(&mu_);
        auto room = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
          return stop_ || ready_.empty() || (ready_.size() < capacity_ && ready_bytes_ < kReadyPixelBytes);
        };
        mu_.Await(absl::Condition(&room));
        if (stop_ || next_ == lines_.size()) return;
        line = std::move(lines_[next_++]);
        busy_ = true;
      }
      Work w = PrepareLine(std::move(line), options_);
      absl::MutexLock lock(&mu_);
      ready_bytes_ += PixelBytes(w);
      ready_.push_back(std::move(w));
      busy_ = false;
    }
  }

  absl::Mutex mu_;
  std::vector<InputLine> lines_;
  const BatchJobOptions& options_;
  const size_t capacity_;
  size_t next_ ABSL_GUARDED_BY(mu_) = 0;
  bool busy_ ABSL_GUARDED_BY(mu_) = false;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::deque<Work> ready_ ABSL_GUARDED_BY(mu_);
  int64_t ready_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  std::thread thread_;
};

// A finished request's result line and its counts.
struct Result {
  std::string line;
  bool ok = false;
  bool abandoned = false;  // aborted by a stop: no line
  int64_t prompt_tokens = 0;
  int64_t completion_tokens = 0;
};

Json ResultJson(const Result& r) {
  return {{"line", r.line}, {"ok", r.ok}, {"abandoned", r.abandoned}, {"prompt_tokens", r.prompt_tokens},
          {"completion_tokens", r.completion_tokens}};
}
Result ResultFromJson(const Json& j) {
  return {.line = j["line"].get<std::string>(), .ok = j["ok"].get<bool>(), .abandoned = j["abandoned"].get<bool>(),
          .prompt_tokens = j["prompt_tokens"].get<int64_t>(), .completion_tokens = j["completion_tokens"].get<int64_t>()};
}

Result FailedResult(const Work& w) { return {.line = ErrorLine(w.line, w.request_id, *w.error)}; }

// The requests of one replica in its engine: submitted, watched, turned into result lines.
class Worker {
 public:
  Worker(Engine& engine, const model::Tokenizer& tokenizer, const BatchJobOptions& options)
      : engine_(engine), tokenizer_(tokenizer), options_(options) {}

  int64_t in_flight() const { return static_cast<int64_t>(live_.size()); }

  // Submits a prepared request; a refusal is a result at once.
  std::optional<Result> Start(Work w) {
    if (w.error) return FailedResult(w);
    Live live{.work = std::move(w), .created = absl::ToUnixSeconds(absl::Now())};
    for (EngineRequest& r : api::EngineRequests(*live.work.request, live.work.request_id)) {
      const std::string id = r.id;
      auto stream = engine_.Submit(std::move(r));
      if (!stream.ok()) {
        for (const std::string& submitted : live.ids) engine_.Cancel(submitted);
        live.work.error = api::FromStatus(stream.status());
        return FailedResult(live.work);
      }
      live.ids.push_back(id);
      live.streams.push_back(*std::move(stream));
    }
    live.outputs.resize(live.streams.size());
    live_.push_back(std::move(live));
    return std::nullopt;
  }

  // The requests that ended since the last call.
  void Harvest(std::vector<Result>& out) {
    for (auto it = live_.begin(); it != live_.end();) {
      bool done = true;
      for (size_t i = 0; i < it->streams.size(); ++i) {
        while (std::optional<RequestOutput> o = it->streams[i]->Next(absl::ZeroDuration())) {
          Append(it->outputs[i], *std::move(o));
        }
        done = done && it->outputs[i].finish.has_value();
      }
      if (!done) {
        ++it;
        continue;
      }
      out.push_back(Finish(*it));
      it = live_.erase(it);
    }
  }

  void CancelAll() {
    for (const Live& l : live_) {
      for (const std::string& id : l.ids) engine_.Cancel(id);
    }
  }

 private:
  struct Live {
    Work work;
    int64_t created = 0;
    std::vector<std::string> ids;
    std::vector<std::shared_ptr<RequestStream>> streams;
    std::vector<RequestOutput> outputs;
  };

  Result Finish(Live& l) {
    Result r;
    for (const RequestOutput& o : l.outputs) {
      r.prompt_tokens = o.prompt_tokens;
      r.completion_tokens += o.completion_tokens;
      if (o.finish == FinishReason::kAbort) r.abandoned = true;
    }
    if (r.abandoned) return r;
    if (std::optional<api::ApiError> e = api::ChoiceError(l.outputs)) {
      l.work.error = *e;
      r.line = FailedResult(l.work).line;
      return r;
    }
    const api::ApiRequest& api = l.work.request->api;
    const std::string prefix = api.endpoint == api::Endpoint::kChatCompletions ? "chatcmpl-" : "cmpl-";
    r.line = SuccessLine(*l.work.line.custom_id, l.work.request_id,
                         api::ResponseBody(api, prefix + l.work.request_id, l.created, options_.model_name, l.outputs,
                                           tokenizer_));
    r.ok = true;
    return r;
  }

  Engine& engine_;
  const model::Tokenizer& tokenizer_;
  const BatchJobOptions& options_;
  std::vector<Live> live_;
};

// ---- Messages between replica leaders: a JSON header, then the tensors it announces. ----

std::string Pack(const Json& header, const std::vector<Tensor>& tensors = {}) {
  const std::string h = header.dump(-1, ' ', false, Json::error_handler_t::replace);
  const uint64_t n = h.size();
  std::string bytes(reinterpret_cast<const char*>(&n), sizeof(n));
  bytes += h;
  for (const Tensor& t : tensors) bytes.append(static_cast<const char*>(t.raw_data()), t.size_bytes());
  return bytes;
}

absl::StatusOr<Json> Unpack(const std::string& bytes, size_t& offset) {
  uint64_t n = 0;
  if (bytes.size() < sizeof(n)) return absl::DataLossError("a batch message without its header");
  std::memcpy(&n, bytes.data(), sizeof(n));
  if (bytes.size() < sizeof(n) + n) return absl::DataLossError("a truncated batch message");
  Json header = Json::parse(bytes.substr(sizeof(n), n), nullptr, false);
  if (header.is_discarded()) return absl::DataLossError("a batch message whose header is not JSON");
  offset = sizeof(n) + n;
  return header;
}

std::string WorkMessage(const std::vector<Work>& items) {
  Json list = Json::array();
  std::vector<Tensor> tensors;
  for (const Work& w : items) {
    list.push_back({{"number", w.line.number}, {"text", w.line.text}, {"custom_id", *w.line.custom_id},
                    {"request_id", w.request_id}, {"request", RunnerRequestToJson(w.request->input)}});
    for (const Tensor& t : PixelTensors(w.request->input)) tensors.push_back(t);
  }
  return Pack({{"work", list}}, tensors);
}

absl::StatusOr<std::vector<Work>> WorkFromMessage(const Json& header, const std::string& bytes, size_t offset,
                                                  const BatchJobOptions& options) {
  std::vector<Work> out;
  for (const Json& item : header["work"]) {
    Work w{.line = {.number = item["number"].get<int64_t>(), .text = item["text"].get<std::string>(),
                    .custom_id = item["custom_id"].get<std::string>()},
           .request_id = item["request_id"].get<std::string>()};
    auto parsed = ParseLine(w.line, options);  // the leader parsed it so: it succeeds again
    if (auto* e = std::get_if<api::ApiError>(&parsed)) return absl::InternalError(e->message);
    w.request = api::PreparedRequest{.api = std::get<api::ApiRequest>(std::move(parsed)),
                                     .input = RunnerRequestFromJson(item["request"])};
    for (const Tensor& t : PixelTensors(w.request->input)) {
      if (offset + t.size_bytes() > bytes.size()) return absl::DataLossError("a work message shorter than its pixels");
      std::memcpy(t.raw_data(), bytes.data() + offset, t.size_bytes());
      offset += t.size_bytes();
    }
    out.push_back(std::move(w));
  }
  return out;
}

void Count(BatchProgress& p, const Result& r) {
  if (r.abandoned) {
    ++p.abandoned;
    return;
  }
  (r.ok ? p.succeeded : p.failed) += 1;
  p.prompt_tokens += r.prompt_tokens;
  p.completion_tokens += r.completion_tokens;
}

}  // namespace

absl::StatusOr<BatchProgress> RunBatchLeader(Engine& engine, const model::Tokenizer& tokenizer,
                                             std::vector<InputLine> todo, ResultWriter& writer,
                                             parallel::Mailbox* mailbox, const BatchJobOptions& options,
                                             const std::atomic<bool>& stop, const ProgressFn& progress) {
  const absl::Time start = absl::Now();
  const int replicas = mailbox ? mailbox->size() : 1;
  BatchProgress p{.total = static_cast<int64_t>(todo.size()), .per_replica = std::vector<int64_t>(replicas, 0)};
  Preparer preparer(std::move(todo), options, static_cast<size_t>(options.max_concurrency) * (replicas + 1));
  Worker worker(engine, tokenizer, options);
  std::vector<int64_t> owed(replicas, 0), outstanding(replicas, 0);
  absl::Time last_report = absl::InfinitePast();
  std::optional<absl::Time> drain_deadline;
  bool cancelled = false;
  auto record = [&](const Result& r) -> absl::Status {
    if (!r.abandoned) Q3VL_RETURN_IF_ERROR(writer.Append(r.line));
    Count(p, r);
    return absl::OkStatus();
  };
  std::vector<Result> results;
  while (true) {
    if (stop.load() && !drain_deadline) {
      drain_deadline = absl::Now() + options.drain_timeout;
      p.stopped = true;
      preparer.Stop();
      for (int r = 1; r < replicas; ++r) Q3VL_RETURN_IF_ERROR(mailbox->Post(r, Pack({{"stop", true}})));
    }
    // Other replicas: their requests for work and their results.
    while (mailbox != nullptr) {
      Q3VL_ASSIGN_OR_RETURN(std::optional<parallel::MailMessage> m, mailbox->Poll());
      if (!m) break;
      size_t offset = 0;
      Q3VL_ASSIGN_OR_RETURN(Json header, Unpack(m->bytes, offset));
      if (header.contains("want")) owed[m->from] += header["want"].get<int64_t>();
      if (header.contains("results")) {
        for (const Json& j : header["results"]) {
          Q3VL_RETURN_IF_ERROR(record(ResultFromJson(j)));
          --outstanding[m->from];
          ++p.per_replica[m->from];
        }
      }
      if (header.contains("released")) outstanding[m->from] -= header["released"].get<int64_t>();
    }
    for (int r = 1; r < replicas && !drain_deadline; ++r) {
      std::vector<Work> batch;
      while (owed[r] > 0) {
        std::optional<Work> w = preparer.TryPop();
        if (!w) break;
        if (w->error) {  // failed before the engine: its line is written here
          Q3VL_RETURN_IF_ERROR(record(FailedResult(*w)));
          continue;
        }
        batch.push_back(*std::move(w));
        --owed[r];
      }
      if (batch.empty()) continue;
      outstanding[r] += static_cast<int64_t>(batch.size());
      Q3VL_RETURN_IF_ERROR(mailbox->Post(r, WorkMessage(batch)));
    }
    // This replica.
    while (!drain_deadline && worker.in_flight() < options.max_concurrency) {
      std::optional<Work> w = preparer.TryPop();
      if (!w) break;
      const bool failed = w->error.has_value();
      if (std::optional<Result> r = worker.Start(*std::move(w))) {
        Q3VL_RETURN_IF_ERROR(record(*r));
        if (!failed) ++p.per_replica[0];  // refused by the engine
      }
    }
    if (drain_deadline && !cancelled && absl::Now() > *drain_deadline) {
      worker.CancelAll();
      cancelled = true;
    }
    const bool stepped = engine.Step();
    results.clear();
    worker.Harvest(results);
    for (const Result& r : results) Q3VL_RETURN_IF_ERROR(record(r));
    p.per_replica[0] += static_cast<int64_t>(results.size());
    p.seconds = absl::ToDoubleSeconds(absl::Now() - start);
    if (!results.empty() || absl::Now() - last_report > absl::Seconds(1)) {
      progress(p);
      last_report = absl::Now();
    }
    int64_t remote = 0;
    for (int64_t o : outstanding) remote += o;
    if (worker.in_flight() == 0 && remote == 0 && (drain_deadline || preparer.Exhausted())) break;
    if (drain_deadline && absl::Now() > *drain_deadline + absl::Seconds(10)) {
      return absl::DeadlineExceededError(absl::StrCat(remote, " requests sent to other replicas were not accounted for"));
    }
    if (!stepped) {
      engine.KeepAlive();
      absl::SleepFor(kIdleWait);
    }
  }
  for (int r = 1; r < replicas; ++r) Q3VL_RETURN_IF_ERROR(mailbox->Post(r, Pack({{"finish", true}})));
  if (mailbox != nullptr) Q3VL_RETURN_IF_ERROR(mailbox->Flush(absl::Seconds(30)));
  p.seconds = absl::ToDoubleSeconds(absl::Now() - start);
  progress(p);
  return p;
}

absl::Status RunBatchReplica(Engine& engine, const model::Tokenizer& tokenizer, parallel::Mailbox& mailbox,
                             const BatchJobOptions& options, const std::atomic<bool>& stop) {
  Worker worker(engine, tokenizer, options);
  std::deque<Work> queued;
  int64_t asked = 0;  // items asked for and not yet received
  bool finish = false, stopping = false, cancelled = false;
  absl::Time drain_deadline = absl::InfiniteFuture();
  // Enough beyond what runs to cover the leader's answer time (it answers between its own
  // steps), little enough that a replica hoards no work the others could take at the end.
  const int64_t keep = options.max_concurrency + std::max(1, options.max_concurrency / 4);
  std::vector<Result> results;
  while (true) {
    while (true) {
      Q3VL_ASSIGN_OR_RETURN(std::optional<parallel::MailMessage> m, mailbox.Poll());
      if (!m) break;
      size_t offset = 0;
      Q3VL_ASSIGN_OR_RETURN(Json header, Unpack(m->bytes, offset));
      if (header.contains("work")) {
        Q3VL_ASSIGN_OR_RETURN(std::vector<Work> items, WorkFromMessage(header, m->bytes, offset, options));
        asked -= static_cast<int64_t>(items.size());
        for (Work& w : items) queued.push_back(std::move(w));
      }
      if (header.contains("stop")) stopping = true;
      if (header.contains("finish")) finish = true;
    }
    if ((stop.load() || stopping) && drain_deadline == absl::InfiniteFuture()) {
      stopping = true;
      drain_deadline = absl::Now() + options.drain_timeout;
    }
    if (stopping && !queued.empty()) {  // never started: handed back (a rerun runs them)
      Q3VL_RETURN_IF_ERROR(mailbox.Post(0, Pack({{"released", queued.size()}})));
      queued.clear();
    }
    const int64_t have = worker.in_flight() + static_cast<int64_t>(queued.size()) + asked;
    if (!stopping && !finish && have < keep) {
      Q3VL_RETURN_IF_ERROR(mailbox.Post(0, Pack({{"want", keep - have}})));
      asked += keep - have;
    }
    Json done = Json::array();
    while (!stopping && worker.in_flight() < options.max_concurrency && !queued.empty()) {
      Work w = std::move(queued.front());
      queued.pop_front();
      if (std::optional<Result> r = worker.Start(std::move(w))) done.push_back(ResultJson(*r));
    }
    if (stopping && !cancelled && absl::Now() > drain_deadline) {
      worker.CancelAll();
      cancelled = true;
    }
    const bool stepped = engine.Step();
    results.clear();
    worker.Harvest(results);
    for (const Result& r : results) done.push_back(ResultJson(r));
    if (!done.empty()) Q3VL_RETURN_IF_ERROR(mailbox.Post(0, Pack({{"results", done}})));
    if (finish && worker.in_flight() == 0 && queued.empty()) break;
    if (!stepped) {
      engine.KeepAlive();
      absl::SleepFor(kIdleWait);
    }
  }
  return mailbox.Flush(absl::Seconds(30));
}

}  // namespace q3vl::cluster::batch
