#include <utility>  // Boost 1.74 under C++20 needs it before its headers

#include "cluster/server/http_server.h"

#include <atomic>
#include <boost/asio/dispatch.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/strand.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <deque>
#include <optional>
#include <thread>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "nlohmann/json.hpp"

namespace q3vl::cluster::server {

namespace beast = boost::beast;
namespace http = beast::http;
namespace net = boost::asio;
using tcp = net::ip::tcp;

std::string HttpRequest::Header(const std::string& name) const {
  for (const auto& [k, v] : headers) {
    if (absl::EqualsIgnoreCase(k, name)) return v;
  }
  return "";
}

namespace {

std::chrono::nanoseconds Chrono(absl::Duration d) { return absl::ToChronoNanoseconds(d); }

class Session;

class Exchange final : public HttpExchange {
 public:
  Exchange(std::weak_ptr<Session> session, uint64_t number) : session_(std::move(session)), number_(number) {}
  void Respond(int status, Headers headers, std::string body) override;
  void StartStream(int status, Headers headers) override;
  void Send(std::string chunk) override;
  void End() override;
  void OnClose(std::function<void()> on_close) override;
  void Run(std::function<void()> fn) override;

 private:
  template <typename F>
  void Post(F f);
  std::weak_ptr<Session> session_;
  uint64_t number_;  // which request of the connection it answers: a stale one is ignored
};

struct ServerState {
  HttpServerOptions options;
  HttpHandler handler;
  std::atomic<int64_t> connections{0};
};

class Session : public std::enable_shared_from_this<Session> {
  using Done = std::function<void(beast::error_code)>;
  using Op = std::function<void(Done)>;  // null: the answer is complete

 public:
  Session(tcp::socket socket, ServerState& state) : stream_(std::move(socket)), state_(state) { ++state_.connections; }
  ~Session() { --state_.connections; }

  void Start() {
    net::dispatch(stream_.get_executor(), [self = shared_from_this()] { self->Read(); });
  }
  net::any_io_executor executor() { return stream_.get_executor(); }
  uint64_t request_number() const { return request_number_; }

  // ---- Exchange operations (on the strand) ----
  void Respond(int status, Headers headers, std::string body) {
    if (answer_started_ || closed_) return;
    answer_started_ = true;
    auto res = std::make_shared<http::response<http::string_body>>(static_cast<http::status>(status), 11);
    res->set(http::field::server, "q3vl");
    for (auto& [k, v] : headers) res->set(k, v);
    res->body() = std::move(body);
    res->keep_alive(keep_alive_);
    res->prepare_payload();
    Enqueue([self = shared_from_this(), res](Done done) {
      http::async_write(self->stream_, *res, [res, done](beast::error_code ec, size_t) { done(ec); });
    });
    Enqueue(nullptr);  // the answer is complete
  }

  void StartStream(int status, Headers headers) {
    if (answer_started_ || closed_) return;
    answer_started_ = true;
    struct Head {
      http::response<http::empty_body> res;
      std::optional<http::response_serializer<http::empty_body>> sr;
    };
    auto head = std::make_shared<Head>();
    head->res = http::response<http::empty_body>(static_cast<http::status>(status), 11);
    head->res.set(http::field::server, "q3vl");
    for (auto& [k, v] : headers) head->res.set(k, v);
    head->res.keep_alive(keep_alive_);
    head->res.chunked(true);
    head->sr.emplace(head->res);
    Enqueue([self = shared_from_this(), head](Done done) {
      http::async_write_header(self->stream_, *head->sr, [head, done](beast::error_code ec, size_t) { done(ec); });
    });
  }

  void Send(std::string chunk) {
    if (!answer_started_ || closed_ || chunk.empty()) return;
    pending_ += chunk;  // joins what is not yet being written
    if (chunk_queued_) return;
    chunk_queued_ = true;
    Enqueue([self = shared_from_this()](Done done) {
      auto data = std::make_shared<std::string>(std::move(self->pending_));
      self->pending_.clear();
      self->chunk_queued_ = false;
      net::async_write(self->stream_, http::make_chunk(net::buffer(*data)),
                       [data, done](beast::error_code ec, size_t) { done(ec); });
    });
  }

  void End() {
    if (!answer_started_ || closed_) return;
    Enqueue([self = shared_from_this()](Done done) {
      auto last = std::make_shared<decltype(http::make_chunk_last())>(http::make_chunk_last());
      net::async_write(self->stream_, *last, [last, done](beast::error_code ec, size_t) { done(ec); });
    });
    Enqueue(nullptr);
  }

  void OnClose(std::function<void()> on_close) {
    if (closed_ && !answered_) {
      on_close();
      return;
    }
    on_close_ = std::move(on_close);
  }

 private:
  void Read() {
    if (closed_) return;
    parser_.emplace();
    parser_->header_limit(static_cast<uint32_t>(state_.options.max_header_bytes));
    parser_->body_limit(state_.options.max_body_bytes);
    stream_.expires_after(Chrono(state_.options.read_timeout));
    http::async_read(stream_, buffer_, *parser_,
                     [self = shared_from_this()](beast::error_code ec, size_t) { self->OnRead(ec); });
  }

