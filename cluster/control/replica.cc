#include "cluster/control/replica.h"

#include <deque>
#include <iostream>
#include <optional>
#include <vector>

#include "absl/strings/str_cat.h"
#include "cluster/control/wire.h"
#include "core/check.h"

namespace q3vl::cluster::control {
namespace {

namespace pb = ::q3vl::control::v1;

// One forwarded request. Its state outlives the reactor (the engine's thread may push outputs
// after the call is gone: they are dropped) and is shared with the stream listeners.
class GenerateCall final : public grpc::ServerWriteReactor<pb::GenerateChunk> {
 public:
  struct State {
    absl::Mutex mu;
    GenerateCall* reactor ABSL_GUARDED_BY(mu) = nullptr;  // null once the call is done
    server::OpenAiServer* server = nullptr;
    std::string call ABSL_GUARDED_BY(mu);                 // set once started
    server::CompletionBackend::Streams streams ABSL_GUARDED_BY(mu);
    std::deque<pb::GenerateChunk> queue ABSL_GUARDED_BY(mu);  // front: being written when `writing`
    bool writing ABSL_GUARDED_BY(mu) = false;
    bool cancelled ABSL_GUARDED_BY(mu) = false;
    bool finish_sent ABSL_GUARDED_BY(mu) = false;
    int remaining ABSL_GUARDED_BY(mu) = 0;
    std::optional<grpc::Status> final_status ABSL_GUARDED_BY(mu);  // sent once the queue is written

    void Pump() {
      pb::GenerateChunk* next = nullptr;
      GenerateCall* r = nullptr;
      std::optional<grpc::Status> finish;
      {
        absl::MutexLock lock(&mu);
        if (reactor == nullptr || writing || finish_sent) return;
        r = reactor;
        if (!queue.empty()) {
          writing = true;
          next = &queue.front();  // a deque keeps references across push_back
        } else if (final_status) {
          finish_sent = true;
          finish = *final_status;
        } else {
          return;
        }
      }
      if (next != nullptr) {
        r->StartWrite(next);
      } else {
        r->Finish(*finish);
      }
    }

    void OnStarted(api::ApiResult<server::OpenAiServer::Started> result, const std::shared_ptr<State>& self) {
      if (auto* e = std::get_if<api::ApiError>(&result)) {
        {
          absl::MutexLock lock(&mu);
          final_status = ToGrpcStatus(*e);
        }
        return Pump();
      }
      auto& started = std::get<server::OpenAiServer::Started>(result);
      bool cancel = false;
      {
        absl::MutexLock lock(&mu);
        call = started.call;
        streams = started.streams;
        remaining = static_cast<int>(streams.size());
        pb::GenerateChunk accepted;
        accepted.mutable_accepted()->set_choices(remaining);
        queue.push_back(std::move(accepted));
        cancel = cancelled || reactor == nullptr;
      }
      if (cancel) server->Cancel(started.call);
      for (size_t i = 0; i < started.streams.size(); ++i) {
        started.streams[i]->SetListener([self, i] { self->OnOutput(i); });
      }
      Pump();
    }

    // On the engine's thread: queue the choice's outputs; never blocks on the network.
    void OnOutput(size_t i) {
      bool ended = false;
      std::string ended_call;
      server::CompletionBackend::Streams all;
      {
        absl::MutexLock lock(&mu);
        if (remaining == 0) return;
        while (std::optional<RequestOutput> o = streams[i]->Next(absl::ZeroDuration())) {
          const bool last = o->finish.has_value();
          pb::GenerateChunk chunk;
          ToProto(*o, static_cast<int>(i), *chunk.mutable_output());
          queue.push_back(std::move(chunk));
          if (last && --remaining == 0) {
            ended = true;
            final_status = grpc::Status::OK;
            ended_call = call;
            all = streams;
          }
        }
      }
      if (ended) {
        server->Finished(ended_call);
        // The listeners hold this state: let them go.
        for (const auto& s : all) s->SetListener(nullptr);
      }
      Pump();
    }

