#include "cluster/coordinator/coordinator.h"

#include <deque>
#include <iostream>
#include <optional>
#include <set>

#include <grpcpp/grpcpp.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "cluster/control/wire.h"
#include "model/model_runner.h"

namespace q3vl::cluster::coordinator {

namespace pb = ::q3vl::control::v1;
using control::FromGrpcStatus;
using control::FromProto;
using control::KeyFromBytes;

namespace {

// Keys as the control plane carries them (32 bytes each; others are skipped) for the index.
std::vector<IndexKey> IndexKeys(const google::protobuf::RepeatedPtrField<std::string>& bytes) {
  std::vector<IndexKey> keys;
  keys.reserve(bytes.size());
  for (const std::string& b : bytes) {
    kv::PageKey k;
    if (KeyFromBytes(b, k)) keys.push_back(ToIndexKey(k));
  }
  return keys;
}

}  // namespace

struct Coordinator::Slot {
  std::string id, incarnation, address, http_address, model;
  bool connected = false;
  bool draining = false;
  absl::Time last_seen;
  int64_t max_seq_tokens = 0;
  int64_t running = 0, waiting = 0, kv_pages_used = 0, kv_pages_total = 0;
  int64_t in_flight = 0, pending_prefill_pages = 0, routed_total = 0;
  uint64_t next_seq = 0;
  bool awaiting_snapshot = false;
  std::shared_ptr<pb::Replica::Stub> stub;
  std::shared_ptr<Session> session;
  std::set<Forward*> forwards;  // forwarded calls in flight there
};

// A replica's session (Connect): reads its reports, writes directives one at a time.
struct Coordinator::Session : grpc::ServerBidiReactor<pb::ReplicaReport, pb::Directive> {
  Coordinator* co = nullptr;
  std::shared_ptr<Session> self;  // released by OnDone
  int slot = -1;                  // set by its Hello
  pb::ReplicaReport in;
  absl::Mutex mu;
  std::deque<pb::Directive> out ABSL_GUARDED_BY(mu);
  bool writing ABSL_GUARDED_BY(mu) = false;
  bool finished ABSL_GUARDED_BY(mu) = false;

  void Begin() { StartRead(&in); }
  void Send(pb::Directive d) {
    pb::Directive* next = nullptr;
    {
      absl::MutexLock lock(&mu);
      if (finished) return;
      out.push_back(std::move(d));
      if (writing) return;
      writing = true;
      next = &out.front();
    }
    StartWrite(next);
  }
  void OnWriteDone(bool ok) override {
    pb::Directive* next = nullptr;
    {
      absl::MutexLock lock(&mu);
      out.pop_front();
      writing = false;
      if (!ok || finished || out.empty()) return;
      writing = true;
      next = &out.front();
    }
    StartWrite(next);
  }
  void End(grpc::Status status) {
    {
      absl::MutexLock lock(&mu);
      if (finished) return;
      finished = true;
    }
    Finish(status);
  }
  void OnReadDone(bool ok) override;
  void OnDone() override { self.reset(); }
};

class Coordinator::Service final : public pb::Coordinator::CallbackService {
 public:
  explicit Service(Coordinator* co) : co_(co) {}
  grpc::ServerBidiReactor<pb::ReplicaReport, pb::Directive>* Connect(grpc::CallbackServerContext* context) override {
    auto s = std::make_shared<Session>();
    s->co = co_;
    s->self = s;
    s->Begin();
    return s.get();
  }

 private:
  Coordinator* co_;
};

// One coordinator call: its choices' streams, and the attempt (forwarded call) serving it.
struct Coordinator::Call {
  std::string key;
  pb::GenerateRequest request;
  api::Json body;
  std::vector<IndexKey> keys;
  int64_t prompt_pages = 0, need_tokens = 0;
  absl::Time start;
  Streams streams;

