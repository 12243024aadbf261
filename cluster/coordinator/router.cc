#include "cluster/coordinator/router.h"

#include <algorithm>
#include <cstring>
#include <limits>

#include "absl/strings/str_cat.h"
#include "core/check.h"

namespace q3vl::cluster::coordinator {

absl::StatusOr<RoutingPolicy> ParseRoutingPolicy(absl::string_view name) {
  if (name == "kv") return RoutingPolicy::kKv;
  if (name == "least-load") return RoutingPolicy::kLeastLoad;
  if (name == "round-robin") return RoutingPolicy::kRoundRobin;
  return absl::InvalidArgumentError(absl::StrCat("unknown routing policy '", name, "' (kv, least-load, round-robin)"));
}

const char* RoutingPolicyName(RoutingPolicy policy) {
  switch (policy) {
    case RoutingPolicy::kKv: return "kv";
    case RoutingPolicy::kLeastLoad: return "least-load";
    case RoutingPolicy::kRoundRobin: return "round-robin";
  }
  return "?";
}

IndexKey ToIndexKey(const kv::PageKey& key) {
  IndexKey k;
  std::memcpy(&k, key.bytes.data(), sizeof(k));
  return k;
}

void KvIndex::Store(int replica, absl::Span<const IndexKey> keys) {
  Q3VL_CHECK(replica >= 0 && replica < 65536) << replica;
  if (static_cast<size_t>(replica) >= held_.size()) held_.resize(replica + 1);
  auto& mine = held_[replica];
  for (IndexKey k : keys) {
    if (mine[k]++ == 0) holders_[k].push_back(static_cast<uint16_t>(replica));
  }
}

void KvIndex::Remove(int replica, absl::Span<const IndexKey> keys) {
  if (replica < 0 || static_cast<size_t>(replica) >= held_.size()) return;
  auto& mine = held_[replica];
  for (IndexKey k : keys) {
    auto it = mine.find(k);
    if (it == mine.end()) continue;  // a snapshot already dropped it
    if (--it->second > 0) continue;
    mine.erase(it);
    auto h = holders_.find(k);
    if (h == holders_.end()) continue;
    HolderList& v = h->second;
    v.erase(std::remove(v.begin(), v.end(), static_cast<uint16_t>(replica)), v.end());
    if (v.empty()) holders_.erase(h);
  }
}

void KvIndex::Reset(int replica, absl::Span<const IndexKey> keys) {
  if (replica >= 0 && static_cast<size_t>(replica) < held_.size()) {
    std::vector<IndexKey> all;
    for (const auto& [k, copies] : held_[replica]) all.insert(all.end(), copies, k);
    Remove(replica, all);
  }
  Store(replica, keys);
}

int64_t KvIndex::num_keys(int replica) const {
  if (replica < 0 || static_cast<size_t>(replica) >= held_.size()) return 0;
  return static_cast<int64_t>(held_[replica].size());
}

void KvIndex::Overlaps(absl::Span<const IndexKey> keys, std::vector<int64_t>& out) const {
  out.assign(held_.size(), 0);
  const int64_t n = static_cast<int64_t>(keys.size());
  if (n == 0) return;
  auto first = holders_.find(keys[0]);
  if (first == holders_.end()) return;
  // Only replicas holding the first page can overlap. Probing from the last page down, a
  // replica's overlap is the first probed page it holds. Its pages of a prompt are a prefix (a
  // sequence's tail is evicted before its head, and a page's key covers every token before
  // it), so a deeper page's holders are among a shallower one's: a list no longer than the
  // replicas already placed brings no new one and is not read. At scale each list read is a
  // cache miss per line, and hot prompts are held by hundreds of replicas.
  const HolderList& candidates = first->second;
  size_t placed = 0;
  const int64_t stride = std::max<int64_t>(1, (n + kExactPages - 1) / kExactPages);
  for (int64_t p = n - 1; p > 0 && placed < candidates.size(); p = std::max<int64_t>(0, p - stride)) {
    auto it = holders_.find(keys[p]);
    if (it == holders_.end() || it->second.size() <= placed) continue;
    for (uint16_t r : it->second) {
      if (out[r] == 0) {
        out[r] = p + 1;
        ++placed;
      }
    }
  }
  // The first page's holders (often every replica: a shared system prompt) once, at the end.
  if (placed >= candidates.size()) return;
  for (uint16_t r : candidates) {
    if (out[r] == 0) out[r] = 1;
  }
}

absl::StatusOr<RouteDecision> Router::Choose(const RouteQuery& query, absl::Span<const ReplicaLoad> replicas,
                                             const KvIndex& index) {
  const int n = static_cast<int>(replicas.size());
  int64_t largest = 0;
  int64_t least_in_flight = std::numeric_limits<int64_t>::max();
  int least = -1;
  int eligible = 0;
  const size_t start = n > 0 ? next_++ % n : 0;  // ties go round the replicas
  for (int i = 0; i < n; ++i) {
    const int r = static_cast<int>((start + i) % n);
    const ReplicaLoad& l = replicas[r];
    if (!l.routable) continue;
    largest = std::max(largest, l.max_seq_tokens);
    if (l.max_seq_tokens < query.need_tokens) continue;
    ++eligible;
    if (least < 0 || l.in_flight < least_in_flight ||
        (l.in_flight == least_in_flight && l.kv_pages_used < replicas[least].kv_pages_used)) {
      least = r;
      least_in_flight = l.in_flight;
    }
  }
  if (eligible == 0) {
    if (largest == 0) return absl::UnavailableError("no replica is available");
    return absl::InvalidArgumentError(absl::StrCat("the request needs ", query.need_tokens,
                                                   " tokens of KV cache (prompt and completion); the largest replica "
                                                   "holds ",
                                                   largest, " per sequence"));
  }
  RouteDecision d;
  switch (options_.policy) {
    case RoutingPolicy::kRoundRobin:
      for (int i = 0; i < n; ++i) {
        const int r = static_cast<int>((start + i) % n);
        if (replicas[r].routable && replicas[r].max_seq_tokens >= query.need_tokens) {
          d.replica = r;
          break;
        }
      }
      break;
    case RoutingPolicy::kLeastLoad:
      d.replica = least;
      break;
    case RoutingPolicy::kKv: {
      index.Overlaps(query.keys, overlaps_);
      double best_cost = std::numeric_limits<double>::infinity();
      for (int i = 0; i < n; ++i) {
        const int r = static_cast<int>((start + i) % n);
        const ReplicaLoad& l = replicas[r];
        if (!l.routable || l.max_seq_tokens < query.need_tokens) continue;
        const int64_t cached = static_cast<size_t>(r) < overlaps_.size() ? overlaps_[r] : 0;
        const double cost =
            options_.overlap_weight * static_cast<double>(query.prompt_pages - cached + l.pending_prefill_pages) +
            options_.decode_weight * static_cast<double>(l.kv_pages_used);
        if (cost < best_cost || (cost == best_cost && l.in_flight < replicas[d.replica].in_flight)) {
          best_cost = cost;
          d.replica = r;
        }
      }
      if (static_cast<double>(replicas[d.replica].in_flight) >
          options_.imbalance_ratio * static_cast<double>(least_in_flight) + static_cast<double>(options_.imbalance_slack)) {
        d.replica = least;
        d.fell_back = true;
      }
      break;
    }
  }
  if (options_.policy == RoutingPolicy::kKv && static_cast<size_t>(d.replica) < overlaps_.size()) {
    d.cached_pages = overlaps_[d.replica];
  }
  return d;
}

}  // namespace q3vl::cluster::coordinator