    void WriteDone(bool ok) {
      std::string to_cancel;
      {
        absl::MutexLock lock(&mu);
        writing = false;
        if (!queue.empty()) queue.pop_front();
        if (!ok && !cancelled) {  // the coordinator is gone: stop the request
          cancelled = true;
          to_cancel = call;
        }
      }
      if (!to_cancel.empty()) server->Cancel(to_cancel);
      Pump();
    }

    void Cancelled() {
      std::string to_cancel;
      {
        absl::MutexLock lock(&mu);
        cancelled = true;
        to_cancel = call;
      }
      if (!to_cancel.empty()) server->Cancel(to_cancel);
    }
  };

  GenerateCall(server::OpenAiServer& server, const pb::GenerateRequest& request) : state_(std::make_shared<State>()) {
    {
      absl::MutexLock lock(&state_->mu);
      state_->reactor = this;
    }
    state_->server = &server;
    server.StartAsync(request.path(), request.body(), request.request_id(),
                      [state = state_](api::ApiResult<server::OpenAiServer::Started> result) {
                        state->OnStarted(std::move(result), state);
                      });
  }

  void OnWriteDone(bool ok) override { state_->WriteDone(ok); }
  void OnCancel() override { state_->Cancelled(); }
  void OnDone() override {
    {
      absl::MutexLock lock(&state_->mu);
      state_->reactor = nullptr;
    }
    delete this;
  }

 private:
  std::shared_ptr<State> state_;
};

std::string NewIncarnation() { return api::NewRequestId(); }

}  // namespace

grpc::ServerWriteReactor<pb::GenerateChunk>* ReplicaService::Generate(grpc::CallbackServerContext* context,
                                                                     const pb::GenerateRequest* request) {
  return new GenerateCall(server_, *request);
}

ReplicaAgent::ReplicaAgent(const Engine& engine, const server::OpenAiServer& server, ReplicaAgentOptions options)
    : engine_(engine), server_(server), options_(std::move(options)), incarnation_(NewIncarnation()) {
  thread_ = std::thread([this] { Run(); });
}

ReplicaAgent::~ReplicaAgent() { Stop(); }

void ReplicaAgent::Stop() {
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
    if (context_ != nullptr) context_->TryCancel();
  }
  if (thread_.joinable()) thread_.join();
}

void ReplicaAgent::Run() {
  absl::Duration backoff = absl::Milliseconds(250);
  for (;;) {
    {
      absl::MutexLock lock(&mu_);
      if (stop_) return;
    }
    const bool was_connected = connected_.load();
    if (Session()) return;  // refused: retrying would be refused again
    if (was_connected || connected_.load()) backoff = absl::Milliseconds(250);
    connected_ = false;
    absl::MutexLock lock(&mu_);
    auto stopped = [this]() ABSL_SHARED_LOCKS_REQUIRED(mu_) { return stop_; };
    mu_.AwaitWithTimeout(absl::Condition(&stopped), backoff);
    backoff = std::min(backoff * 2, absl::Seconds(5));
  }
}

