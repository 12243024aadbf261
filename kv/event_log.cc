#include "kv/event_log.h"

namespace q3vl::kv {

void KvEventLog::Append(absl::Span<const KvEvent> events) {
  if (events.empty()) return;
  absl::MutexLock lock(&mu_);
  for (const KvEvent& e : events) {
    if (e.stored) {
      ++held_[e.key];
    } else if (auto it = held_.find(e.key); it != held_.end() && --it->second == 0) {
      held_.erase(it);
    }
    recent_.push_back(e);
  }
  last_seq_ += events.size();
  while (recent_.size() > max_events_) recent_.pop_front();
}

uint64_t KvEventLog::last_seq() const {
  absl::MutexLock lock(&mu_);
  return last_seq_;
}

std::optional<std::vector<KvEvent>> KvEventLog::Since(uint64_t first_seq) const {
  absl::MutexLock lock(&mu_);
  const uint64_t oldest = last_seq_ - recent_.size() + 1;
  if (first_seq < oldest || first_seq == 0) return std::nullopt;
  if (first_seq > last_seq_) return std::vector<KvEvent>{};
  return std::vector<KvEvent>(recent_.begin() + static_cast<int64_t>(first_seq - oldest), recent_.end());
}

KvEventLog::Snapshot KvEventLog::Take() const {
  absl::MutexLock lock(&mu_);
  Snapshot out{.seq = last_seq_};
  out.keys.reserve(held_.size());
  for (const auto& [key, count] : held_) {
    for (int32_t i = 0; i < count; ++i) out.keys.push_back(key);
  }
  return out;
}

}  // namespace q3vl::kv
