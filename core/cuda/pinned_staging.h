// PinnedStaging: copies between pageable host memory and the device through a ring of pinned
// (page-locked) host memory, for one stream. From pageable memory the driver stages every copy
// itself, synchronously and at a fraction of the DMA rate; here an upload is a host memcpy into
// the ring plus an asynchronous DMA, so the caller's buffer is free on return while the host runs
// ahead of the device (it waits only when a whole ring of uploads is still queued), and large
// transfers (weights at load) stream in segment-sized pieces at the pinned rate. A download
// DMAs into the ring, synchronizes the stream and copies out, a segment at a time. The ring is
// StagingRing (staging_ring.h) with one event per segment. Not thread-safe.
#ifndef Q3VL_CORE_CUDA_PINNED_STAGING_H_
#define Q3VL_CORE_CUDA_PINNED_STAGING_H_

#include <cuda_runtime.h>

#include <cstddef>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "core/cuda/staging_ring.h"

namespace q3vl::cuda {

class PinnedStaging {
 public:
  // Allocates segments * segment_bytes of pinned memory on the current device's context.
  static absl::StatusOr<std::unique_ptr<PinnedStaging>> Create(cudaStream_t stream, size_t segment_bytes,
                                                               int segments);
  ~PinnedStaging();
  PinnedStaging(const PinnedStaging&) = delete;
  PinnedStaging& operator=(const PinnedStaging&) = delete;

  // Queues host -> device; `src` may be reused as soon as this returns.
  void Upload(void* device_dst, const void* host_src, size_t bytes);
  // Device -> host, after the work queued before it; returns once `host_dst` holds the bytes.
  void Download(void* host_dst, const void* device_src, size_t bytes);

  // True when `p` is host memory the driver can DMA from directly (pinned or registered).
  static bool IsPinned(const void* p);

  size_t bytes() const { return ring_->segment_bytes() * ring_->segments(); }

 private:
  PinnedStaging(cudaStream_t stream) : stream_(stream) {}

  cudaStream_t stream_;
  char* memory_ = nullptr;
  std::vector<cudaEvent_t> events_;  // one per segment: its copies have run
  std::unique_ptr<StagingRing> ring_;
};

}  // namespace q3vl::cuda

#endif  // Q3VL_CORE_CUDA_PINNED_STAGING_H_
