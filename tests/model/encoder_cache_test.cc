// The encoder cache's bookkeeping (LRU eviction within a token budget) and the media digests it
// is keyed by: equal content gives equal digests, any difference in pixels, grid or kind does
// not.
#include "model/encoder_cache.h"

#include <vector>

#include "gtest/gtest.h"

namespace q3vl::model {
namespace {

Digest256 Key(uint8_t b) {
  Digest256 d;
  d.bytes.fill(b);
  return d;
}

EncodedItem Item(int64_t tokens) { return {.tokens = tokens}; }

TEST(EncoderCache, KeepsTheMostRecentlyUsedWithinTheBudget) {
  EncoderCache cache(10);
  cache.Insert(Key(1), Item(4));
  cache.Insert(Key(2), Item(4));
  ASSERT_NE(cache.Lookup(Key(1)), nullptr);  // 1 is now the most recent
  cache.Insert(Key(3), Item(4));             // evicts 2, the least recent
  EXPECT_EQ(cache.Lookup(Key(2)), nullptr);
  ASSERT_NE(cache.Lookup(Key(1)), nullptr);
  ASSERT_NE(cache.Lookup(Key(3)), nullptr);
  EXPECT_EQ(cache.Lookup(Key(3))->tokens, 4);
  EXPECT_EQ(cache.used_tokens(), 8);
  EXPECT_EQ(cache.size(), 2);
  EXPECT_EQ(cache.queries(), 5);
  EXPECT_EQ(cache.hits(), 4);
}

TEST(EncoderCache, OversizedItemsDuplicatesAndAZeroBudgetKeepNothingNew) {
  EncoderCache cache(10);
  cache.Insert(Key(1), Item(11));
  EXPECT_EQ(cache.size(), 0);
  cache.Insert(Key(1), Item(6));
  cache.Insert(Key(1), Item(3));  // already present: the first is kept
  EXPECT_EQ(cache.Lookup(Key(1))->tokens, 6);
  cache.Insert(Key(2), Item(10));  // evicts everything else to fit exactly
  EXPECT_EQ(cache.Lookup(Key(1)), nullptr);
  EXPECT_EQ(cache.used_tokens(), 10);
  EncoderCache off(0);
  off.Insert(Key(1), Item(1));
  EXPECT_EQ(off.Lookup(Key(1)), nullptr);
  EXPECT_EQ(off.queries(), 1);
  EXPECT_EQ(off.hits(), 0);
}

VisionInput Input(std::vector<GridThw> grids, int64_t cols, float seed) {
  int64_t rows = 0;
  for (const GridThw& g : grids) rows += g[0] * g[1] * g[2];
  std::vector<float> values(rows * cols);
  for (size_t i = 0; i < values.size(); ++i) values[i] = seed + static_cast<float>(i % 97) * 0.5f;
  return {.pixel_values = Tensor::FromVector(values, {rows, cols}), .grids = std::move(grids)};
}

TEST(DigestMediaItems, EqualContentOnlyGivesEqualDigests) {
  const VisionInput a = Input({{1, 2, 2}, {1, 2, 2}}, 6, 0.0f);
  const std::vector<Digest256> da = DigestMediaItems(a, MediaKind::kImage);
  ASSERT_EQ(da.size(), 2u);
  EXPECT_EQ(DigestMediaItems(a, MediaKind::kImage), da);  // deterministic
  EXPECT_FALSE(da[0] == da[1]);                           // rows differ (i % 97 pattern shifts)
  // One item alone has the digest it has inside a list.
  VisionInput first{.pixel_values = a.pixel_values.Slice(0, 0, 4).Clone(), .grids = {{1, 2, 2}}};
  EXPECT_EQ(DigestMediaItems(first, MediaKind::kImage)[0], da[0]);
  // One value changed.
  VisionInput changed{.pixel_values = first.pixel_values.Clone(), .grids = first.grids};
  changed.pixel_values.data<float>()[5] += 1e-6f;
  EXPECT_FALSE(DigestMediaItems(changed, MediaKind::kImage)[0] == da[0]);
  // The same bytes as a video, or under another grid of as many patches.
  EXPECT_FALSE(DigestMediaItems(first, MediaKind::kVideo)[0] == da[0]);
  VisionInput regridded{.pixel_values = first.pixel_values, .grids = {{1, 1, 4}}};
  EXPECT_FALSE(DigestMediaItems(regridded, MediaKind::kImage)[0] == da[0]);
}

}  // namespace
}  // namespace q3vl::model
