// The prefix cache's keys and page pool: keys chain over tokens and media content (equal
// prefixes share keys, one different token or image changes every later key), reference
// counts, LRU eviction of released cached pages (a sequence's tail first), and accounting that
// never hands out a page twice.
#include "kv/block_pool.h"

#include <set>

#include "gtest/gtest.h"

namespace q3vl::kv {
namespace {

Digest256 DigestOf(uint8_t b) {
  Digest256 d;
  d.bytes.fill(b);
  return d;
}

std::vector<int64_t> Tokens(int64_t n, int64_t salt = 0) {
  std::vector<int64_t> t(n);
  for (int64_t i = 0; i < n; ++i) t[i] = 100 + i * 7 + salt;
  return t;
}

TEST(PageKeysTest, ChainOverTokensAndMedia) {
  const std::vector<int64_t> a = Tokens(40);
  EXPECT_EQ(PageKeys(a, {}, 16).size(), 2u);  // full pages only
  EXPECT_EQ(PageKeys(a, {}, 16), PageKeys(Tokens(47), {}, 16));  // same first two pages
  // One token changed in page 1: page 0 keeps its key, page 1 and later change.
  std::vector<int64_t> b = a;
  b[20] += 1;
  const auto ka = PageKeys(a, {}, 8), kb = PageKeys(b, {}, 8);
  EXPECT_EQ(ka[0], kb[0]);
  EXPECT_EQ(ka[1], kb[1]);
  for (size_t i = 2; i < ka.size(); ++i) EXPECT_NE(ka[i], kb[i]) << i;
  // Same placeholder ids, different image content: keys differ from the first page the image
  // touches; an image's offset within a page matters too.
  const std::vector<MediaSpan> x = {{.digest = DigestOf(1), .begin = 10, .end = 30}};
  const std::vector<MediaSpan> y = {{.digest = DigestOf(2), .begin = 10, .end = 30}};
  const auto kx = PageKeys(a, x, 8), ky = PageKeys(a, y, 8), kn = PageKeys(a, {}, 8);
  EXPECT_EQ(kx[0], ky[0]);  // tokens 0-7: before the image
  EXPECT_EQ(kx[0], kn[0]);
  for (size_t i = 1; i < kx.size(); ++i) EXPECT_NE(kx[i], ky[i]) << i;
  EXPECT_EQ(kx, PageKeys(a, x, 8));
}

TEST(BlockPoolTest, AllocatesEachPageOnceAndFreesUnregisteredPages) {
  BlockPool pool(4);
  const std::vector<int32_t> a = pool.Allocate(3);
  EXPECT_EQ(std::set<int32_t>(a.begin(), a.end()).size(), 3u);
  EXPECT_EQ(pool.num_free(), 1);
  EXPECT_EQ(pool.num_used(), 3);
  pool.Release(a);
  EXPECT_EQ(pool.num_free(), 4);
  EXPECT_EQ(pool.num_cached(), 0);
  EXPECT_DEATH(pool.Allocate(5), "counted pages");
}

TEST(BlockPoolTest, CachedPagesAreSharedThenEvictedTailFirst) {
  BlockPool pool(4);
  const auto keys = PageKeys(Tokens(48), {}, 16);  // 3 pages
  std::vector<int32_t> a = pool.Allocate(3);
  for (int i = 0; i < 3; ++i) pool.Register(a[i], keys[i]);
  EXPECT_EQ(pool.CountCached(keys), 3);
  // A second holder shares them; releasing one holder keeps them referenced.
  const std::vector<int32_t> b = pool.TakeCached(keys, 2);
  EXPECT_EQ(b, std::vector<int32_t>(a.begin(), a.begin() + 2));
  pool.Release(a);
  EXPECT_EQ(pool.num_used(), 2);
  EXPECT_EQ(pool.num_free(), 2);  // page a[2] cached and evictable, one never used
  EXPECT_EQ(pool.CountUnreferenced(keys, 3), 1);
  pool.Release(b);
  EXPECT_EQ(pool.num_free(), 4);
  EXPECT_EQ(pool.CountCached(keys), 3);  // released, still cached
  // Fresh pages: the never-used one first, then the cached ones, a's tail before its head.
  const std::vector<int32_t> c = pool.Allocate(2);
  EXPECT_EQ(pool.CountCached(keys), 2);  // page 2 (the tail) evicted
  EXPECT_EQ(c[1], a[2]);
  const std::vector<int32_t> d = pool.Allocate(1);
  EXPECT_EQ(d[0], a[1]);
  EXPECT_EQ(pool.CountCached(keys), 1);  // the head page survives longest
  EXPECT_EQ(pool.num_cached(), 1);
  pool.Release(c);
  pool.Release(d);
  EXPECT_EQ(pool.num_free(), 4);
}

TEST(BlockPoolTest, ADuplicateKeyStaysWithItsFirstPage) {
  BlockPool pool(3);
  const auto keys = PageKeys(Tokens(16), {}, 16);
  const std::vector<int32_t> a = pool.Allocate(1), b = pool.Allocate(1);
  pool.Register(a[0], keys[0]);
  pool.Register(b[0], keys[0]);  // computed twice concurrently: the second is not indexed
  EXPECT_EQ(pool.TakeCached(keys, 1), a);
  pool.Release(b);
  EXPECT_EQ(pool.num_free(), 2);  // b freed outright, a still held twice
  EXPECT_EQ(pool.num_cached(), 1);
}

}  // namespace
}  // namespace q3vl::kv
