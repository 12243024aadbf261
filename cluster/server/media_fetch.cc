#include <utility>  // Boost 1.74 under C++20 needs it before its headers

#include "cluster/server/media_fetch.h"

#include <boost/asio/connect.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl.hpp>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"

namespace q3vl::cluster::server {
namespace {

namespace beast = boost::beast;
namespace http = beast::http;
namespace net = boost::asio;
namespace ssl = net::ssl;
using tcp = net::ip::tcp;

std::chrono::nanoseconds Remaining(absl::Time deadline) {
  return absl::ToChronoNanoseconds(std::max(deadline - absl::Now(), absl::ZeroDuration()));
}

struct Url {
  bool tls = false;
  std::string host;
  std::string port;
  std::string target;
};

absl::StatusOr<Url> ParseUrl(const std::string& url) {
  Url u;
  absl::string_view rest = url;
  if (absl::ConsumePrefix(&rest, "https://")) {
    u.tls = true;
  } else if (!absl::ConsumePrefix(&rest, "http://")) {
    return absl::InvalidArgumentError(absl::StrCat("not an http(s) URL: ", url.substr(0, 60)));
  }
  const size_t slash = rest.find('/');
  absl::string_view authority = rest.substr(0, slash);
  u.target = slash == absl::string_view::npos ? "/" : std::string(rest.substr(slash));
  if (absl::StrContains(authority, '@')) return absl::InvalidArgumentError("URLs with credentials are not fetched");
  const size_t colon = authority.rfind(':');
  if (colon != absl::string_view::npos && authority.find(']') == absl::string_view::npos) {
    u.port = std::string(authority.substr(colon + 1));
    authority = authority.substr(0, colon);
    int port = 0;
    if (!absl::SimpleAtoi(u.port, &port) || port < 1 || port > 65535) {
      return absl::InvalidArgumentError(absl::StrCat("bad port in URL ", url.substr(0, 60)));
    }
  } else {
    u.port = u.tls ? "443" : "80";
  }
  u.host = absl::AsciiStrToLower(authority);
  if (u.host.empty()) return absl::InvalidArgumentError(absl::StrCat("no host in URL ", url.substr(0, 60)));
  return u;
}

template <typename Stream>
absl::StatusOr<std::string> Get(Stream& stream, beast::tcp_stream& tcp, const Url& u, const MediaFetchOptions& o,
                                absl::Time deadline, const std::string& url) {
  http::request<http::empty_body> req(http::verb::get, u.target, 11);
  req.set(http::field::host, u.host);
  req.set(http::field::user_agent, "q3vl");
  tcp.expires_after(Remaining(deadline));
  beast::error_code ec;
  http::write(stream, req, ec);
  if (ec) return absl::UnavailableError(absl::StrCat(url.substr(0, 80), ": ", ec.message()));
  beast::flat_buffer buffer;
  http::response_parser<http::string_body> parser;
  parser.body_limit(static_cast<uint64_t>(o.max_bytes));
  http::read(stream, buffer, parser, ec);
  if (ec == http::error::body_limit) {
    return absl::ResourceExhaustedError(absl::StrCat(url.substr(0, 80), ": more than ", o.max_bytes, " bytes"));
  }
  if (ec == beast::error::timeout) {
    return absl::DeadlineExceededError(absl::StrCat(url.substr(0, 80), ": no answer within ", absl::FormatDuration(o.timeout)));
  }
  if (ec) return absl::UnavailableError(absl::StrCat(url.substr(0, 80), ": ", ec.message()));
  const auto& res = parser.get();
  if (res.result() != http::status::ok) {
    return absl::UnavailableError(absl::StrCat(url.substr(0, 80), ": the server answered ", res.result_int(),
                                               res.result_int() / 100 == 3 ? " (redirects are not followed)" : ""));
  }
  return std::string(res.body());
}

}  // namespace

absl::StatusOr<std::string> FetchUrl(const std::string& url, const MediaFetchOptions& options) {
  auto parsed = ParseUrl(url);
  if (!parsed.ok()) return parsed.status();
  const Url& u = *parsed;
  bool allowed = false;
  for (const std::string& d : options.allowed_domains) allowed |= absl::AsciiStrToLower(d) == u.host;
  if (!allowed) {
    return absl::PermissionDeniedError(absl::StrCat("media from ", u.host, " is not allowed (",
                                                    options.allowed_domains.empty() ? "no remote media allowed"
                                                                                    : "see --allowed-media-domains",
                                                    ")"));
  }
  const absl::Time deadline = absl::Now() + options.timeout;
  net::io_context ioc;
  tcp::resolver resolver(ioc);
  beast::error_code ec;
  const auto endpoints = resolver.resolve(u.host, u.port, ec);
  if (ec) return absl::UnavailableError(absl::StrCat(u.host, ": cannot resolve: ", ec.message()));
  if (!u.tls) {
    beast::tcp_stream stream(ioc);
    stream.expires_after(Remaining(deadline));
    stream.connect(endpoints, ec);
    if (ec) return absl::UnavailableError(absl::StrCat(u.host, ":", u.port, ": cannot connect: ", ec.message()));
    return Get(stream, stream, u, options, deadline, url);
  }
  ssl::context ctx(ssl::context::tls_client);
  ctx.set_default_verify_paths(ec);
  ctx.set_verify_mode(ssl::verify_peer);
  beast::ssl_stream<beast::tcp_stream> stream(ioc, ctx);
  if (!SSL_set_tlsext_host_name(stream.native_handle(), u.host.c_str())) {
    return absl::UnavailableError(absl::StrCat(u.host, ": cannot set the TLS server name"));
  }
  stream.set_verify_callback(ssl::host_name_verification(u.host));
  beast::get_lowest_layer(stream).expires_after(Remaining(deadline));
  beast::get_lowest_layer(stream).connect(endpoints, ec);
  if (ec) return absl::UnavailableError(absl::StrCat(u.host, ":", u.port, ": cannot connect: ", ec.message()));
  stream.handshake(ssl::stream_base::client, ec);
  if (ec) return absl::UnavailableError(absl::StrCat(u.host, ": TLS handshake failed: ", ec.message()));
  return Get(stream, beast::get_lowest_layer(stream), u, options, deadline, url);
}

absl::StatusOr<int> FetchRemoteMedia(nlohmann::ordered_json& messages, const MediaFetchOptions& options) {
  int fetched = 0;
  if (!messages.is_array()) return 0;
  for (auto& message : messages) {
    if (!message.is_object() || !message.contains("content") || !message["content"].is_array()) continue;
    for (auto& part : message["content"]) {
      if (!part.is_object()) continue;
      for (const char* key : {"image_url", "video_url", "image", "video"}) {
        if (!part.contains(key)) continue;
        nlohmann::ordered_json& ref = part[key];
        nlohmann::ordered_json* url = ref.is_object() && ref.contains("url") ? &ref["url"] : &ref;
        if (!url->is_string()) continue;
        const std::string u = url->get<std::string>();
        if (!absl::StartsWithIgnoreCase(u, "http://") && !absl::StartsWithIgnoreCase(u, "https://")) continue;
        auto bytes = FetchUrl(u, options);
        if (!bytes.ok()) return bytes.status();
        const bool video = absl::StrContains(key, "video");
        *url = absl::StrCat("data:", video ? "video/mp4" : "image/unknown", ";base64,", absl::Base64Escape(*bytes));
        ++fetched;
      }
    }
  }
  return fetched;
}

}  // namespace q3vl::cluster::server
