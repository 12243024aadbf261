#include "kv/block_pool.h"

#include <algorithm>

#include "core/check.h"

namespace q3vl::kv {

std::vector<PageKey> PageKeys(absl::Span<const int64_t> tokens, absl::Span<const MediaSpan> media, int64_t page_size) {
  Q3VL_CHECK_GT(page_size, 0);
  const int64_t pages = static_cast<int64_t>(tokens.size()) / page_size;
  std::vector<PageKey> keys;
  keys.reserve(pages);
  PageKey parent{};
  for (int64_t p = 0; p < pages; ++p) {
    const int64_t begin = p * page_size, end = begin + page_size;
    Sha256 h;
    h.Update(parent.bytes.data(), parent.bytes.size());
    h.Update(tokens.data() + begin, page_size * sizeof(int64_t));
    for (const MediaSpan& m : media) {
      if (m.end <= begin || m.begin >= end) continue;
      // The item's content and where this page starts inside its placeholder run.
      const int64_t offset = begin - m.begin;
      h.Update(m.digest.bytes.data(), m.digest.bytes.size());
      h.Update(&offset, sizeof(offset));
    }
    parent = h.Final();
    keys.push_back(parent);
  }
  return keys;
}

BlockPool::BlockPool(int64_t num_pages) : num_pages_(num_pages), pages_(num_pages) {
  Q3VL_CHECK_GT(num_pages, 0);
  free_.reserve(num_pages);
  for (int64_t p = num_pages - 1; p >= 0; --p) free_.push_back(static_cast<int32_t>(p));  // page 0 first
}

int64_t BlockPool::CountCached(absl::Span<const PageKey> keys) const {
  int64_t n = 0;
  while (n < static_cast<int64_t>(keys.size()) && index_.contains(keys[n])) ++n;
  return n;
}

int64_t BlockPool::CountUnreferenced(absl::Span<const PageKey> keys, int64_t n) const {
  int64_t count = 0;
  for (int64_t i = 0; i < n; ++i) count += pages_[index_.at(keys[i])].refs == 0 ? 1 : 0;
  return count;
}

std::vector<int32_t> BlockPool::TakeCached(absl::Span<const PageKey> keys, int64_t n) {
  Q3VL_CHECK_LE(n, static_cast<int64_t>(keys.size()));
  std::vector<int32_t> out;
  out.reserve(n);
  for (int64_t i = 0; i < n; ++i) {
    auto it = index_.find(keys[i]);
    Q3VL_CHECK(it != index_.end()) << "page key " << i << " is not cached";
    Page& page = pages_[it->second];
    if (page.refs++ == 0) lru_.erase(page.lru);
    out.push_back(it->second);
  }
  return out;
}

std::vector<int32_t> BlockPool::Allocate(int64_t n) {
  Q3VL_CHECK_LE(n, num_free()) << "the scheduler counted pages the pool does not have";
  std::vector<int32_t> out;
  out.reserve(n);
  for (int64_t i = 0; i < n; ++i) {
    int32_t id;
    if (!free_.empty()) {
      id = free_.back();
      free_.pop_back();
    } else {  // evict the least recently released cached page
      id = lru_.front();
      lru_.pop_front();
      index_.erase(pages_[id].key);
      pages_[id].registered = false;
      events_.push_back({.stored = false, .key = pages_[id].key});
    }
    pages_[id].refs = 1;
    out.push_back(id);
  }
  return out;
}

void BlockPool::Release(absl::Span<const int32_t> pages) {
  // Last page first: a sequence's tail is evicted before the prefix others may share.
  for (auto it = pages.rbegin(); it != pages.rend(); ++it) {
    Page& page = pages_[*it];
    Q3VL_CHECK_GT(page.refs, 0) << "page " << *it << " released more often than taken";
    if (--page.refs > 0) continue;
    if (page.registered) {
      page.lru = lru_.insert(lru_.end(), *it);
    } else {
      free_.push_back(*it);
    }
  }
}

void BlockPool::Register(int32_t page_id, const PageKey& key) {
  Page& page = pages_[page_id];
  Q3VL_CHECK_GT(page.refs, 0) << "page " << page_id << " registered while free";
  if (page.registered || index_.contains(key)) return;
  index_[key] = page_id;
  page.registered = true;
  page.key = key;
  events_.push_back({.stored = true, .key = key});
}

}  // namespace q3vl::kv
