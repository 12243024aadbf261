#include "core/cpu/host_pool.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "core/check.h"

namespace q3vl::cpu {
namespace {

// Blocks below this come from malloc's own heap, which reuses pages without faults already.
constexpr size_t kMinPooledBytes = size_t{256} << 10;

// Size classes: 64-byte multiples below kMinPooledBytes, above it eight classes per power of
// two (at most 12.5% slack), so that a decode step whose buffers grow by a row reuses blocks.
size_t Rounded(size_t size_bytes) {
  if (size_bytes < kMinPooledBytes) return size_bytes == 0 ? 64 : (size_bytes + 63) / 64 * 64;
  size_t power = kMinPooledBytes;
  while (power * 2 <= size_bytes) power *= 2;
  const size_t step = power / 8;
  return (size_bytes + step - 1) / step * step;
}

// memset with every thread for large blocks (a reused block is warm, so this runs at
// memory bandwidth rather than at page-fault speed).
void Zero(void* data, size_t bytes) {
  constexpr size_t kChunk = size_t{1} << 20;
  char* p = static_cast<char*>(data);
  const int64_t chunks = static_cast<int64_t>((bytes + kChunk - 1) / kChunk);
#pragma omp parallel for schedule(static) if (chunks >= 8)
  for (int64_t c = 0; c < chunks; ++c) {
    const size_t begin = c * kChunk;
    std::memset(p + begin, 0, std::min(kChunk, bytes - begin));
  }
}

}  // namespace

class HostPool::PooledBuffer final : public Buffer {
 public:
  PooledBuffer(std::shared_ptr<HostPool> pool, void* data, size_t size_bytes)
      : pool_(std::move(pool)), data_(data), size_bytes_(size_bytes) {}
  ~PooledBuffer() override { pool_->Release(data_, Rounded(size_bytes_)); }
  void* data() override { return data_; }
  size_t size_bytes() const override { return size_bytes_; }
  Device device() const override { return Device::kCpu; }

 private:
  std::shared_ptr<HostPool> pool_;
  void* data_;
  size_t size_bytes_;
};

std::shared_ptr<HostPool> HostPool::Create(size_t max_cached_bytes) {
  return std::shared_ptr<HostPool>(new HostPool(max_cached_bytes));
}

HostPool::~HostPool() {
  for (auto& [size, blocks] : free_) {
    for (void* p : blocks) std::free(p);
  }
}

std::shared_ptr<Buffer> HostPool::Allocate(size_t size_bytes, bool zero) {
  const size_t rounded = Rounded(size_bytes);
  if (rounded < kMinPooledBytes) return std::make_shared<HostBuffer>(size_bytes);
  void* data = nullptr;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = free_.find(rounded);
    if (it != free_.end() && !it->second.empty()) {
      data = it->second.back();
      it->second.pop_back();
      cached_bytes_ -= rounded;
      ++hits_;
    } else {
      ++misses_;
    }
  }
  if (data == nullptr) {
    data = std::aligned_alloc(64, rounded);
    Q3VL_CHECK(data != nullptr) << "out of host memory allocating " << size_bytes << " bytes";
  }
  if (zero) Zero(data, size_bytes);
  return std::make_shared<PooledBuffer>(shared_from_this(), data, size_bytes);
}

// Over the cap, everything cached is dropped first: sizes that stopped recurring (a context
// that grew, a batch that shrank) must not hold the cache forever.
void HostPool::Release(void* data, size_t rounded_bytes) {
  std::vector<void*> drop;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (cached_bytes_ + rounded_bytes > max_cached_bytes_) {
      for (auto& [size, blocks] : free_) drop.insert(drop.end(), blocks.begin(), blocks.end());
      free_.clear();
      cached_bytes_ = 0;
    }
    if (rounded_bytes <= max_cached_bytes_) {
      free_[rounded_bytes].push_back(data);
      cached_bytes_ += rounded_bytes;
      data = nullptr;
    }
  }
  for (void* p : drop) std::free(p);
  std::free(data);
}

size_t HostPool::cached_bytes() const {
  std::lock_guard<std::mutex> lock(mu_);
  return cached_bytes_;
}

int64_t HostPool::hits() const {
  std::lock_guard<std::mutex> lock(mu_);
  return hits_;
}

int64_t HostPool::misses() const {
  std::lock_guard<std::mutex> lock(mu_);
  return misses_;
}

}  // namespace q3vl::cpu
