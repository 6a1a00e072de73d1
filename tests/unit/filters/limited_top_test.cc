#include "filters/policy/limited_top.h"

#include <gtest/gtest.h>

#include <string>

namespace mailgate::filters::policy {
namespace {

NetAddr addr(const std::string& s) {
  NetAddr n;
  EXPECT_TRUE(parseAddr(s, &n));
  return n;
}

TEST(LimitedTop, CountsAndOrders) {
  LimitedTop t;
  for (int i = 0; i < 3; ++i) t.record(addr("192.0.2.1"), "auth", 1000 + i);
  t.record(addr("192.0.2.2"), "connect", 2000);
  t.record(addr("2001:db8::1"), "connect", 3000);
  auto top = t.top(10);
  ASSERT_EQ(top.size(), 3u);
  EXPECT_EQ(top[0].addr.text(), "192.0.2.1");
  EXPECT_EQ(top[0].count, 3u);
  EXPECT_EQ(top[0].last_ms, 1002);
  EXPECT_EQ(top[1].addr.text(), "2001:db8::1");  // a tie: the latest first
  EXPECT_EQ(t.top(1).size(), 1u);
}

TEST(LimitedTop, BoundedAndKeepsTheHeavyHitter) {
  LimitedTop t;
  for (int i = 0; i < 50; ++i) t.record(addr("198.51.100.9"), "auth", i);
  for (int i = 0; i < 1000; ++i)
    t.record(addr("10.0." + std::to_string(i / 250) + "." + std::to_string(i % 250)), "connect", 100 + i);
  auto top = t.top(1000);
  EXPECT_EQ(top.size(), LimitedTop::kCapacity);
  EXPECT_EQ(top[0].addr.text(), "198.51.100.9");
  EXPECT_EQ(top[0].count, 50u);
}

TEST(LimitedTop, LimitNameBounded) {
  LimitedTop t;
  t.record(addr("192.0.2.1"), std::string(500, 'x'), 1);
  EXPECT_EQ(t.top(1)[0].limit.size(), LimitedTop::kMaxLimitName);
}

}  // namespace
}  // namespace mailgate::filters::policy
