#include "model/encoder_cache.h"

#include <atomic>

#include "core/check.h"

namespace q3vl::model {
namespace {
std::atomic<int64_t> bytes_digested{0};
}  // namespace

std::vector<Digest256> DigestMediaItems(const VisionInput& input, MediaKind kind) {
  std::vector<Digest256> out;
  if (input.grids.empty()) return out;
  const Tensor& pixels = input.pixel_values;
  Q3VL_CHECK(pixels.dtype() == DType::kF32 && pixels.rank() == 2 && pixels.is_contiguous())
      << "pixel_values must be contiguous f32 [N, C]: " << pixels.DebugString();
  const int64_t cols = pixels.dim(1);
  int64_t row = 0;
  int64_t bytes = 0;
  for (const GridThw& grid : input.grids) {
    const int64_t rows = grid[0] * grid[1] * grid[2];
    Q3VL_CHECK(row + rows <= pixels.dim(0)) << "grids cover more rows than pixel_values has";
    // Kind, grid and row width first: items that differ in any of them differ.
    const int64_t header[5] = {static_cast<int64_t>(kind), grid[0], grid[1], grid[2], cols};
    Sha256 sha;
    sha.Update(header, sizeof(header));
    sha.Update(pixels.data<float>() + row * cols, static_cast<size_t>(rows * cols) * sizeof(float));
    out.push_back(sha.Final());
    row += rows;
    bytes += rows * cols * static_cast<int64_t>(sizeof(float));
  }
  bytes_digested.fetch_add(bytes, std::memory_order_relaxed);
  return out;
}

int64_t MediaBytesDigested() { return bytes_digested.load(std::memory_order_relaxed); }

MediaDigests DigestMedia(const VisionInput& images, const VisionInput& videos) {
  MediaDigests d;
  if (!images.grids.empty()) d.images = DigestMediaItems(CacheUnits(images, MediaKind::kImage), MediaKind::kImage);
  if (!videos.grids.empty()) d.videos = DigestMediaItems(CacheUnits(videos, MediaKind::kVideo), MediaKind::kVideo);
  return d;
}

VisionInput CacheUnits(const VisionInput& input, MediaKind kind) {
  if (kind == MediaKind::kImage) return input;
  VisionInput units{.pixel_values = input.pixel_values};
  for (const GridThw& g : input.grids) units.grids.insert(units.grids.end(), g[0], GridThw{1, g[1], g[2]});
  return units;
}

const EncodedItem* EncoderCache::Lookup(const Digest256& key) {
  ++queries_;
  auto it = entries_.find(key);
  if (it == entries_.end()) return nullptr;
  ++hits_;
  lru_.splice(lru_.begin(), lru_, it->second);
  return &it->second->item;
}

void EncoderCache::Insert(const Digest256& key, EncodedItem item) {
  if (item.tokens > capacity_ || entries_.contains(key)) return;
  while (used_ + item.tokens > capacity_) {
    used_ -= lru_.back().item.tokens;
    entries_.erase(lru_.back().key);
    lru_.pop_back();
  }
  used_ += item.tokens;
  lru_.push_front({key, std::move(item)});
  entries_[key] = lru_.begin();
}

}  // namespace q3vl::model
