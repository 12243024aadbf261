// Fetching http(s) images and videos that requests name, for the HTTP server: only from hosts
// the operator allows (--allowed-media-domains), within a timeout and a size cap, no redirects
// followed. FetchRemoteMedia rewrites a request's messages so that every remote image_url /
// video_url becomes a data: URL of the fetched bytes; the processor then decodes them as it
// decodes any data: URL (and applies its pixel and frame limits).
#ifndef Q3VL_CLUSTER_SERVER_MEDIA_FETCH_H_
#define Q3VL_CLUSTER_SERVER_MEDIA_FETCH_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "nlohmann/json.hpp"

namespace q3vl::cluster::server {

struct MediaFetchOptions {
  std::vector<std::string> allowed_domains;  // host names or IPs; a request for any other host is refused
  absl::Duration timeout = absl::Seconds(10);  // the whole fetch: connect, TLS, request, body
  int64_t max_bytes = 64 << 20;
};

// GET `url` (http:// or https://, certificates verified against the system's CAs). The body
// on 200. InvalidArgument for a malformed URL, PermissionDenied for a host not allowed,
// DeadlineExceeded, ResourceExhausted over max_bytes, Unavailable for a failed fetch or another
// status (named).
absl::StatusOr<std::string> FetchUrl(const std::string& url, const MediaFetchOptions& options);

// In `messages` (an OpenAI messages array), replaces each http(s) image or video URL by a
// data: URL of its bytes. Returns how many were fetched.
absl::StatusOr<int> FetchRemoteMedia(nlohmann::ordered_json& messages, const MediaFetchOptions& options);

}  // namespace q3vl::cluster::server

#endif  // Q3VL_CLUSTER_SERVER_MEDIA_FETCH_H_
