// A small synchronous HTTP/1.1 client (Boost.Beast) for the OpenAI API of `q3vl serve` or
// `q3vl coordinator` (or any server of that API): POST a JSON body, read the JSON answer.
// One connection per call; thread-compatible.
#ifndef Q3VL_CLUSTER_NIAH_CLIENT_H_
#define Q3VL_CLUSTER_NIAH_CLIENT_H_

#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "nlohmann/json.hpp"

namespace q3vl::cluster::niah {

struct Endpoint {
  std::string host;
  std::string port;
  std::string base;  // path prefix, "" or e.g. "/proxy"
  // "http://HOST:PORT[/PREFIX]" (a trailing "/v1" is dropped). InvalidArgument otherwise
  // (https is not spoken here).
  static absl::StatusOr<Endpoint> Parse(const std::string& url);
};

struct HttpReply {
  int status = 0;
  nlohmann::ordered_json body;  // null when the body is not JSON
  std::string text;             // the raw body
};

// POSTs `body` to `path` (e.g. "/v1/chat/completions") with `api_key` as a bearer token when
// not empty. Unavailable when the server cannot be reached or the answer is not HTTP;
// DeadlineExceeded after `timeout`. Any HTTP status is a reply (the caller reads it).
absl::StatusOr<HttpReply> PostJson(const Endpoint& endpoint, const std::string& path,
                                   const nlohmann::ordered_json& body, const std::string& api_key,
                                   absl::Duration timeout);

// GETs `path` (e.g. "/v1/models"), as PostJson.
absl::StatusOr<HttpReply> GetJson(const Endpoint& endpoint, const std::string& path, const std::string& api_key,
                                  absl::Duration timeout);

// The value of the first sample of metric `name` in Prometheus text ("name{labels} v" or
// "name v"); nullopt when there is none or it is not a number.
std::optional<double> PrometheusValue(const std::string& text, const std::string& name);

}  // namespace q3vl::cluster::niah

#endif  // Q3VL_CLUSTER_NIAH_CLIENT_H_
