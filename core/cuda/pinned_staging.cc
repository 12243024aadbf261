#include "core/cuda/pinned_staging.h"

#include <cstring>

#include "absl/strings/str_cat.h"
#include "core/cuda/cuda_status.h"

namespace q3vl::cuda {

absl::StatusOr<std::unique_ptr<PinnedStaging>> PinnedStaging::Create(cudaStream_t stream, size_t segment_bytes,
                                                                      int segments) {
  if (segments < 2 || segment_bytes == 0 || segment_bytes % StagingRing::kAlign != 0) {
    return absl::InvalidArgumentError(absl::StrCat("pinned staging needs >= 2 segments of a multiple of ",
                                                   StagingRing::kAlign, " bytes, got ", segments, " of ",
                                                   segment_bytes));
  }
  std::unique_ptr<PinnedStaging> s(new PinnedStaging(stream));
  const size_t total = segment_bytes * static_cast<size_t>(segments);
  void* memory = nullptr;
  const cudaError_t error = cudaHostAlloc(&memory, total, cudaHostAllocDefault);
  if (error != cudaSuccess) {
    return CudaStatus(error, absl::StrCat("cudaHostAlloc of ", total >> 20, " MiB of pinned staging memory").c_str());
  }
  s->memory_ = static_cast<char*>(memory);
  s->events_.resize(segments, nullptr);
  for (cudaEvent_t& event : s->events_) {
    Q3VL_CUDA_RETURN_IF_ERROR(cudaEventCreateWithFlags(&event, cudaEventDisableTiming));
  }
  PinnedStaging* self = s.get();
  s->ring_ = std::make_unique<StagingRing>(
      s->memory_, segment_bytes, segments,
      StagingRing::Hooks{
          .leave = [self](int segment) { Q3VL_CUDA_CHECK(cudaEventRecord(self->events_[segment], self->stream_)); },
          // An event never recorded counts as complete.
          .enter = [self](int segment) { Q3VL_CUDA_CHECK(cudaEventSynchronize(self->events_[segment])); }});
  return s;
}

PinnedStaging::~PinnedStaging() {
  if (memory_ != nullptr) cudaStreamSynchronize(stream_);  // no DMA may still read the ring
  for (cudaEvent_t event : events_) {
    if (event != nullptr) cudaEventDestroy(event);
  }
  if (memory_ != nullptr) cudaFreeHost(memory_);
}

void PinnedStaging::Upload(void* device_dst, const void* host_src, size_t bytes) {
  const char* src = static_cast<const char*>(host_src);
  char* dst = static_cast<char*>(device_dst);
  for (size_t done = 0; done < bytes;) {
    const auto [staged, size] = ring_->Acquire(bytes - done);
    std::memcpy(staged, src + done, size);
    Q3VL_CUDA_CHECK(cudaMemcpyAsync(dst + done, staged, size, cudaMemcpyHostToDevice, stream_));
    done += size;
  }
}

void PinnedStaging::Download(void* host_dst, const void* device_src, size_t bytes) {
  const char* src = static_cast<const char*>(device_src);
  char* dst = static_cast<char*>(host_dst);
  for (size_t done = 0; done < bytes;) {
    const auto [staged, size] = ring_->Acquire(bytes - done);
    Q3VL_CUDA_CHECK(cudaMemcpyAsync(staged, src + done, size, cudaMemcpyDeviceToHost, stream_));
    Q3VL_CUDA_CHECK(cudaStreamSynchronize(stream_));
    std::memcpy(dst + done, staged, size);
    done += size;
  }
}

bool PinnedStaging::IsPinned(const void* p) {
  cudaPointerAttributes attributes{};
  if (cudaPointerGetAttributes(&attributes, p) != cudaSuccess) {
    (void)cudaGetLastError();  // not a pointer the runtime knows: pageable
    return false;
  }
  return attributes.type == cudaMemoryTypeHost;
}

}  // namespace q3vl::cuda