  void OnRead(beast::error_code ec) {
    if (ec) {
      // Limits and malformed requests get an answer; a closed or idle connection just ends.
      int status = 0;
      std::string message;
      if (ec == http::error::body_limit) {
        status = 413, message = absl::StrCat("the request body exceeds ", state_.options.max_body_bytes, " bytes");
      } else if (ec == http::error::header_limit) {
        status = 431, message = absl::StrCat("the request headers exceed ", state_.options.max_header_bytes, " bytes");
      } else if (ec.category() == http::make_error_code(http::error::bad_target).category() && ec != http::error::end_of_stream &&
                 ec != http::error::partial_message) {
        status = 400, message = absl::StrCat("malformed HTTP request: ", ec.message());
      }
      if (status == 0) return Close();
      keep_alive_ = false;
      busy_ = true;
      ++request_number_;
      answer_started_ = answered_ = false;
      const nlohmann::json body = {
          {"error", {{"message", message}, {"type", "invalid_request_error"}, {"param", nullptr}, {"code", nullptr}}}};
      Respond(status, {{"Content-Type", "application/json"}}, body.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace));
      return;
    }
    http::request<http::string_body> req = parser_->release();
    HttpRequest r;
    r.method = std::string(req.method_string());
    const std::string target(req.target());
    const size_t q = target.find('?');
    r.path = target.substr(0, q);
    if (q != std::string::npos) r.query = target.substr(q + 1);
    for (const auto& f : req) r.headers.emplace_back(std::string(f.name_string()), std::string(f.value()));
    r.body = std::move(req.body());
    keep_alive_ = req.keep_alive();
    busy_ = true;
    ++request_number_;
    answer_started_ = answered_ = false;
    stream_.expires_never();
    Watch();
    state_.handler(std::move(r), std::make_shared<Exchange>(weak_from_this(), request_number_));
  }

  // While an answer is pending, a read on the bare socket notices a client that goes away.
  // Bytes it reads (a pipelined request) join the buffer for the next Read.
  void Watch() {
    if (watching_ || closed_) return;
    watching_ = true;
    stream_.socket().async_read_some(buffer_.prepare(4096), [self = shared_from_this()](beast::error_code ec, size_t n) {
      self->watching_ = false;
      if (self->lingering_) return self->Drop();  // Linger took over the socket
      if (!ec) {
        self->buffer_.commit(n);
        if (self->answered_) return self->Next();
        if (self->buffer_.size() > self->state_.options.max_header_bytes + self->state_.options.max_body_bytes) {
          return self->Close();
        }
        return self->Watch();
      }
      if (ec == net::error::operation_aborted && self->answered_) return self->Next();
      self->Close();
    });
  }

  void Enqueue(Op op) {
    ops_.push_back(std::move(op));
    if (!writing_) Pump();
  }

  void Pump() {
    while (!ops_.empty() && !closed_) {
      Op op = std::move(ops_.front());
      ops_.pop_front();
      if (!op) {  // the answer is complete
        answered_ = true;
        busy_ = false;
        on_close_ = nullptr;
        stream_.expires_never();
        if (!keep_alive_) return Linger();
        if (watching_) {
          beast::error_code ignored;
          stream_.socket().cancel(ignored);  // the watch ends, then Next()
          return;
        }
        return Next();
      }
      writing_ = true;
      stream_.expires_after(Chrono(state_.options.write_timeout));
      op([self = shared_from_this()](beast::error_code ec) {
        self->writing_ = false;
        if (ec) return self->Close();
        self->Pump();
      });
      return;
    }
  }

  // After a last answer: stop sending, then read and drop what the client still sends (the rest
  // of a body refused with 413) until it closes, for at most a few seconds, so that it reads the
  // answer instead of a reset.
  void Linger() {
    beast::error_code ignored;
    stream_.socket().shutdown(tcp::socket::shutdown_send, ignored);
    lingering_ = true;
    linger_until_ = absl::Now() + absl::Seconds(3);
    if (watching_) {
      stream_.socket().cancel(ignored);  // its handler goes on with Drop
      return;
    }
    Drop();
  }
  void Drop() {
    if (closed_) return;
    if (absl::Now() > linger_until_) return Close();
    stream_.expires_after(Chrono(linger_until_ - absl::Now()));
    stream_.async_read_some(buffer_.prepare(64 * 1024), [self = shared_from_this()](beast::error_code ec, size_t) {
      if (ec) return self->Close();
      self->Drop();
    });
  }

  void Next() {
    if (!closed_ && !lingering_ && answered_ && !watching_ && !writing_) Read();
  }

  void Close() {
    if (closed_) return;
    closed_ = true;
    beast::error_code ignored;
    stream_.socket().shutdown(tcp::socket::shutdown_both, ignored);
    stream_.close();
    ops_.clear();
    if (busy_ && !answered_ && on_close_) {
      auto f = std::move(on_close_);
      f();
    }
  }

