// In-process mailboxes: messages arrive whole, in order per sender, from any peer, and never
// block; bad peers are refused.
#include "parallel/mailbox.h"

#include "gtest/gtest.h"

namespace q3vl::parallel {
namespace {

TEST(MailboxTest, DeliversInOrderFromEveryPeer) {
  auto boxes = CreateInProcessMailboxes(3);
  ASSERT_EQ(boxes.size(), 3u);
  EXPECT_FALSE(*boxes[0]->Poll());  // nothing yet, and no wait
  ASSERT_TRUE(boxes[1]->Post(0, "one").ok());
  ASSERT_TRUE(boxes[2]->Post(0, std::string(1 << 20, 'x')).ok());
  ASSERT_TRUE(boxes[1]->Post(0, "two").ok());
  std::vector<std::pair<int, std::string>> got;
  while (auto m = *boxes[0]->Poll()) got.emplace_back(m->from, m->bytes);
  ASSERT_EQ(got.size(), 3u);
  EXPECT_EQ(got[0], std::make_pair(1, std::string("one")));
  EXPECT_EQ(got[1].first, 2);
  EXPECT_EQ(got[1].second.size(), 1u << 20);
  EXPECT_EQ(got[2], std::make_pair(1, std::string("two")));
  EXPECT_FALSE(*boxes[1]->Poll());
  EXPECT_EQ(boxes[0]->Post(0, "self").code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(boxes[0]->Post(3, "none").code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(boxes[0]->Flush(absl::Seconds(1)).ok());
}

}  // namespace
}  // namespace q3vl::parallel
