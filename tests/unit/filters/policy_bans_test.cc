// The ban table: escalation (levels, ttl growth, the cap, `forget`), fixed-length
// bans, lifts, lookups across several prefix lengths, cluster updates without the
// listener, and expiry of history.
#include "filters/policy/bans.h"

#include <gtest/gtest.h>

#include <thread>

namespace mailgate::filters::policy {
namespace {

using std::chrono::milliseconds;
constexpr int64_t kMin = 60000, kHour = 60 * kMin, kDay = 24 * kHour;

NetAddr net(const char* s) {
  NetAddr n;
  EXPECT_TRUE(parseCidr(s, &n)) << s;
  return n;
}

BanParams params() {
  BanParams p;
  p.ttl = milliseconds(kHour);
  p.factor = 4;
  p.max = milliseconds(7 * kDay);
  p.forget = milliseconds(kDay);
  return p;
}

TEST(PolicyBans, EscalatesAndCaps) {
  BanTable t;
  const NetAddr n = net("192.0.2.0/24");
  const BanParams p = params();
  int64_t now = 1'700'000'000'000;
  // Each ban again soon after the last one ended: 1h, 4h, 16h, 64h, 256h -> capped at 7d.
  const int64_t want[] = {kHour, 4 * kHour, 16 * kHour, 64 * kHour, 7 * kDay, 7 * kDay};
  for (uint32_t i = 0; i < 6; i++) {
    const Ban b = t.ban(n, p, "auth_failures", "gw1", now);
    EXPECT_EQ(b.level, i + 1);
    EXPECT_EQ(b.created_ms, now);
    EXPECT_EQ(b.expires_ms - now, want[i]) << i;
    EXPECT_EQ(b.reason, "auth_failures");
    EXPECT_EQ(b.origin, "gw1");
    now = b.expires_ms + kHour;  // an hour after it ended (within forget)
  }
}

TEST(PolicyBans, ForgetResets) {
  BanTable t;
  const NetAddr n = net("2001:db8::/64");
  const BanParams p = params();
  int64_t now = 1'000'000;
  Ban b = t.ban(n, p, "r", "gw", now);
  b = t.ban(n, p, "r", "gw", b.expires_ms + 1);
  EXPECT_EQ(b.level, 2u);
  // Exactly `forget` after the end still escalates; one ms later starts over.
  Ban c = t.ban(n, p, "r", "gw", b.expires_ms + kDay);
  EXPECT_EQ(c.level, 3u);
  Ban d = t.ban(n, p, "r", "gw", c.expires_ms + kDay + 1);
  EXPECT_EQ(d.level, 1u);
  EXPECT_EQ(d.expires_ms - d.created_ms, kHour);
}

TEST(PolicyBans, BanWhileBannedKeepsLevel) {
  BanTable t;
  const NetAddr n = net("192.0.2.1");
  int calls = 0;
  t.setListener([&](const Ban&, bool) { calls++; });
  const Ban a = t.ban(n, params(), "r", "gw", 1000);
  const Ban b = t.ban(n, params(), "r", "gw", 1000 + kMin);  // in force: extended, same level
  EXPECT_EQ(b.level, 1u);
  EXPECT_EQ(b.expires_ms, 1000 + kMin + kHour);
  EXPECT_EQ(calls, 2);
  BanParams shorter = params();
  shorter.ttl = milliseconds(kMin);
  const Ban c = t.ban(n, shorter, "r", "gw", 1000 + 2 * kMin);  // would end earlier: unchanged
  EXPECT_EQ(c.expires_ms, b.expires_ms);
  EXPECT_EQ(calls, 2);
  (void)a;
}

TEST(PolicyBans, BanForLiftAndListener) {
  BanTable t;
  std::vector<std::pair<Ban, bool>> seen;
  t.setListener([&](const Ban& b, bool lifted) {
    // Called outside the lock: the table is usable from the listener.
    EXPECT_GE(t.size(), 0u);
    seen.emplace_back(b, lifted);
  });
  const NetAddr n = net("198.51.100.0/24");
  const Ban b = t.banFor(n, milliseconds(10 * kMin), "admin", "cli", 5000);
  EXPECT_EQ(b.level, 1u);
  EXPECT_EQ(b.expires_ms, 5000 + 10 * kMin);
  EXPECT_TRUE(t.find(net("198.51.100.9"), 6000));
  EXPECT_FALSE(t.lift(net("198.51.100.0/25"), 6000));  // not exactly this network
  EXPECT_TRUE(t.lift(n, 6000));
  EXPECT_FALSE(t.lift(n, 6000));
  EXPECT_FALSE(t.find(net("198.51.100.9"), 6001));
  EXPECT_TRUE(t.list(6001).empty());
  ASSERT_EQ(seen.size(), 2u);
  EXPECT_FALSE(seen[0].second);
  EXPECT_TRUE(seen[1].second);
  EXPECT_EQ(seen[1].first.net, n);
  EXPECT_EQ(seen[1].first.expires_ms, 6000);
  // A lifted ban is history: banned again soon, it escalates.
  const Ban again = t.ban(n, params(), "r", "gw", 7000);
  EXPECT_EQ(again.level, 2u);
  // banFor does not escalate, and keeps the level.
  const Ban fixed = t.banFor(n, milliseconds(kMin), "admin", "cli", 8000);
  EXPECT_EQ(fixed.expires_ms, 8000 + kMin);
  EXPECT_EQ(fixed.level, 2u);
  // Lifting a ban that ran out is a no-op.
  EXPECT_FALSE(t.lift(n, 8000 + kMin));
}

TEST(PolicyBans, FindLongestAcrossPrefixes) {
  BanTable t;
  const BanParams p = params();
  t.banFor(net("10.0.0.0/8"), milliseconds(kDay), "wide", "gw", 0);
  t.banFor(net("10.1.0.0/16"), milliseconds(kHour), "mid", "gw", 0);
  t.banFor(net("10.1.2.3"), milliseconds(kMin), "host", "gw", 0);
  t.ban(net("2001:db8::/48"), p, "v6", "gw", 0);
  Ban b;
  ASSERT_TRUE(t.find(net("10.1.2.3"), 1, &b));
  EXPECT_EQ(b.reason, "host");
  ASSERT_TRUE(t.find(net("10.1.2.4"), 1, &b));
  EXPECT_EQ(b.reason, "mid");
  ASSERT_TRUE(t.find(net("10.9.9.9"), 1, &b));
  EXPECT_EQ(b.reason, "wide");
  EXPECT_FALSE(t.find(net("11.0.0.1"), 1, &b));
  // As the shorter ones run out, the wider ones answer.
  ASSERT_TRUE(t.find(net("10.1.2.3"), kMin, &b));
  EXPECT_EQ(b.reason, "mid");
  ASSERT_TRUE(t.find(net("10.1.2.3"), kHour, &b));
  EXPECT_EQ(b.reason, "wide");
  EXPECT_FALSE(t.find(net("10.1.2.3"), kDay, &b));
  // IPv6, and mapped IPv4 as IPv4.
  ASSERT_TRUE(t.find(net("2001:db8:0:1::5"), 1, &b));
  EXPECT_EQ(b.reason, "v6");
  EXPECT_FALSE(t.find(net("2001:db8:1::5"), 1));
  NetAddr mapped;
  ASSERT_TRUE(parseAddr("::ffff:10.1.2.3", &mapped));
  ASSERT_TRUE(t.find(mapped, 1, &b));
  EXPECT_EQ(b.reason, "host");
  EXPECT_EQ(t.list(1).size(), 4u);
  EXPECT_EQ(t.list(kMin).size(), 3u);
}

TEST(PolicyBans, ClusterUpdatesDoNotCallListener) {
  BanTable t;
  int calls = 0;
  t.setListener([&](const Ban&, bool) { calls++; });
  Ban a;
  a.net = net("192.0.2.0/24");
  a.created_ms = 100;
  a.expires_ms = 100 + kHour;
  a.level = 3;
  a.origin = "gw2";
  Ban b = a;
  b.net = net("203.0.113.5");
  t.replaceAll({a, b});
  EXPECT_EQ(t.size(), 2u);
  EXPECT_TRUE(t.find(net("192.0.2.1"), 200));
  // A local ban escalates from the cluster's history.
  const Ban up = t.ban(a.net, params(), "r", "gw1", a.expires_ms + 1);
  EXPECT_EQ(up.level, 4u);
  EXPECT_EQ(calls, 1);
  t.apply(b, /*lifted=*/true);
  EXPECT_FALSE(t.find(net("203.0.113.5"), 200));
  Ban c = a;
  c.net = net("2001:db8::/32");
  t.apply(c, false);
  EXPECT_TRUE(t.find(net("2001:db8:1::1"), 200));
  t.replaceAll({});
  EXPECT_EQ(t.size(), 0u);
  EXPECT_FALSE(t.find(net("2001:db8:1::1"), 200));
  EXPECT_EQ(calls, 1);
}

TEST(PolicyBans, ExpireDropsHistoryAfterForget) {
  BanTable t;
  const BanParams p = params();
  const NetAddr n = net("192.0.2.0/24");
  const Ban b = t.ban(n, p, "r", "gw", 0);
  t.ban(net("198.51.100.1"), p, "r", "gw", 0);
  t.expire(b.expires_ms - 1, p.forget);
  EXPECT_EQ(t.size(), 2u);
  t.expire(b.expires_ms, p.forget);  // ended: no longer counted, kept as history
  EXPECT_EQ(t.size(), 0u);
  EXPECT_TRUE(t.list(b.expires_ms).empty());
  t.expire(b.expires_ms + kDay, p.forget);  // within forget: the history stays
  EXPECT_EQ(t.ban(n, p, "r", "gw", b.expires_ms + kDay).level, 2u);
  // Past forget, the history is gone: level 1 again.
  BanTable u;
  const Ban d = u.ban(n, p, "r", "gw", 0);
  u.expire(d.expires_ms + kDay + 1, p.forget);
  EXPECT_EQ(u.ban(n, p, "r", "gw", d.expires_ms + 2).level, 1u);
}

TEST(PolicyBans, ThreadsReadWhileOthersWrite) {
  BanTable t;
  std::thread w([&] {
    for (int i = 0; i < 2000; i++) {
      const std::string s = "10.0." + std::to_string(i % 250) + ".0/24";
      t.ban(net(s.c_str()), params(), "r", "gw", i);
      if (i % 3 == 0) t.lift(net(s.c_str()), i);
    }
  });
  int found = 0;
  for (int i = 0; i < 2000; i++) found += t.find(net("10.0.7.7"), i);
  w.join();
  EXPECT_GE(found, 0);
  EXPECT_LE(t.list(2000).size(), 250u);
  EXPECT_GT(BanTable::wallMs(), 1'600'000'000'000);
}

}  // namespace
}  // namespace mailgate::filters::policy
