#include <utility>  // Boost 1.74 under C++20 needs it before its headers

#include "cluster/niah/client.h"

#include <boost/asio/connect.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace q3vl::cluster::niah {

namespace beast = boost::beast;
namespace http = beast::http;
namespace net = boost::asio;

absl::StatusOr<Endpoint> Endpoint::Parse(const std::string& url) {
  absl::string_view rest = url;
  if (!absl::ConsumePrefix(&rest, "http://")) {
    return absl::InvalidArgumentError(absl::StrCat("endpoint \"", url, "\" is not http://HOST:PORT"));
  }
  const size_t slash = rest.find('/');
  absl::string_view authority = rest.substr(0, slash);
  std::string base = slash == absl::string_view::npos ? "" : std::string(rest.substr(slash));
  while (absl::EndsWith(base, "/")) base.pop_back();
  if (absl::EndsWith(base, "/v1")) base.resize(base.size() - 3);
  const size_t colon = authority.rfind(':');
  Endpoint e;
  e.host = std::string(authority.substr(0, colon));
  e.port = colon == absl::string_view::npos ? "80" : std::string(authority.substr(colon + 1));
  e.base = base;
  if (e.host.empty() || e.port.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("endpoint \"", url, "\" is not http://HOST:PORT"));
  }
  return e;
}

namespace {

absl::StatusOr<HttpReply> Exchange(const Endpoint& endpoint, http::verb verb, const std::string& path,
                                   const nlohmann::ordered_json* body, const std::string& api_key,
                                   absl::Duration timeout) {
  net::io_context ioc;
  beast::tcp_stream stream(ioc);
  beast::error_code ec;
  net::ip::tcp::resolver resolver(ioc);
  const auto addresses = resolver.resolve(endpoint.host, endpoint.port, ec);
  if (ec) return absl::UnavailableError(absl::StrCat("cannot resolve ", endpoint.host, ": ", ec.message()));
  stream.expires_after(absl::ToChronoSeconds(timeout));
  stream.connect(addresses, ec);
  if (ec) {
    return absl::UnavailableError(absl::StrCat("cannot connect to ", endpoint.host, ":", endpoint.port, ": ", ec.message()));
  }
  http::request<http::string_body> req(verb, endpoint.base + path, 11);
  req.set(http::field::host, endpoint.host);
  req.set(http::field::user_agent, "q3vl-niah");
  if (!api_key.empty()) req.set(http::field::authorization, absl::StrCat("Bearer ", api_key));
  if (body != nullptr) {
    req.set(http::field::content_type, "application/json");
    req.body() = body->dump();
  }
  req.prepare_payload();
  http::write(stream, req, ec);
  if (ec) return absl::UnavailableError(absl::StrCat("sending to ", endpoint.host, ": ", ec.message()));
  beast::flat_buffer buffer;
  http::response_parser<http::string_body> parser;
  parser.body_limit(256ull << 20);
  http::read(stream, buffer, parser, ec);
  if (ec == beast::error::timeout) {
    return absl::DeadlineExceededError(absl::StrCat("no answer from ", endpoint.host, " within ", absl::FormatDuration(timeout)));
  }
  if (ec) return absl::UnavailableError(absl::StrCat("reading from ", endpoint.host, ": ", ec.message()));
  HttpReply reply;
  reply.status = static_cast<int>(parser.get().result_int());
  reply.text = parser.get().body();
  reply.body = nlohmann::ordered_json::parse(reply.text, nullptr, /*allow_exceptions=*/false);
  if (reply.body.is_discarded()) reply.body = nullptr;
  stream.socket().shutdown(net::ip::tcp::socket::shutdown_both, ec);
  return reply;
}

}  // namespace

std::optional<double> PrometheusValue(const std::string& text, const std::string& name) {
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    if (!absl::ConsumePrefix(&line, name) || line.empty() || (line[0] != '{' && line[0] != ' ')) continue;
    if (line[0] == '{') {
      const size_t close = line.rfind('}');
      if (close == absl::string_view::npos) return std::nullopt;
      line.remove_prefix(close + 1);
    }
    line = absl::StripAsciiWhitespace(line);
    const absl::string_view value = line.substr(0, line.find(' '));  // a timestamp may follow
    double v = 0;
    if (!absl::SimpleAtod(value, &v)) return std::nullopt;
    return v;
  }
  return std::nullopt;
}

absl::StatusOr<HttpReply> PostJson(const Endpoint& endpoint, const std::string& path,
                                   const nlohmann::ordered_json& body, const std::string& api_key,
                                   absl::Duration timeout) {
  return Exchange(endpoint, http::verb::post, path, &body, api_key, timeout);
}

absl::StatusOr<HttpReply> GetJson(const Endpoint& endpoint, const std::string& path, const std::string& api_key,
                                  absl::Duration timeout) {
  return Exchange(endpoint, http::verb::get, path, nullptr, api_key, timeout);
}

}  // namespace q3vl::cluster::niah
