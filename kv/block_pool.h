// BlockPool: the page ids of one KV pool and its prefix cache, on the host (no tensors). The
// scheduler owns one per attention group and names in each step's plan the pages every
// sequence appends; the runners' caches follow (PagedKvCache::Assign).
//
// A full page whose content is known is registered under its key: a hash chain over the
// prompt (PageKeys: the parent page's key, the page's token ids, and the content digests of
// the images and videos whose placeholder tokens fall in it). Pages are reference-counted and
// shared by every sequence whose prompt starts with the same keys. A page nobody references
// stays cached (its content intact) on an LRU list and is evicted, least recently released
// first, only when a fresh page is needed and the free list is empty. So the pool never fails
// an allocation the scheduler has counted: free pages are the free list plus the cached ones.
// Not thread-safe: the engine loop owns it.
#ifndef Q3VL_KV_BLOCK_POOL_H_
#define Q3VL_KV_BLOCK_POOL_H_

#include <cstdint>
#include <list>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/types/span.h"
#include "core/sha256.h"

namespace q3vl::kv {

using PageKey = Digest256;  // SHA-256 (core/sha256.h: a crafted prompt cannot forge a hit)

// One image or video of a prompt: its content digest and the prompt positions of its
// placeholder tokens [begin, end).
struct MediaSpan {
  Digest256 digest;
  int64_t begin = 0;
  int64_t end = 0;
};

// Keys of the full pages of `tokens` (floor(size / page_size) of them): key i = SHA-256(key
// i-1, the page's token ids, the digest and offset within the item of every media span that
// overlaps the page). Two prompts share key i exactly when their first (i + 1) pages hold the
// same tokens and the same media content.
std::vector<PageKey> PageKeys(absl::Span<const int64_t> tokens, absl::Span<const MediaSpan> media, int64_t page_size);

// A key that entered (stored) or left (evicted) a pool's index.
struct KvEvent {
  bool stored = true;
  PageKey key;
};

class BlockPool {
 public:
  explicit BlockPool(int64_t num_pages);

  int64_t num_pages() const { return num_pages_; }
  // Pages an Allocate may take: never referenced, or cached and unreferenced (evictable).
  int64_t num_free() const { return static_cast<int64_t>(free_.size() + lru_.size()); }
  int64_t num_used() const { return num_pages_ - num_free(); }
  int64_t num_cached() const { return static_cast<int64_t>(index_.size()); }

  // How many of `keys`, from the first, are cached (stops at the first miss).
  int64_t CountCached(absl::Span<const PageKey> keys) const;
  // How many of the first `n` keys' pages nobody references (taking them lowers num_free()).
  int64_t CountUnreferenced(absl::Span<const PageKey> keys, int64_t n) const;
  // The pages of the first `n` keys (REQUIRES: n <= CountCached(keys)), each referenced once
  // more (an unreferenced one leaves the LRU list).
  std::vector<int32_t> TakeCached(absl::Span<const PageKey> keys, int64_t n);
  // `n` fresh pages, referenced once. REQUIRES: n <= num_free(). Takes never-used pages first,
  // then evicts the least recently released cached ones (their keys are forgotten).
  std::vector<int32_t> Allocate(int64_t n);
  // Drops one reference to each page; a page left unreferenced becomes evictable when it is
  // registered, else free. Pass a sequence's pages in order: the last ones are evicted first.
  void Release(absl::Span<const int32_t> pages);
  // `page` (referenced) now holds the content of `key`. A key already cached under another page
  // is left as it is (the page stays unregistered and is freed when released).
  void Register(int32_t page, const PageKey& key);

  // What entered and left the index since the last call (keys registered, keys evicted), in
  // order: the replica reports them to the coordinator's global index (kv/event_log.h).
  std::vector<KvEvent> TakeEvents() { return std::exchange(events_, {}); }

 private:
  struct Page {
    int32_t refs = 0;
    bool registered = false;
    PageKey key{};
    std::list<int32_t>::iterator lru;  // valid when registered and refs == 0
  };
  int64_t num_pages_;
  std::vector<Page> pages_;
  std::vector<int32_t> free_;    // never used or unregistered, unreferenced (a stack)
  std::list<int32_t> lru_;       // registered and unreferenced, least recently released first
  absl::flat_hash_map<PageKey, int32_t> index_;  // key -> page
  std::vector<KvEvent> events_;
};

}  // namespace q3vl::kv

#endif  // Q3VL_KV_BLOCK_POOL_H_
