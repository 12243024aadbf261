// StagingRing: hands out regions of a host buffer for copies queued on one stream, and reuses a
// region only once the copies that used it have run. Free of CUDA, so that the logic is tested
// on any machine; PinnedStaging (pinned_staging.h) runs it over page-locked memory and events.
//
// The buffer is `segments` segments of `segment_bytes`. Regions are carved from the current
// segment in order (each rounded up to kAlign bytes). A region that does not fit in what is left
// moves the ring on: the owner's `leave(s)` marks segment s as done once the copies queued so far
// have run (an event recorded on the stream), and `enter(s')` blocks until the segment about to
// be refilled was marked done on the previous lap (an event synchronize). So the host waits only
// when the device is a whole ring of copies behind. Not thread-safe (like the backend owning it).
#ifndef Q3VL_CORE_CUDA_STAGING_RING_H_
#define Q3VL_CORE_CUDA_STAGING_RING_H_

#include <cstddef>
#include <functional>
#include <utility>

#include "core/check.h"

namespace q3vl::cuda {

class StagingRing {
 public:
  static constexpr size_t kAlign = 256;

  struct Hooks {
    std::function<void(int segment)> leave;  // the ring moves off `segment`
    std::function<void(int segment)> enter;  // the ring is about to refill `segment`
  };

  // REQUIRES: base holds segments * segment_bytes bytes; segment_bytes is a multiple of kAlign;
  // segments >= 2.
  StagingRing(char* base, size_t segment_bytes, int segments, Hooks hooks)
      : base_(base), segment_bytes_(segment_bytes), segments_(segments), hooks_(std::move(hooks)) {
    Q3VL_CHECK(segment_bytes_ > 0 && segment_bytes_ % kAlign == 0) << segment_bytes_;
    Q3VL_CHECK_GE(segments_, 2);
  }

  // A region for the next min(bytes, segment_bytes) bytes of a copy (bytes > 0): {start, size}.
  // The caller queues its copy through it before the next call; larger copies take several.
  std::pair<char*, size_t> Acquire(size_t bytes) {
    Q3VL_CHECK_GT(bytes, size_t{0});
    const size_t size = bytes < segment_bytes_ ? bytes : segment_bytes_;
    if (used_ + size > segment_bytes_) {
      hooks_.leave(current_);
      current_ = (current_ + 1) % segments_;
      hooks_.enter(current_);
      used_ = 0;
    }
    char* start = base_ + static_cast<size_t>(current_) * segment_bytes_ + used_;
    used_ += (size + kAlign - 1) / kAlign * kAlign;
    return {start, size};
  }

  size_t segment_bytes() const { return segment_bytes_; }
  int segments() const { return segments_; }

 private:
  char* const base_;
  const size_t segment_bytes_;
  const int segments_;
  Hooks hooks_;
  int current_ = 0;
  size_t used_ = 0;  // bytes of the current segment handed out
};

}  // namespace q3vl::cuda

#endif  // Q3VL_CORE_CUDA_STAGING_RING_H_