  absl::Mutex mu;
  absl::CondVar cv;
  Forward* attempt ABSL_GUARDED_BY(mu) = nullptr;
  std::set<int> tried ABSL_GUARDED_BY(mu);
  enum class Phase { kPending, kAccepted, kFailed } phase ABSL_GUARDED_BY(mu) = Phase::kPending;
  api::ApiError error ABSL_GUARDED_BY(mu);
  std::vector<bool> ended ABSL_GUARDED_BY(mu);
  bool any_output ABSL_GUARDED_BY(mu) = false;
  bool cancelled ABSL_GUARDED_BY(mu) = false;
};

// One attempt: the call forwarded to one replica, its chunks read as they come.
class Coordinator::Forward final : public grpc::ClientReadReactor<pb::GenerateChunk> {
 public:
  Forward(Coordinator* co, std::shared_ptr<Call> call, int slot, int64_t pending_pages)
      : co_(co), call_(std::move(call)), slot_(slot), pending_pages_(pending_pages) {}
  grpc::ClientContext context;
  bool replica_down = false;  // cancelled because its replica was marked down (guarded by co->mu_)

  void Begin(pb::Replica::Stub& stub, const pb::GenerateRequest& request) {
    request_ = request;
    stub.async()->Generate(&context, &request_, this);
    StartRead(&in_);
    StartCall();
  }

  void OnReadDone(bool ok) override {
    if (!ok) return;  // OnDone follows
    if (in_.has_accepted()) {
      absl::MutexLock lock(&call_->mu);
      if (call_->phase == Call::Phase::kPending) call_->phase = Call::Phase::kAccepted;
      call_->cv.SignalAll();
    } else if (in_.has_output()) {
      const int choice = in_.output().choice();
      RequestOutput o = FromProto(in_.output());
      bool first = false;
      std::shared_ptr<RequestStream> stream;
      {
        absl::MutexLock lock(&call_->mu);
        if (choice >= 0 && static_cast<size_t>(choice) < call_->streams.size() && !call_->ended[choice]) {
          first = !call_->any_output;
          call_->any_output = true;
          if (o.finish) call_->ended[choice] = true;
          stream = call_->streams[choice];
        }
      }
      if (first) {
        co_->FirstOutput(slot_, pending_pages_);
        pending_pages_ = 0;
        co_->metrics_.ObserveTtft(absl::ToDoubleSeconds(absl::Now() - call_->start));
      }
      if (stream) {
        co_->metrics_.AddStep(first ? o.prompt_tokens : 0, static_cast<int64_t>(o.token_ids.size()));
        if (o.finish) {
          co_->metrics_.ObserveFinished(FinishReasonName(*o.finish), absl::ToDoubleSeconds(absl::Now() - call_->start),
                                        o.queue_seconds);
        }
        stream->Push(std::move(o));
      }
    }
    StartRead(&in_);
  }

  void OnDone(const grpc::Status& status) override {
    bool down;
    {
      absl::MutexLock lock(&co_->mu_);
      Slot& s = *co_->slots_[slot_];  // slots are never removed
      --s.in_flight;
      s.pending_prefill_pages -= pending_pages_;
      s.forwards.erase(this);
      down = replica_down;
    }
    co_->AttemptDone(call_, this, status, down);
    delete this;
  }

