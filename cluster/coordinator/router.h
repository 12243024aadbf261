// The coordinator's routing decision, as pure logic (no I/O, no threads, no clock): the global
// index of which replica holds which prefix-cache page (KvIndex, fed by the replicas' KV
// events), and the policies that pick a replica for a request (Router). The coordinator and
// benchmarks/routing_sim run this same code.
//
// kv: the replica minimising overlap_weight * (prompt pages not cached there + prefill pages
//   already routed there and not yet computed) + decode_weight * KV pages in use there (decode
//   load), among those
//   that can hold the request; when the pick has far more requests in flight than the least
//   loaded replica (imbalance), the least loaded one instead.
// least-load: the fewest requests in flight, then the fewest KV pages in use.
// round-robin: the next replica that can hold the request.
// A request no routable replica can hold is refused: InvalidArgument naming the largest
// capacity when up replicas exist, Unavailable when none is up.
#ifndef Q3VL_CLUSTER_COORDINATOR_ROUTER_H_
#define Q3VL_CLUSTER_COORDINATOR_ROUTER_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/inlined_vector.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "kv/block_pool.h"

namespace q3vl::cluster::coordinator {

enum class RoutingPolicy { kKv, kLeastLoad, kRoundRobin };
absl::StatusOr<RoutingPolicy> ParseRoutingPolicy(absl::string_view name);  // kv, least-load, round-robin
const char* RoutingPolicyName(RoutingPolicy policy);

// The index works on 64 bits of each key: a collision costs a routing guess, never a wrong
// answer (the replica's own prefix cache checks the whole key).
using IndexKey = uint64_t;
IndexKey ToIndexKey(const kv::PageKey& key);

class KvIndex {
 public:
  // Replica ids are small integers (the coordinator's slots), 0 <= replica < 65536.
  void Store(int replica, absl::Span<const IndexKey> keys);
  void Remove(int replica, absl::Span<const IndexKey> keys);
  // The replica's keys become exactly `keys` (a snapshot).
  void Reset(int replica, absl::Span<const IndexKey> keys);
  void Drop(int replica) { Reset(replica, {}); }

  // For every replica, how many of `keys`, from the first, it holds (out has one entry per
  // replica id up to the largest seen; replicas holding nothing get 0). Exact for prompts of up
  // to kExactPages pages; beyond, pages are probed at a stride of pages / kExactPages, so an
  // overlap is exact to within one stride (about 3% of the prompt).
  static constexpr int64_t kExactPages = 32;
  void Overlaps(absl::Span<const IndexKey> keys, std::vector<int64_t>& out) const;

  int64_t num_keys() const { return static_cast<int64_t>(holders_.size()); }
  int64_t num_keys(int replica) const;

 private:
  // key -> replicas holding it; a few inline, so a lookup is one cache miss, not two
  using HolderList = absl::InlinedVector<uint16_t, 6>;
  absl::flat_hash_map<IndexKey, HolderList> holders_;
  std::vector<absl::flat_hash_map<IndexKey, int32_t>> held_;            // per replica: key -> copies
};

// What the router knows of one replica.
struct ReplicaLoad {
  bool routable = false;            // registered, heartbeating, not draining
  int64_t max_seq_tokens = 0;       // prompt + completion one sequence may hold there
  int64_t in_flight = 0;            // requests routed there and not ended
  int64_t pending_prefill_pages = 0;// prompt pages routed there and not computed yet (no first token)
  int64_t kv_pages_used = 0;        // from its latest heartbeat
};

struct RouterOptions {
  RoutingPolicy policy = RoutingPolicy::kKv;
  // Prefill work decides the time to first token; a decoding sequence slows each step a little
  // (a fraction of a page of prefill), hence the small default (routing_sim: 0.1 against 1.0
  // cut image-chat p50 TTFT 3x at 100 replicas, and was no worse on unrelated text).
  double overlap_weight = 1.0;
  double decode_weight = 0.1;
  // kv falls back to least-load when its pick has more than ratio * least + slack in flight.
  double imbalance_ratio = 2.0;
  int64_t imbalance_slack = 8;
};

struct RouteQuery {
  absl::Span<const IndexKey> keys;  // the prompt's full pages
  int64_t prompt_pages = 0;         // ceil(prompt tokens / page size)
  int64_t need_tokens = 0;          // prompt + completion tokens the sequence must hold
};

struct RouteDecision {
  int replica = -1;
  int64_t cached_pages = 0;         // of the prompt, at the replica chosen
  bool fell_back = false;           // kv chose by load (imbalance)
};

class Router {
 public:
  explicit Router(RouterOptions options) : options_(options) {}
  const RouterOptions& options() const { return options_; }
  // `replicas` is indexed by replica id (the KvIndex's ids).
  absl::StatusOr<RouteDecision> Choose(const RouteQuery& query, absl::Span<const ReplicaLoad> replicas,
                                       const KvIndex& index);

 private:
  RouterOptions options_;
  size_t next_ = 0;                  // round-robin position
  std::vector<int64_t> overlaps_;    // scratch
};

}  // namespace q3vl::cluster::coordinator

#endif  // Q3VL_CLUSTER_COORDINATOR_ROUTER_H_
