#include "core/cuda/device_pool.h"

#include <cuda_runtime.h>

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "core/cuda/cuda_status.h"

namespace q3vl::cuda {

std::shared_ptr<DevicePool> DevicePool::Create(int device, size_t max_cached_bytes) {
  return std::shared_ptr<DevicePool>(new DevicePool(device, max_cached_bytes));
}

DevicePool::~DevicePool() {
  std::lock_guard<std::mutex> lock(mu_);
  EmptyCacheLocked();
}

size_t DevicePool::RoundSize(size_t bytes) {
  constexpr size_t kSmallStep = 512, kLargeStep = size_t{2} << 20, kSmallLimit = size_t{1} << 20;
  if (bytes == 0) return kSmallStep;
  const size_t step = bytes <= kSmallLimit ? kSmallStep : kLargeStep;
  return (bytes + step - 1) / step * step;
}

absl::StatusOr<std::shared_ptr<Buffer>> DevicePool::Allocate(size_t bytes) {
  const size_t size = RoundSize(bytes);
  void* ptr = nullptr;
  size_t got = size;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = free_.lower_bound(size);
    if (it != free_.end() && it->first <= 2 * size) {
      got = it->first;
      ptr = it->second;
      free_.erase(it);
      stats_.cached_bytes -= got;
      ++stats_.reuses;
    } else {
      Q3VL_CUDA_RETURN_IF_ERROR(cudaSetDevice(device_));
      cudaError_t error = cudaMalloc(&ptr, size);
      if (error == cudaErrorMemoryAllocation) {
        cudaGetLastError();  // clear it, give the cache back, retry once
        EmptyCacheLocked();
        error = cudaMalloc(&ptr, size);
      }
      if (error != cudaSuccess) {
        cudaGetLastError();
        return absl::ResourceExhaustedError(absl::StrCat(
            "CUDA device ", device_, ": cannot allocate ", size, " bytes (", cudaGetErrorString(error), "); in use ",
            stats_.in_use_bytes, " bytes, peak ", stats_.peak_in_use_bytes));
      }
      ++stats_.cuda_mallocs;
    }
    stats_.in_use_bytes += got;
    stats_.peak_in_use_bytes = std::max(stats_.peak_in_use_bytes, stats_.in_use_bytes);
  }
  return std::shared_ptr<Buffer>(std::make_shared<DeviceBuffer>(shared_from_this(), ptr, got));
}

void DevicePool::Release(void* ptr, size_t size) {
  std::lock_guard<std::mutex> lock(mu_);
  stats_.in_use_bytes -= size;
  if (stats_.cached_bytes + size > max_cached_bytes_) {
    cudaFree(ptr);  // implicitly synchronises: the block may still be in use by queued work
    return;
  }
  free_.emplace(size, ptr);
  stats_.cached_bytes += size;
}

void DevicePool::EmptyCache() {
  std::lock_guard<std::mutex> lock(mu_);
  EmptyCacheLocked();
}

void DevicePool::EmptyCacheLocked() {
  for (const auto& [size, ptr] : free_) cudaFree(ptr);
  free_.clear();
  stats_.cached_bytes = 0;
}

DevicePoolStats DevicePool::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  return stats_;
}

}  // namespace q3vl::cuda
