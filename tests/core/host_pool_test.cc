// The CPU backend's caching allocator: reuse by size class, zero-filled blocks, the cap.
#include "core/cpu/host_pool.h"

#include <cmath>
#include <cstring>

#include "core/cpu/cpu_backend.h"
#include "gtest/gtest.h"

namespace q3vl::cpu {
namespace {

constexpr size_t kMiB = size_t{1} << 20;

bool AllZero(const std::shared_ptr<Buffer>& b) {
  const char* p = static_cast<const char*>(b->data());
  for (size_t i = 0; i < b->size_bytes(); ++i) {
    if (p[i] != 0) return false;
  }
  return true;
}

TEST(HostPoolTest, ReusesFreedBlocksZeroFilled) {
  auto pool = HostPool::Create(64 * kMiB);
  void* first = nullptr;
  {
    auto b = pool->Allocate(3 * kMiB);
    first = b->data();
    std::memset(b->data(), 0x5a, b->size_bytes());
  }
  EXPECT_GE(pool->cached_bytes(), 3 * kMiB);
  auto again = pool->Allocate(3 * kMiB - 1000);  // same size class
  EXPECT_EQ(again->data(), first);
  EXPECT_EQ(again->size_bytes(), 3 * kMiB - 1000);
  EXPECT_TRUE(AllZero(again));
  EXPECT_EQ(pool->hits(), 1);
  EXPECT_EQ(pool->misses(), 1);
}

// Uninitialized blocks skip the zero fill (a reused block keeps its old bytes); the backend's
// poison option fills them with 0xff instead (NaN floats), and Allocate still zero-fills.
TEST(HostPoolTest, UninitializedBlocksSkipTheZeroFill) {
  auto pool = HostPool::Create(64 * kMiB);
  {
    auto b = pool->Allocate(3 * kMiB);
    std::memset(b->data(), 0x5a, b->size_bytes());
  }
  auto raw = pool->Allocate(3 * kMiB, /*zero=*/false);
  EXPECT_EQ(static_cast<const unsigned char*>(raw->data())[12345], 0x5a);

  CpuBackend poisoning({.poison_uninitialized = true});
  const void* block = nullptr;
  {
    const Tensor t = poisoning.AllocateUninitialized(DType::kF32, {1 << 20});
    EXPECT_TRUE(std::isnan(t.data<float>()[0]) && std::isnan(t.data<float>()[(1 << 20) - 1]));
    block = t.raw_data();
  }
  const Tensor z = poisoning.Allocate(DType::kF32, {1 << 20});  // the poisoned block, reused
  EXPECT_EQ(z.raw_data(), block);
  EXPECT_EQ(z.data<float>()[0], 0.0f);
  EXPECT_EQ(z.data<float>()[(1 << 20) - 1], 0.0f);
}

TEST(HostPoolTest, SmallBlocksAreNotPooled) {
  auto pool = HostPool::Create(64 * kMiB);
  { auto b = pool->Allocate(1000); }
  EXPECT_EQ(pool->cached_bytes(), 0u);
  EXPECT_EQ(pool->hits() + pool->misses(), 0);
}

TEST(HostPoolTest, CapDropsStaleBlocks) {
  auto pool = HostPool::Create(10 * kMiB);
  { auto a = pool->Allocate(6 * kMiB); }
  EXPECT_GE(pool->cached_bytes(), 6 * kMiB);
  { auto b = pool->Allocate(8 * kMiB); }  // 6 + 8 > 10: the stale 6 MiB block is dropped
  EXPECT_GE(pool->cached_bytes(), 8 * kMiB);
  EXPECT_LE(pool->cached_bytes(), 10 * kMiB);
  { auto c = pool->Allocate(40 * kMiB); }  // larger than the cap: never cached
  EXPECT_LE(pool->cached_bytes(), 10 * kMiB);
}

TEST(HostPoolTest, BuffersOutliveTheBackend) {
  Tensor t;
  {
    CpuBackend backend({.max_cached_bytes = 16 * kMiB});
    t = backend.Allocate(DType::kF32, {1024, 1024});
  }
  t.data<float>()[1024 * 1024 - 1] = 1.0f;  // the pool is kept alive by the buffer
  EXPECT_EQ(t.data<float>()[0], 0.0f);
}

}  // namespace
}  // namespace q3vl::cpu