  beast::tcp_stream stream_;
  ServerState& state_;
  beast::flat_buffer buffer_;
  std::optional<http::request_parser<http::string_body>> parser_;
  std::deque<Op> ops_;
  std::function<void()> on_close_;
  std::string pending_;        // chunk bytes waiting for the queued chunk write
  bool chunk_queued_ = false;  // a chunk write is queued and has not started
  bool keep_alive_ = false;
  bool busy_ = false;            // a request is being answered
  bool answer_started_ = false;  // Respond or StartStream was called
  bool answered_ = true;         // the answer is written in full
  bool writing_ = false;
  bool watching_ = false;
  bool closed_ = false;
  uint64_t request_number_ = 0;
  bool lingering_ = false;
  absl::Time linger_until_;
};

template <typename F>
void Exchange::Post(F f) {
  if (std::shared_ptr<Session> s = session_.lock()) {
    net::post(s->executor(), [s, n = number_, f = std::move(f)]() mutable {
      if (s->request_number() == n) f(*s);
    });
  }
}

void Exchange::Respond(int status, Headers headers, std::string body) {
  Post([status, headers = std::move(headers), body = std::move(body)](Session& s) mutable {
    s.Respond(status, std::move(headers), std::move(body));
  });
}
void Exchange::StartStream(int status, Headers headers) {
  Post([status, headers = std::move(headers)](Session& s) mutable { s.StartStream(status, std::move(headers)); });
}
void Exchange::Send(std::string chunk) {
  Post([chunk = std::move(chunk)](Session& s) mutable { s.Send(std::move(chunk)); });
}
void Exchange::End() {
  Post([](Session& s) { s.End(); });
}
void Exchange::Run(std::function<void()> fn) {
  if (std::shared_ptr<Session> s = session_.lock()) {
    net::post(s->executor(), [s, fn = std::move(fn)] { fn(); });
  } else {
    fn();  // the connection is gone: nothing to keep in order with
  }
}

void Exchange::OnClose(std::function<void()> on_close) {
  if (std::shared_ptr<Session> s = session_.lock()) {
    net::post(s->executor(), [s, n = number_, f = std::move(on_close)]() mutable {
      if (s->request_number() == n) s->OnClose(std::move(f));
    });
  } else {
    on_close();  // the connection is gone already
  }
}

}  // namespace

struct HttpServer::Impl {
  ServerState state;
  net::io_context ioc;
  tcp::acceptor acceptor{ioc};
  std::vector<std::thread> threads;
  int port = 0;
  std::atomic<bool> stopped{false};

  void Accept() {
    acceptor.async_accept(net::make_strand(ioc), [this](beast::error_code ec, tcp::socket socket) {
      if (ec) {
        if (ec == net::error::operation_aborted || !acceptor.is_open()) return;
      } else {
        std::make_shared<Session>(std::move(socket), state)->Start();
      }
      Accept();
    });
  }
};

HttpServer::HttpServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
HttpServer::~HttpServer() { Stop(); }

absl::StatusOr<std::unique_ptr<HttpServer>> HttpServer::Start(const HttpServerOptions& options, HttpHandler handler) {
  auto impl = std::make_unique<Impl>();
  impl->state.options = options;
  impl->state.handler = std::move(handler);
  beast::error_code ec;
  const net::ip::address address = net::ip::make_address(options.host, ec);
  if (ec) return absl::InvalidArgumentError(absl::StrCat("--host ", options.host, ": not an IP address"));
  const tcp::endpoint endpoint(address, static_cast<unsigned short>(options.port));
  auto fail = [&](const char* what) {
    return absl::UnavailableError(absl::StrCat("cannot ", what, " ", options.host, ":", options.port, ": ", ec.message()));
  };
  impl->acceptor.open(endpoint.protocol(), ec);
  if (ec) return fail("open");
  impl->acceptor.set_option(net::socket_base::reuse_address(true), ec);
  impl->acceptor.bind(endpoint, ec);
  if (ec) return fail("bind");
  impl->acceptor.listen(net::socket_base::max_listen_connections, ec);
  if (ec) return fail("listen on");
  impl->port = impl->acceptor.local_endpoint().port();
  impl->Accept();
  Impl* raw = impl.get();
  for (int i = 0; i < std::max(1, options.threads); ++i) raw->threads.emplace_back([raw] { raw->ioc.run(); });
  return std::unique_ptr<HttpServer>(new HttpServer(std::move(impl)));
}

int HttpServer::port() const { return impl_->port; }
int64_t HttpServer::open_connections() const { return impl_->state.connections.load(); }

void HttpServer::Stop() {
  if (!impl_ || impl_->stopped.exchange(true)) return;
  net::post(impl_->ioc, [impl = impl_.get()] {
    beast::error_code ignored;
    impl->acceptor.close(ignored);
  });
  impl_->ioc.stop();
  for (std::thread& t : impl_->threads) t.join();
}

}  // namespace q3vl::cluster::server
