// KvEventLog: what a replica's prefix caches hold, as a numbered stream of events and a mirror
// of the current set, for the coordinator's global index. The engine loop appends the events
// its block pools record (BlockPool::TakeEvents); the replica's control-plane agent reads them
// from its own thread: the events after the last sequence number it sent, or, when it fell
// further behind than the log keeps (or the coordinator asked to resync), a snapshot of every
// key with the sequence number it is current at. Thread-safe.
#ifndef Q3VL_KV_EVENT_LOG_H_
#define Q3VL_KV_EVENT_LOG_H_

#include <cstdint>
#include <deque>
#include <optional>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"
#include "absl/types/span.h"
#include "kv/block_pool.h"

namespace q3vl::kv {

class KvEventLog {
 public:
  // Keeps the last `max_events` events for readers that are behind.
  explicit KvEventLog(size_t max_events = 1 << 20) : max_events_(max_events) {}

  // Event i of `events` gets sequence number last_seq() + 1 + i.
  void Append(absl::Span<const KvEvent> events);

  // The number of the newest event (0: none yet).
  uint64_t last_seq() const;

  // The events numbered from `first_seq` on (empty when there are none yet); nullopt when some of
  // them were dropped (the reader needs a snapshot).
  std::optional<std::vector<KvEvent>> Since(uint64_t first_seq) const;

  struct Snapshot {
    uint64_t seq = 0;             // the events up to it are reflected
    std::vector<PageKey> keys;    // a key held by several pools appears once per pool
  };
  Snapshot Take() const;

 private:
  const size_t max_events_;
  mutable absl::Mutex mu_;
  uint64_t last_seq_ ABSL_GUARDED_BY(mu_) = 0;
  std::deque<KvEvent> recent_ ABSL_GUARDED_BY(mu_);  // numbered last_seq_ - size + 1 .. last_seq_
  absl::flat_hash_map<PageKey, int32_t> held_ ABSL_GUARDED_BY(mu_);  // key -> pools holding it
};

}  // namespace q3vl::kv

#endif  // Q3VL_KV_EVENT_LOG_H_
