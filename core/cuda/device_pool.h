// DevicePool: a caching allocator of device memory for one device and one stream. Blocks come
// from cudaMalloc (never managed memory) in rounded sizes (512 B steps up to 1 MiB, then 2 MiB
// steps) and go back to a free list by size when the last Tensor holding them drops; a request
// reuses the smallest cached block that fits within 2x. Reuse is safe without events because
// every op of the backend runs on the pool's one stream, in order: work queued before a block
// was released finishes before work queued after its reuse. When cudaMalloc fails the cache is
// emptied (cudaFree) and the allocation retried once. Thread-safe.
#ifndef Q3VL_CORE_CUDA_DEVICE_POOL_H_
#define Q3VL_CORE_CUDA_DEVICE_POOL_H_

#include <cstddef>
#include <map>
#include <memory>
#include <mutex>

#include "absl/status/statusor.h"
#include "core/tensor.h"

namespace q3vl::cuda {

struct DevicePoolStats {
  size_t in_use_bytes = 0;
  size_t cached_bytes = 0;
  size_t peak_in_use_bytes = 0;
  size_t cuda_mallocs = 0;
  size_t reuses = 0;
};

class DevicePool : public std::enable_shared_from_this<DevicePool> {
 public:
  // `max_cached_bytes`: freed blocks beyond this are returned to the driver.
  static std::shared_ptr<DevicePool> Create(int device, size_t max_cached_bytes);
  ~DevicePool();

  // A block of at least `bytes` on the pool's device (not zeroed). ResourceExhausted names the
  // request and the pool's state when the device is full.
  absl::StatusOr<std::shared_ptr<Buffer>> Allocate(size_t bytes);
  // Returns every cached block to the driver.
  void EmptyCache();
  DevicePoolStats stats() const;
  int device() const { return device_; }

  static size_t RoundSize(size_t bytes);

 private:
  friend class DeviceBuffer;
  DevicePool(int device, size_t max_cached_bytes) : device_(device), max_cached_bytes_(max_cached_bytes) {}
  void Release(void* ptr, size_t size);
  void EmptyCacheLocked();

  const int device_;
  const size_t max_cached_bytes_;
  mutable std::mutex mu_;
  std::multimap<size_t, void*> free_;  // size -> block
  DevicePoolStats stats_;
};

// Device memory from a DevicePool; returns to it when destroyed.
class DeviceBuffer final : public Buffer {
 public:
  DeviceBuffer(std::shared_ptr<DevicePool> pool, void* ptr, size_t size)
      : pool_(std::move(pool)), ptr_(ptr), size_(size) {}
  ~DeviceBuffer() override { pool_->Release(ptr_, size_); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  void* data() override { return ptr_; }
  size_t size_bytes() const override { return size_; }
  Device device() const override { return Device::kCuda; }

 private:
  std::shared_ptr<DevicePool> pool_;
  void* ptr_;
  size_t size_;
};

}  // namespace q3vl::cuda

#endif  // Q3VL_CORE_CUDA_DEVICE_POOL_H_
