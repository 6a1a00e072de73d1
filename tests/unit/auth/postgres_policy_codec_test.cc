#include "auth/postgres_policy_codec.h"

#include <gtest/gtest.h>

#include <string>

namespace mailgate::auth::policy_wire {
namespace {

using filters::policy::CounterKey;
using filters::policy::NetAddr;

TEST(BanNotify, NetworkPayloadNamesTheRow) {
  const BanNotify n = parseBanNotify("192.0.2.0/24");
  ASSERT_EQ(n.kind, NotifyKind::kNet);
  EXPECT_EQ(n.net.family, 4);
  EXPECT_EQ(n.net.prefix, 24);
  EXPECT_EQ(cidrText(n.net), "192.0.2.0/24");
}

TEST(BanNotify, PostgresCidrTextOfAnAddressRoundTrips) {
  // PostgreSQL prints a host as cidr with its full prefix.
  for (const char* text : {"198.51.100.7/32", "2001:db8::/32", "2001:db8::1/128", "10.0.0.0/8"}) {
    const BanNotify n = parseBanNotify(text);
    ASSERT_EQ(n.kind, NotifyKind::kNet) << text;
    EXPECT_EQ(formatBanNotify(n.net), text);
    EXPECT_EQ(parseBanNotify(formatBanNotify(n.net)).net, n.net);
  }
}

TEST(BanNotify, BareAddressIsItsFullWidth) {
  const BanNotify n = parseBanNotify("127.0.0.55");
  ASSERT_EQ(n.kind, NotifyKind::kNet);
  EXPECT_EQ(cidrText(n.net), "127.0.0.55/32");
}

TEST(BanNotify, StarMeansReloadInFull) {
  EXPECT_EQ(parseBanNotify("*").kind, NotifyKind::kAll);
  EXPECT_EQ(parseBanNotify(formatBanNotifyAll()).kind, NotifyKind::kAll);
}

TEST(BanNotify, GarbageIsBad) {
  for (const char* text : {"", "mailboxes", "300.1.1.1/32", "1.2.3.4/33", "1.2.3.4/", " 1.2.3.4", "**"})
    EXPECT_EQ(parseBanNotify(text).kind, NotifyKind::kBad) << '"' << text << '"';
  EXPECT_EQ(parseBanNotify(std::string(kMaxNotifyPayload + 1, '1')).kind, NotifyKind::kBad);
}

TEST(CounterKeyText, RoundTripsAndIsFixedWidth) {
  for (const CounterKey k : {CounterKey{0, 0}, CounterKey{1, 2}, CounterKey{~0ull, 0x0123456789abcdefull},
                             CounterKey{0xfedcba9876543210ull, ~0ull}}) {
    const std::string t = counterKeyText(k);
    EXPECT_EQ(t.size(), 32u);
    CounterKey back;
    ASSERT_TRUE(parseCounterKeyText(t, &back)) << t;
    EXPECT_EQ(back, k);
  }
  EXPECT_EQ(counterKeyText(CounterKey{1, 2}), "00000000000000010000000000000002");
}

TEST(CounterKeyText, RefusesWrongLengthOrDigits) {
  CounterKey k{7, 7};
  EXPECT_FALSE(parseCounterKeyText("", &k));
  EXPECT_FALSE(parseCounterKeyText(std::string(31, '0'), &k));
  EXPECT_FALSE(parseCounterKeyText(std::string(33, '0'), &k));
  EXPECT_FALSE(parseCounterKeyText(std::string(31, '0') + "g", &k));
  EXPECT_EQ(k, (CounterKey{7, 7}));  // untouched on failure
}

}  // namespace
}  // namespace mailgate::auth::policy_wire
