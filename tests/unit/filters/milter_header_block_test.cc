// The header block a milter is sent: names, values as libmilter hands them to the
// milter (folds joined by "\n", the space after the colon dropped), raw octets kept.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "filters/milter_filter.h"

namespace mailgate::filters {
namespace {

TEST(MilterHeaderBlock, HeadersFoldsAndBodyOffset) {
  const std::string msg =
      "Received: from a\r\n\tby b\r\nSubject: hi\r\nX-Empty:\r\nX-Two:  two\r\n\r\nbody\r\n";
  std::vector<MilterHeader> hs;
  uint64_t off = 0;
  ASSERT_TRUE(milterHeaderBlock(msg, false, false, &hs, &off));
  ASSERT_EQ(hs.size(), 4u);
  EXPECT_EQ(hs[0].name, "Received");
  EXPECT_EQ(hs[0].value, "from a\n\tby b");
  EXPECT_EQ(hs[0].raw, "Received: from a\r\n\tby b\r\n");
  EXPECT_EQ(hs[1].value, "hi");
  EXPECT_EQ(hs[2].value, "");
  EXPECT_EQ(hs[3].value, " two");
  EXPECT_EQ(msg.substr(off), "body\r\n");
  // With SMFIP_HDR_LEADSPC the space stays.
  ASSERT_TRUE(milterHeaderBlock(msg, false, true, &hs, &off));
  EXPECT_EQ(hs[1].value, " hi");
}

TEST(MilterHeaderBlock, NeedsMoreUnlessWhole) {
  std::vector<MilterHeader> hs;
  uint64_t off = 0;
  EXPECT_FALSE(milterHeaderBlock("Subject: hi\r\nX-A: b", false, false, &hs, &off));
  ASSERT_TRUE(milterHeaderBlock("Subject: hi\r\n", true, false, &hs, &off));
  EXPECT_EQ(hs.size(), 1u);
  EXPECT_EQ(off, 13u);
}

TEST(MilterHeaderBlock, ALineThatIsNoHeaderStartsTheBody) {
  const std::string msg = "Subject: hi\r\nthis is not a header\r\nmore\r\n";
  std::vector<MilterHeader> hs;
  uint64_t off = 0;
  ASSERT_TRUE(milterHeaderBlock(msg, true, false, &hs, &off));
  EXPECT_EQ(hs.size(), 1u);
  EXPECT_EQ(msg.substr(off), "this is not a header\r\nmore\r\n");
}

}  // namespace
}  // namespace mailgate::filters