 private:
  Coordinator* co_;
  std::shared_ptr<Call> call_;
  int slot_;
  int64_t pending_pages_;
  pb::GenerateRequest request_;
  pb::GenerateChunk in_;
};

void Coordinator::Session::OnReadDone(bool ok) {
  if (!ok) {
    {
      absl::MutexLock lock(&co->mu_);
      if (slot >= 0 && co->slots_[slot]->session.get() == this) co->MarkDown(slot, "its session ended");
    }
    End(grpc::Status::OK);
    return;
  }
  std::optional<pb::Directive> reply;
  std::shared_ptr<Session> replaced;
  {
    absl::MutexLock lock(&co->mu_);
    const absl::Time now = absl::Now();
    if (in.has_hello()) {
      const pb::Hello& h = in.hello();
      if (h.page_size() != co->options_.page_size) {
        reply.emplace();
        reply->mutable_refused()->set_reason(absl::StrCat("its KV page size is ", h.page_size(),
                                                          "; this coordinator routes by pages of ",
                                                          co->options_.page_size, " tokens (--kv-page-size)"));
      } else if (h.replica_id().empty() || h.address().empty()) {
        reply.emplace();
        reply->mutable_refused()->set_reason("a replica must name itself and its address");
      } else {
        int s = -1;
        for (size_t i = 0; i < co->slots_.size(); ++i) {
          if (co->slots_[i]->id == h.replica_id()) s = static_cast<int>(i);
        }
        if (s < 0) {
          if (co->slots_.size() >= 65535) {
            reply.emplace();
            reply->mutable_refused()->set_reason("the coordinator has 65535 replicas");
          } else {
            s = static_cast<int>(co->slots_.size());
            co->slots_.push_back(std::make_unique<Slot>());
            co->slots_.back()->id = h.replica_id();
          }
        }
        if (s >= 0) {
          Slot& sl = *co->slots_[s];
          if (sl.session && sl.session.get() != this) replaced = sl.session;
          if (sl.address != h.address() || !sl.stub) {
            grpc::ChannelArguments args;
            args.SetMaxReceiveMessageSize(256 << 20);
            sl.stub = pb::Replica::NewStub(
                grpc::CreateCustomChannel(h.address(), grpc::InsecureChannelCredentials(), args));
          }
          sl.incarnation = h.incarnation();
          sl.address = h.address();
          sl.http_address = h.http_address();
          sl.model = h.model();
          sl.max_seq_tokens = h.max_seq_tokens();
          sl.session = self;
          sl.connected = true;
          sl.last_seen = now;
          sl.running = h.load().running();
          sl.waiting = h.load().waiting();
          sl.kv_pages_used = h.load().kv_pages_used();
          sl.kv_pages_total = h.load().kv_pages_total();
          sl.draining = h.load().draining();
          const std::vector<IndexKey> keys = IndexKeys(h.snapshot().keys());
          co->index_.Reset(s, keys);
          sl.next_seq = h.snapshot().seq() + 1;
          sl.awaiting_snapshot = false;
          slot = s;
          reply.emplace();
          reply->mutable_welcome();
          std::cerr << "q3vl coordinator: replica " << sl.id << " joined (" << sl.address << ", " << keys.size()
                    << " cached pages, " << sl.max_seq_tokens << " tokens per sequence)" << std::endl;
        }
      }
    } else if (slot >= 0 && co->slots_[slot]->session.get() == this) {
      Slot& sl = *co->slots_[slot];
      sl.last_seen = now;
      if (in.has_heartbeat()) {
        const pb::Heartbeat& hb = in.heartbeat();
        sl.running = hb.load().running();
        sl.waiting = hb.load().waiting();
        sl.kv_pages_used = hb.load().kv_pages_used();
        sl.kv_pages_total = hb.load().kv_pages_total();
        if (sl.draining != hb.load().draining()) {
          std::cerr << "q3vl coordinator: replica " << sl.id << (hb.load().draining() ? " is draining" : " takes work again")
                    << std::endl;
        }
        sl.draining = hb.load().draining();
        const pb::KvEvents& kv = hb.kv();
        if (!sl.awaiting_snapshot && kv.events_size() > 0) {
          if (kv.first_seq() > sl.next_seq) {  // events were lost: start again from a snapshot
            sl.awaiting_snapshot = true;
            reply.emplace();
            reply->mutable_resync();
          } else {
            uint64_t seq = kv.first_seq();
            for (const pb::KvEvent& e : kv.events()) {
              if (seq++ < sl.next_seq) continue;  // seen already
              const std::vector<IndexKey> keys = IndexKeys(e.keys());
              if (e.stored()) {
                co->index_.Store(slot, keys);
              } else {
                co->index_.Remove(slot, keys);
              }
            }
            sl.next_seq = std::max(sl.next_seq, seq);
          }
        }
      } else if (in.has_snapshot()) {
        co->index_.Reset(slot, IndexKeys(in.snapshot().keys()));
        sl.next_seq = in.snapshot().seq() + 1;
        sl.awaiting_snapshot = false;
      }
    }
  }
  if (replaced) replaced->End(grpc::Status(grpc::StatusCode::ABORTED, "replaced by a new session of the replica"));
  if (reply) {
    const bool refused = reply->has_refused();
    if (refused) {
      std::cerr << "q3vl coordinator: refused a replica: " << reply->refused().reason() << std::endl;
    }
    Send(*std::move(reply));
    if (refused) {
      End(grpc::Status(grpc::StatusCode::FAILED_PRECONDITION, "refused"));
      return;
    }
  }
  StartRead(&in);
}

Coordinator::Coordinator(const model::ModelConfig& config, CoordinatorOptions options)
    : config_(config),
      options_(options),
      service_(std::make_unique<Service>(this)),
      router_(options.router),
      decision_seconds_({1e-6, 2e-6, 5e-6, 1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 1e-2}) {
  monitor_ = std::thread([this] { Monitor(); });
}

Coordinator::~Coordinator() { Shutdown(); }

grpc::Service* Coordinator::service() { return service_.get(); }

void Coordinator::Shutdown() {
  std::vector<std::shared_ptr<Session>> sessions;
  {
    absl::MutexLock lock(&mu_);
    if (stop_) return;
    stop_ = true;
    for (auto& s : slots_) {
      for (Forward* f : s->forwards) f->context.TryCancel();
      if (s->session) sessions.push_back(s->session);
    }
  }
  for (auto& s : sessions) s->End(grpc::Status(grpc::StatusCode::UNAVAILABLE, "the coordinator is stopping"));
  if (monitor_.joinable()) monitor_.join();
}

void Coordinator::MarkDown(int slot, const std::string& why) {
  Slot& s = *slots_[slot];
  if (!s.connected) return;
  s.connected = false;
  s.session.reset();
  index_.Drop(slot);
  std::cerr << "q3vl coordinator: replica " << s.id << " is down (" << why << "); " << s.forwards.size()
            << " requests in flight there" << std::endl;
}

void Coordinator::Monitor() {
  for (;;) {
    std::vector<std::shared_ptr<Session>> kill;
    {
      absl::MutexLock lock(&mu_);
      auto stopped = [this]() ABSL_SHARED_LOCKS_REQUIRED(mu_) { return stop_; };
      mu_.AwaitWithTimeout(absl::Condition(&stopped), absl::Milliseconds(200));
      if (stop_) return;
      const absl::Time now = absl::Now();
      for (size_t i = 0; i < slots_.size(); ++i) {
        Slot& s = *slots_[i];
        if (!s.connected || now - s.last_seen <= options_.heartbeat_timeout) continue;
        if (s.session) kill.push_back(s.session);
        // A replica that stopped answering: what it was running will not come back.
        for (Forward* f : s.forwards) {
          f->replica_down = true;
          f->context.TryCancel();
        }
        MarkDown(static_cast<int>(i), absl::StrCat("no heartbeat for ", absl::FormatDuration(now - s.last_seen)));
      }
    }
    for (auto& s : kill) s->End(grpc::Status(grpc::StatusCode::UNAVAILABLE, "missed its heartbeats"));
  }
}

absl::StatusOr<std::pair<int, int64_t>> Coordinator::Route(Call& call) {
  std::set<int> tried;
  {
    absl::MutexLock lock(&call.mu);
    tried = call.tried;
  }
  absl::MutexLock lock(&mu_);
  if (stop_) return absl::UnavailableError("the coordinator is stopping");
  std::vector<ReplicaLoad> loads(slots_.size());
  for (size_t i = 0; i < slots_.size(); ++i) {
    const Slot& s = *slots_[i];
    loads[i] = {.routable = s.connected && !s.draining && !tried.contains(static_cast<int>(i)),
                .max_seq_tokens = s.max_seq_tokens,
                .in_flight = s.in_flight,
                .pending_prefill_pages = s.pending_prefill_pages,
                .kv_pages_used = s.kv_pages_used};
  }
  const absl::Time t0 = absl::Now();
  auto d = router_.Choose({.keys = call.keys, .prompt_pages = call.prompt_pages, .need_tokens = call.need_tokens}, loads,
                          index_);
  decision_seconds_.Observe(absl::ToDoubleSeconds(absl::Now() - t0));
  if (!d.ok()) return d.status();
  Slot& s = *slots_[d->replica];
  ++s.in_flight;
  ++s.routed_total;
  const int64_t pending = std::max<int64_t>(0, call.prompt_pages - d->cached_pages);
  s.pending_prefill_pages += pending;
  routed_prompt_pages_ += call.prompt_pages;
  routed_cached_pages_ += d->cached_pages;
  fallbacks_total_ += d->fell_back ? 1 : 0;
  return std::make_pair(d->replica, pending);
}

void Coordinator::StartAttempt(const std::shared_ptr<Call>& call, int slot, int64_t pending_pages) {
  std::shared_ptr<pb::Replica::Stub> stub;
  std::string model;
  Forward* f = nullptr;
  {
    absl::MutexLock lock(&mu_);
    Slot& s = *slots_[slot];
    stub = s.stub;
    model = s.model;
    f = new Forward(this, call, slot, pending_pages);
    s.forwards.insert(f);
  }
  // The body (megabytes with inline media) is copied and written outside the coordinator's lock.
  pb::GenerateRequest request = call->request;
  api::Json body = call->body;
  body["model"] = model;  // checked here already; the replica's own name for it
  request.set_body(api::Dump(body));
  {
    absl::MutexLock lock(&call->mu);
    call->attempt = f;
    call->tried.insert(slot);
  }
  f->Begin(*stub, request);
}

void Coordinator::FirstOutput(int slot, int64_t pending_pages) {
  absl::MutexLock lock(&mu_);
  if (static_cast<size_t>(slot) < slots_.size()) slots_[slot]->pending_prefill_pages -= pending_pages;
}



namespace {

// Worth another replica: it never took the request, or went away before any output.
bool Retryable(const api::ApiError& e) { return e.status == 503 || e.status == 429 || e.status == 500; }

}  // namespace

void Coordinator::AttemptDone(const std::shared_ptr<Call>& call, Forward* attempt, const grpc::Status& status,
                              bool replica_down) {
  std::vector<std::shared_ptr<RequestStream>> to_end;
  RequestOutput end;
  bool retry = false;
  {
    absl::MutexLock lock(&call->mu);
    if (call->attempt == attempt) call->attempt = nullptr;
    bool all_ended = true;
    for (bool e : call->ended) all_ended &= e;
    if (all_ended && call->phase == Call::Phase::kAccepted) return;
    api::ApiError error = FromGrpcStatus(status);
    if (replica_down) error = {.status = 503, .message = "the replica stopped answering", .type = "service_unavailable"};
    if (status.ok()) {  // the replica ended the call without ending every choice
      error = {.status = 503, .message = "the replica ended the request early", .type = "service_unavailable"};
    }
    if (call->cancelled) {
      end.finish = FinishReason::kAbort;
      end.error = absl::CancelledError("cancelled");
    } else if (!call->any_output && Retryable(error) &&
               static_cast<int>(call->tried.size()) < options_.max_attempts) {
      retry = true;
    } else if (call->phase == Call::Phase::kPending) {
      call->phase = Call::Phase::kFailed;
      call->error = error;
      call->cv.SignalAll();
      return;
    } else {
      end.finish = FinishReason::kError;
      end.error = absl::UnavailableError(absl::StrCat("the replica failed mid-request: ", error.message));
    }
    if (!retry) {
      for (size_t i = 0; i < call->streams.size(); ++i) {
        if (!call->ended[i]) {
          call->ended[i] = true;
          to_end.push_back(call->streams[i]);
        }
      }
      if (call->phase == Call::Phase::kPending) {  // cancelled before any replica took it
        call->phase = Call::Phase::kFailed;
        call->error = {.status = 503, .message = "cancelled", .type = "service_unavailable"};
        call->cv.SignalAll();
      }
    }
  }
  if (retry) {
    {
      absl::MutexLock lock(&mu_);
      ++retries_total_;
    }
    auto routed = Route(*call);
    if (routed.ok()) return StartAttempt(call, routed->first, routed->second);
    absl::MutexLock lock(&call->mu);
    if (call->phase == Call::Phase::kPending) {
      call->phase = Call::Phase::kFailed;
      call->error = api::FromStatus(routed.status());
      call->cv.SignalAll();
      return;
    }
    end.finish = FinishReason::kError;
    end.error = absl::UnavailableError(absl::StrCat("no replica could take the request: ", routed.status().message()));
    for (size_t i = 0; i < call->streams.size(); ++i) {
      if (!call->ended[i]) {
        call->ended[i] = true;
        to_end.push_back(call->streams[i]);
      }
    }
  }
  for (const auto& stream : to_end) {
    metrics_.ObserveFinished(FinishReasonName(*end.finish), absl::ToDoubleSeconds(absl::Now() - call->start), 0.0);
    stream->Push(end);
  }
}

api::ApiResult<Coordinator::Streams> Coordinator::Start(const api::PreparedRequest& request,
                                                              const std::string& key, const std::string& path,
                                                              const api::Json& body) {
  auto call = std::make_shared<Call>();
  call->key = key;
  call->request.set_request_id(key.substr(0, key.find('#')));
  call->request.set_path(path);
  call->body = body;
  // Remote media were fetched here: the replica gets them inline, not their URLs.
  if (request.api.endpoint == api::Endpoint::kChatCompletions) call->body["messages"] = request.api.messages;
  const int64_t page = options_.page_size;
  for (const kv::PageKey& k : model::PromptPageKeys(config_, request.input, page)) call->keys.push_back(ToIndexKey(k));
  const int64_t prompt = static_cast<int64_t>(request.input.input_ids.size());
  call->prompt_pages = (prompt + page - 1) / page;
  // The client's max_tokens, else one token: a replica without room for more answers with the
  // room it has, as a single server would.
  call->need_tokens = prompt + request.api.max_tokens.value_or(1);
  call->start = absl::Now();
  const int n = request.api.n;
  for (int i = 0; i < n; ++i) call->streams.push_back(std::make_shared<RequestStream>());
  {
    absl::MutexLock lock(&call->mu);
    call->ended.assign(n, false);
  }
  {
    absl::MutexLock lock(&mu_);
    calls_[key] = call;
  }
  auto routed = Route(*call);
  if (!routed.ok()) {
    Forget(key);
    return api::FromStatus(routed.status(), routed.status().code() == absl::StatusCode::kInvalidArgument ? "max_tokens" : "");
  }
  StartAttempt(call, routed->first, routed->second);
  std::optional<api::ApiError> failed;
  {
    absl::MutexLock lock(&call->mu);
    const absl::Time deadline = absl::Now() + options_.accept_timeout;
    while (call->phase == Call::Phase::kPending) {
      if (call->cv.WaitWithDeadline(&call->mu, deadline)) break;
    }
    if (call->phase == Call::Phase::kPending) {  // no replica answered in time: give up on it
      call->cancelled = true;
      if (call->attempt != nullptr) call->attempt->context.TryCancel();
      failed = api::ApiError{.status = 503, .message = "no replica took the request in time", .type = "service_unavailable"};
    } else if (call->phase == Call::Phase::kFailed) {
      failed = call->error;
    }
  }
  if (failed) {
    Forget(key);
    return *failed;
  }
  return call->streams;
}

void Coordinator::Cancel(const std::string& key) {
  std::shared_ptr<Call> call;
  {
    absl::MutexLock lock(&mu_);
    auto it = calls_.find(key);
    if (it == calls_.end()) return;
    call = it->second;
  }
  absl::MutexLock lock(&call->mu);
  call->cancelled = true;
  if (call->attempt != nullptr) call->attempt->context.TryCancel();
}

void Coordinator::Forget(const std::string& key) {
  absl::MutexLock lock(&mu_);
  calls_.erase(key);
}

MetricsSnapshot Coordinator::Metrics() const {
  int64_t running = 0, waiting = 0, used = 0, total = 0;
  {
    absl::MutexLock lock(&mu_);
    for (const auto& s : slots_) {
      if (!s->connected) continue;
      running += s->running;
      waiting += s->waiting;
      used += s->kv_pages_used;
      total += s->kv_pages_total;
    }
  }
  MetricsSnapshot m = metrics_.Snapshot();
  m.num_requests_running = running;
  m.num_requests_waiting = waiting;
  m.kv_cache_usage = total > 0 ? static_cast<double>(used) / static_cast<double>(total) : 0.0;
  return m;
}

std::string Coordinator::Unavailable() const {
  absl::MutexLock lock(&mu_);
  for (const auto& s : slots_) {
    if (s->connected && !s->draining) return "";
  }
  return "no replica is available";
}

std::vector<ReplicaStatus> Coordinator::Replicas() const {
  absl::MutexLock lock(&mu_);
  std::vector<ReplicaStatus> out;
  for (size_t i = 0; i < slots_.size(); ++i) {
    const Slot& s = *slots_[i];
    out.push_back({.id = s.id, .address = s.address, .http_address = s.http_address, .up = s.connected,
                   .draining = s.draining, .in_flight = s.in_flight, .routed_total = s.routed_total,
                   .kv_keys = index_.num_keys(static_cast<int>(i)), .max_seq_tokens = s.max_seq_tokens});
  }
  return out;
}

std::string Coordinator::ExtraMetricsText(const std::string& model_name) const {
  std::string name_label;
  for (char c : model_name) {
    if (c == '\\' || c == '"') name_label += '\\';
    name_label += c == '\n' ? ' ' : c;
  }
  const std::string labels = absl::StrCat("model_name=\"", name_label, "\"");
  std::string out;
  auto family = [&](const char* name, const char* type, const char* help) {
    absl::StrAppend(&out, "# HELP ", name, " ", help, "\n# TYPE ", name, " ", type, "\n");
  };
  absl::MutexLock lock(&mu_);
  int64_t up = 0, draining = 0, down = 0;
  for (const auto& s : slots_) (s->connected ? (s->draining ? draining : up) : down) += 1;
  family("q3vl:coordinator_replicas", "gauge", "Replicas known to the coordinator, by state.");
  absl::StrAppend(&out, "q3vl:coordinator_replicas{", labels, ",state=\"up\"} ", up, "\n");
  absl::StrAppend(&out, "q3vl:coordinator_replicas{", labels, ",state=\"draining\"} ", draining, "\n");
  absl::StrAppend(&out, "q3vl:coordinator_replicas{", labels, ",state=\"down\"} ", down, "\n");
  family("q3vl:coordinator_requests_routed_total", "counter", "Requests routed to each replica (retries included).");
  for (const auto& s : slots_) {
    absl::StrAppend(&out, "q3vl:coordinator_requests_routed_total{", labels, ",replica=\"", s->id, "\"} ",
                    s->routed_total, "\n");
  }
  family("q3vl:coordinator_requests_in_flight", "gauge", "Requests forwarded to each replica and not ended.");
  for (const auto& s : slots_) {
    absl::StrAppend(&out, "q3vl:coordinator_requests_in_flight{", labels, ",replica=\"", s->id, "\"} ", s->in_flight,
                    "\n");
  }
  family("q3vl:coordinator_routed_prompt_pages_total", "counter", "Prompt KV pages of routed requests.");
  absl::StrAppend(&out, "q3vl:coordinator_routed_prompt_pages_total{", labels, "} ", routed_prompt_pages_, "\n");
  family("q3vl:coordinator_routed_cached_pages_total", "counter",
         "Of those, pages the global index placed at the chosen replica.");
  absl::StrAppend(&out, "q3vl:coordinator_routed_cached_pages_total{", labels, "} ", routed_cached_pages_, "\n");
  family("q3vl:coordinator_retries_total", "counter", "Requests re-routed after a replica failed them before any output.");
  absl::StrAppend(&out, "q3vl:coordinator_retries_total{", labels, "} ", retries_total_, "\n");
  family("q3vl:coordinator_load_fallbacks_total", "counter", "kv routing decisions overridden by load (imbalance).");
  absl::StrAppend(&out, "q3vl:coordinator_load_fallbacks_total{", labels, "} ", fallbacks_total_, "\n");
  family("q3vl:coordinator_kv_index_keys", "gauge", "Distinct KV page keys in the global index.");
  absl::StrAppend(&out, "q3vl:coordinator_kv_index_keys{", labels, "} ", index_.num_keys(), "\n");
  const char* h = "q3vl:coordinator_routing_decision_seconds";
  family(h, "histogram", "Time to choose a replica for a request.");
  int64_t cumulative = 0;
  for (size_t i = 0; i < decision_seconds_.bounds.size(); ++i) {
    cumulative += decision_seconds_.counts[i];
    absl::StrAppend(&out, h, "_bucket{", labels, ",le=\"", absl::StrFormat("%.17g", decision_seconds_.bounds[i]),
                    "\"} ", cumulative, "\n");
  }
  absl::StrAppend(&out, h, "_bucket{", labels, ",le=\"+Inf\"} ", decision_seconds_.count, "\n", h, "_sum{", labels, "} ",
                  absl::StrFormat("%.17g", decision_seconds_.sum), "\n", h, "_count{", labels, "} ",
                  decision_seconds_.count, "\n");
  return out;
}

}  // namespace q3vl::cluster::coordinator
