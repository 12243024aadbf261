// The KV event log a replica reports to the coordinator: events numbered from 1, readers that
// fall behind what is kept get told to take a snapshot, and a snapshot (with the sequence
// number it is current at) equals the set the events built, with a key held by two pools twice.
// Also that a block pool records exactly its registrations and evictions.
#include "kv/event_log.h"

#include <algorithm>

#include "gtest/gtest.h"

namespace q3vl::kv {
namespace {

PageKey Key(uint8_t b) {
  PageKey k;
  k.bytes.fill(b);
  return k;
}

TEST(KvEventLogTest, NumbersEventsAndServesReadersThatKeepUp) {
  KvEventLog log(/*max_events=*/4);
  EXPECT_EQ(log.last_seq(), 0u);
  ASSERT_TRUE(log.Since(1).has_value());
  EXPECT_TRUE(log.Since(1)->empty());
  log.Append({{true, Key(1)}, {true, Key(2)}});
  EXPECT_EQ(log.last_seq(), 2u);
  auto two = log.Since(2);
  ASSERT_TRUE(two.has_value());
  ASSERT_EQ(two->size(), 1u);
  EXPECT_EQ((*two)[0].key, Key(2));
  log.Append({{false, Key(1)}, {true, Key(3)}, {true, Key(4)}});  // 5 events: the first is dropped
  EXPECT_FALSE(log.Since(1).has_value());  // behind: needs a snapshot
  auto kept = log.Since(2);
  ASSERT_TRUE(kept.has_value());
  EXPECT_EQ(kept->size(), 4u);
  EXPECT_TRUE(log.Since(6)->empty());
}

TEST(KvEventLogTest, SnapshotIsTheSetTheEventsBuilt) {
  KvEventLog log;
  log.Append({{true, Key(1)}, {true, Key(2)}, {true, Key(1)}, {false, Key(2)}, {true, Key(3)}});
  KvEventLog::Snapshot snap = log.Take();
  EXPECT_EQ(snap.seq, 5u);
  std::sort(snap.keys.begin(), snap.keys.end(), [](const PageKey& a, const PageKey& b) { return a.bytes < b.bytes; });
  EXPECT_EQ(snap.keys, (std::vector<PageKey>{Key(1), Key(1), Key(3)}));  // held by two pools: twice
  log.Append({{false, Key(1)}, {false, Key(1)}, {false, Key(9)}});      // an unknown removal is harmless
  EXPECT_EQ(log.Take().keys, std::vector<PageKey>{Key(3)});
}

TEST(KvEventLogTest, BlockPoolRecordsRegistrationsAndEvictions) {
  BlockPool pool(2);
  std::vector<int32_t> pages = pool.Allocate(2);
  pool.Register(pages[0], Key(1));
  pool.Register(pages[1], Key(2));
  pool.Register(pages[1], Key(3));  // already registered: no event
  std::vector<KvEvent> events = pool.TakeEvents();
  ASSERT_EQ(events.size(), 2u);
  EXPECT_TRUE(events[0].stored && events[0].key == Key(1));
  EXPECT_TRUE(events[1].stored && events[1].key == Key(2));
  EXPECT_TRUE(pool.TakeEvents().empty());
  pool.Release(pages);                   // cached, evictable: no event yet
  EXPECT_TRUE(pool.TakeEvents().empty());
  pool.Allocate(1);                      // evicts the least recently released: the tail, key 2
  events = pool.TakeEvents();
  ASSERT_EQ(events.size(), 1u);
  EXPECT_FALSE(events[0].stored);
  EXPECT_EQ(events[0].key, Key(2));
}

}  // namespace
}  // namespace q3vl::kv