bool ReplicaAgent::Session() {
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, 10000);
  args.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 5000);
  args.SetInt(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  args.SetMaxSendMessageSize(256 << 20);
  auto channel = grpc::CreateCustomChannel(options_.coordinator, grpc::InsecureChannelCredentials(), args);
  auto stub = pb::Coordinator::NewStub(channel);
  grpc::ClientContext context;
  {
    absl::MutexLock lock(&mu_);
    if (stop_) return false;
    context_ = &context;
  }
  auto stream = stub->Connect(&context);

  auto load = [this](pb::Load& l) {
    const MetricsSnapshot m = engine_.metrics().Snapshot();
    l.set_running(m.num_requests_running);
    l.set_waiting(m.num_requests_waiting);
    l.set_kv_pages_total(engine_.total_pages());
    l.set_kv_pages_used(static_cast<int64_t>(m.kv_cache_usage * static_cast<double>(engine_.total_pages()) + 0.5));
    l.set_draining(server_.draining());
  };
  auto snapshot = [this](pb::KvSnapshot& s) {
    const kv::KvEventLog::Snapshot snap = engine_.kv_events().Take();
    s.set_seq(snap.seq);
    for (const kv::PageKey& k : snap.keys) s.add_keys(KeyBytes(k));
    return snap.seq + 1;
  };

  pb::ReplicaReport hello_report;
  pb::Hello& hello = *hello_report.mutable_hello();
  hello.set_replica_id(options_.replica_id);
  hello.set_incarnation(incarnation_);
  hello.set_address(options_.address);
  hello.set_http_address(options_.http_address);
  hello.set_model(options_.model);
  hello.set_page_size(options_.page_size);
  hello.set_max_seq_tokens(options_.max_seq_tokens);
  hello.set_max_model_len(options_.max_model_len);
  load(*hello.mutable_load());
  uint64_t next_seq = snapshot(*hello.mutable_snapshot());

  std::atomic<bool> resync{false}, refused{false}, broken{false};
  std::thread reader;
  if (stream->Write(hello_report)) {
    reader = std::thread([&] {
      pb::Directive d;
      while (stream->Read(&d)) {
        if (d.has_welcome()) {
          if (!connected_.exchange(true)) {
            std::cerr << "q3vl serve: joined the coordinator at " << options_.coordinator << " as " << options_.replica_id
                      << std::endl;
          }
        } else if (d.has_resync()) {
          resync = true;
        } else if (d.has_refused()) {
          std::cerr << "q3vl serve: the coordinator at " << options_.coordinator
                    << " refused this replica: " << d.refused().reason() << std::endl;
          refused = true;
          context.TryCancel();
        }
      }
      broken = true;
      absl::MutexLock lock(&mu_);  // wake the writer
    });
    absl::Time last_report = absl::Now();
    pb::Load reported = hello.load();
    auto changed = [&] {
      pb::Load now;
      load(now);
      return now.running() != reported.running() || now.waiting() != reported.waiting() ||
             now.kv_pages_used() != reported.kv_pages_used() || now.draining() != reported.draining();
    };
    for (;;) {
      // A report every heartbeat, and as soon as the prefix caches or the load changed (checked
      // every 20 ms), so the coordinator's view trails the replica by little more than that.
      {
        absl::MutexLock lock(&mu_);
        auto wake = [&]() ABSL_SHARED_LOCKS_REQUIRED(mu_) { return stop_ || broken.load(); };
        const absl::Time due = last_report + options_.heartbeat;
        while (!mu_.AwaitWithTimeout(absl::Condition(&wake), std::min(absl::Milliseconds(20), due - absl::Now()))) {
          if (absl::Now() >= due || engine_.kv_events().last_seq() >= next_seq || resync.load() || changed()) break;
        }
        if (stop_ || broken) break;
      }
      last_report = absl::Now();
      pb::ReplicaReport report;
      std::optional<std::vector<kv::KvEvent>> events;
      if (!resync.exchange(false)) events = engine_.kv_events().Since(next_seq);
      if (!events) {
        next_seq = snapshot(*report.mutable_snapshot());
      } else {
        pb::Heartbeat& hb = *report.mutable_heartbeat();
        load(*hb.mutable_load());
        reported = hb.load();
        constexpr size_t kMaxEvents = 1 << 16;  // per report; the rest go with the next
        if (events->size() > kMaxEvents) events->resize(kMaxEvents);
        pb::KvEvents& kv = *hb.mutable_kv();
        kv.set_first_seq(next_seq);
        for (const kv::KvEvent& e : *events) {
          pb::KvEvent* p = kv.add_events();
          p->set_stored(e.stored);
          p->add_keys(KeyBytes(e.key));
        }
        next_seq += events->size();
      }
      if (!stream->Write(report)) break;
    }
  }
  context.TryCancel();
  if (reader.joinable()) reader.join();
  const grpc::Status status = stream->Finish();
  {
    absl::MutexLock lock(&mu_);
    context_ = nullptr;
    if (!stop_ && !refused && connected_.load()) {
      std::cerr << "q3vl serve: lost the coordinator at " << options_.coordinator << " (" << status.error_message()
                << "); reconnecting" << std::endl;
    }
  }
  connected_ = false;
  return refused.load();
}

}  // namespace q3vl::cluster::control
