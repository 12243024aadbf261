// The encoder cache: the vision tower's output for an image or a video frame group, kept across
// requests and keyed by its content (SHA-256 of its kind, grid and pixel rows), so identical
// media within the budget are encoded once. Entries are whole units (merged rows and DeepStack
// rows), evicted least recently used when an insert needs room; the budget is in visual tokens
// (rows).
//
// The unit is an image, or one frame group of a video (its grid (t, h, w) is t groups of
// (1, h, w)): the tower attends within a frame group only, so a group's rows depend on its own
// pixels alone. Two videos that share their first frames (a long-video sweep that moves a needle
// through one haystack) share those groups' rows here and, through PromptPageKeys, their
// prefix-cache pages; a video that repeats a group (a looped clip) encodes it once.
//
// Every rank of a replica that takes part in encoding holds one and makes the same calls in the
// same order (the executor replays the leader's plans), so hits and misses agree on every rank:
// stage 0 encodes exactly the items the vision ranks serve. A vision rank's cache keeps the
// keys only (it needs the decisions, not the rows). Single-threaded (the engine loop).
#ifndef Q3VL_MODEL_ENCODER_CACHE_H_
#define Q3VL_MODEL_ENCODER_CACHE_H_

#include <cstdint>
#include <list>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "core/sha256.h"
#include "core/tensor.h"
#include "model/media/vision_input.h"

namespace q3vl::model {

enum class MediaKind : uint8_t { kImage = 1, kVideo = 2 };

// One digest per item of `input` (grid i covers the next t*h*w patch rows of pixel_values).
// REQUIRES: pixel_values is contiguous f32 on the host, with the rows the grids give.
std::vector<Digest256> DigestMediaItems(const VisionInput& input, MediaKind kind);

// `input` as the cache's units: images unchanged; each video's grid (t, h, w) replaced by t
// grids (1, h, w) over the same pixel rows (the rows are already in group order).
VisionInput CacheUnits(const VisionInput& input, MediaKind kind);

// A request's unit digests per kind (DigestMediaItems over CacheUnits), computed once per
// request: its prefix-cache keys and its encoding share them (a long video is gigabytes of
// pixels to hash).
struct MediaDigests {
  std::vector<Digest256> images, videos;
};
MediaDigests DigestMedia(const VisionInput& images, const VisionInput& videos);
// Pixel bytes hashed by DigestMediaItems in this process so far (tests check hashing once).
int64_t MediaBytesDigested();

// One item's encoder output: [tokens, D] merged rows and one [tokens, D] per DeepStack layer
// (undefined on a keys-only cache). They may be views of one tower pass's output shared with
// the pass's other items: the budget counts tokens, and a pass's buffer is freed when its last
// item leaves.
struct EncodedItem {
  int64_t tokens = 0;
  Tensor embeds;
  std::vector<Tensor> deepstack;
};

class EncoderCache {
 public:
  // capacity_tokens == 0 disables the cache (every lookup misses, nothing is kept).
  explicit EncoderCache(int64_t capacity_tokens) : capacity_(capacity_tokens) {}

  // The entry, made most recently used; null when absent. Counts a query (and a hit).
  const EncodedItem* Lookup(const Digest256& key);
  // Keeps `item` (evicting least recently used entries for room); an item over the whole
  // capacity, or a key already present, is not kept.
  void Insert(const Digest256& key, EncodedItem item);

  int64_t capacity_tokens() const { return capacity_; }
  int64_t used_tokens() const { return used_; }
  int64_t size() const { return static_cast<int64_t>(entries_.size()); }
  int64_t queries() const { return queries_; }
  int64_t hits() const { return hits_; }

 private:
  struct Entry {
    Digest256 key;
    EncodedItem item;
  };
  int64_t capacity_;
  int64_t used_ = 0, queries_ = 0, hits_ = 0;
  std::list<Entry> lru_;  // most recently used first
  absl::flat_hash_map<Digest256, std::list<Entry>::iterator> entries_;
};

}  // namespace q3vl::model

#endif  // Q3VL_MODEL_ENCODER_CACHE_H_
