// The policy's counters: 128-bit keys, GCRA arithmetic at its boundaries, concurrency
// units, and the bounded table (LRU eviction that spares entries holding concurrency,
// peek without reordering, no allocation per event).
#include <gtest/gtest.h>

#include <atomic>
#include <memory>
#include <cstdlib>
#include <new>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "filters/policy/counters.h"
#include "filters/policy/net_prefix.h"

// Counts allocations in this binary, to check that the event path allocates nothing.
namespace {
std::atomic<uint64_t> g_allocs{0};
}
void* operator new(std::size_t n) {
  g_allocs.fetch_add(1, std::memory_order_relaxed);
  if (void* p = std::malloc(n ? n : 1)) return p;
  throw std::bad_alloc();
}
// The replaced operator new allocates with malloc, so free is the matching release
// (GCC cannot see that and warns).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
#endif
void operator delete(void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif

namespace mailgate::filters::policy {
namespace {

using std::chrono::milliseconds;
constexpr int64_t kSec = 1000000;

CounterKey keyOf(uint64_t limit, std::string_view part) { return KeyBuilder(limit).add(part).key(); }

TEST(PolicyKey, DeterministicAndDistinct) {
  EXPECT_EQ(keyOf(1, "alice"), keyOf(1, "alice"));
  EXPECT_NE(keyOf(1, "alice"), keyOf(2, "alice"));
  EXPECT_NE(keyOf(1, "alice"), keyOf(1, "alicf"));
  // Part boundaries count: ("ab","c") is not ("a","bc") nor ("abc").
  const CounterKey a = KeyBuilder(7).add("ab").add("c").key();
  const CounterKey b = KeyBuilder(7).add("a").add("bc").key();
  const CounterKey c = KeyBuilder(7).add("abc").key();
  EXPECT_NE(a, b);
  EXPECT_NE(a, c);
  EXPECT_NE(b, c);
  // Empty parts count too.
  EXPECT_NE(KeyBuilder(7).add("").key(), KeyBuilder(7).key());
}

TEST(PolicyKey, NoCollisionsAndBothHalvesVary) {
  std::set<std::pair<uint64_t, uint64_t>> seen;
  std::set<uint64_t> his, los;
  for (int i = 0; i < 20000; i++) {
    const CounterKey k = KeyBuilder(3).add("user" + std::to_string(i)).key();
    seen.insert({k.hi, k.lo});
    his.insert(k.hi);
    los.insert(k.lo);
  }
  EXPECT_EQ(seen.size(), 20000u);
  EXPECT_EQ(his.size(), 20000u);
  EXPECT_EQ(los.size(), 20000u);
}

NetAddr addr(const char* s) {
  NetAddr a;
  EXPECT_TRUE(parseAddr(s, &a)) << s;
  return a;
}

CounterKey netKey(const NetAddr& a) { return KeyBuilder(9).add(&a, sizeof a).key(); }

TEST(PolicyKey, PrefixKeysIpv4AndIpv6) {
  // /32: every address its own key; /24: the network's.
  EXPECT_NE(netKey(clientNet(addr("192.0.2.1"), 32, 64)), netKey(clientNet(addr("192.0.2.2"), 32, 64)));
  EXPECT_EQ(netKey(clientNet(addr("192.0.2.1"), 24, 64)), netKey(clientNet(addr("192.0.2.254"), 24, 64)));
  EXPECT_NE(netKey(clientNet(addr("192.0.2.1"), 24, 64)), netKey(clientNet(addr("192.0.3.1"), 24, 64)));
  EXPECT_EQ(clientNet(addr("192.0.2.77"), 24, 64).text(), "192.0.2.0/24");
  // /64 and /48.
  EXPECT_EQ(netKey(clientNet(addr("2001:db8:1:2::1"), 32, 64)), netKey(clientNet(addr("2001:db8:1:2:ffff::9"), 32, 64)));
  EXPECT_NE(netKey(clientNet(addr("2001:db8:1:2::1"), 32, 64)), netKey(clientNet(addr("2001:db8:1:3::1"), 32, 64)));
  EXPECT_EQ(netKey(clientNet(addr("2001:db8:1:2::1"), 32, 48)), netKey(clientNet(addr("2001:db8:1:ffff::1"), 32, 48)));
  EXPECT_NE(netKey(clientNet(addr("2001:db8:1::1"), 32, 48)), netKey(clientNet(addr("2001:db8:2::1"), 32, 48)));
  EXPECT_EQ(clientNet(addr("2001:db8:1:2::1"), 32, 48).text(), "2001:db8:1::/48");
  // A mapped IPv4 address is the IPv4 address, at the IPv4 prefix.
  EXPECT_EQ(netKey(clientNet(addr("::ffff:192.0.2.1"), 24, 64)), netKey(clientNet(addr("192.0.2.9"), 24, 64)));
  EXPECT_EQ(clientNet(addr("::ffff:192.0.2.1"), 32, 64).text(), "192.0.2.1");
}

// --- GCRA ---------------------------------------------------------------------------

TEST(PolicyGcra, Parameters) {
  const Gcra g = Gcra::of(10, milliseconds(1000), 5);
  EXPECT_EQ(g.interval_us, 100000);
  EXPECT_EQ(g.tolerance_us, 400000);
  // burst 0 = rate.
  const Gcra d = Gcra::of(10, milliseconds(1000), 0);
  EXPECT_EQ(d.tolerance_us, 900000);
  // T rounds up: 3 per second never lets a fourth one through within the second.
  EXPECT_EQ(Gcra::of(3, milliseconds(1000), 1).interval_us, 333334);
  // rate 0: no limit.
  const Gcra none = Gcra::of(0, milliseconds(1000), 0);
  int64_t tat = 0;
  for (int i = 0; i < 1000; i++) EXPECT_EQ(none.take(&tat, 5 * kSec), 0);
}

TEST(PolicyGcra, BurstThenOnePerInterval) {
  const Gcra g = Gcra::of(10, milliseconds(1000), 5);  // T = 100 ms, 5 at once
  int64_t tat = 0;
  const int64_t t0 = 1000 * kSec;
  for (int i = 0; i < 5; i++) EXPECT_EQ(g.take(&tat, t0), 0) << i;
  // The sixth waits exactly one interval.
  EXPECT_EQ(g.take(&tat, t0), 100000);
  EXPECT_EQ(g.take(&tat, t0 + 99999), 1);
  EXPECT_EQ(g.take(&tat, t0 + 100000), 0);
  EXPECT_EQ(g.take(&tat, t0 + 100000), 100000);
  // Long idle: back to a full burst, no more.
  const int64_t t1 = t0 + 60 * kSec;
  for (int i = 0; i < 5; i++) EXPECT_EQ(g.take(&tat, t1), 0) << i;
  EXPECT_GT(g.take(&tat, t1), 0);
}

TEST(PolicyGcra, SteadyRateExactlyConforms) {
  const Gcra g = Gcra::of(4, milliseconds(1000), 1);  // T = 250 ms, no burst
  int64_t tat = 0;
  const int64_t t0 = 50 * kSec;
  for (int i = 0; i < 100; i++) EXPECT_EQ(g.take(&tat, t0 + i * 250000), 0) << i;
  // One microsecond early is refused, by one microsecond.
  EXPECT_EQ(g.take(&tat, t0 + 100 * 250000 - 1), 1);
  // rate per period with burst = rate: exactly `rate` in a period at once.
  const Gcra r = Gcra::of(20, milliseconds(60000), 0);
  int64_t t2 = 0;
  int ok = 0;
  for (int i = 0; i < 100; i++) ok += r.take(&t2, t0) == 0;
  EXPECT_EQ(ok, 20);
}

TEST(PolicyGcra, SeveralAtOnce) {
  const Gcra g = Gcra::of(10, milliseconds(1000), 10);  // T = 100 ms, 10 at once
  int64_t tat = 0;
  const int64_t t0 = 10 * kSec;
  EXPECT_EQ(g.take(&tat, t0, 7), 0);
  // 7 used: 4 more would be 11, one interval early.
  EXPECT_EQ(g.take(&tat, t0, 4), 100000);
  EXPECT_EQ(g.take(&tat, t0, 3), 0);
  EXPECT_EQ(g.take(&tat, t0, 1), 100000);
  EXPECT_EQ(g.take(&tat, t0 + 300000, 3), 0);
  // More than the burst never conforms, and changes nothing.
  int64_t fresh = 0;
  EXPECT_EQ(g.take(&fresh, t0, 11), Gcra::kNever);
  EXPECT_EQ(fresh, 0);
  EXPECT_EQ(g.take(&fresh, t0, 10), 0);
  // n = 0 is a no-op.
  const int64_t before = tat;
  EXPECT_EQ(g.take(&tat, t0, 0), 0);
  EXPECT_EQ(tat, before);
}

TEST(PolicyGcra, DryRunDoesNotChangeState) {
  const Gcra g = Gcra::of(2, milliseconds(1000), 2);
  int64_t tat = 0;
  const int64_t t0 = 7 * kSec;
  for (int i = 0; i < 10; i++) EXPECT_EQ(g.take(&tat, t0, 1, true), 0);
  EXPECT_EQ(tat, 0);
  EXPECT_EQ(g.take(&tat, t0), 0);
  EXPECT_EQ(g.take(&tat, t0), 0);
  const int64_t full = tat;
  EXPECT_EQ(g.take(&tat, t0, 1, true), 500000);
  EXPECT_EQ(tat, full);
  EXPECT_EQ(g.take(&tat, t0 + 500000, 1, true), 0);
  EXPECT_EQ(tat, full);
}

TEST(PolicyGcra, RecoversOverTime) {
  const Gcra g = Gcra::of(6, milliseconds(60000), 3);  // T = 10 s, 3 at once
  int64_t tat = 0;
  const int64_t t0 = 1000 * kSec;
  for (int i = 0; i < 3; i++) EXPECT_EQ(g.take(&tat, t0), 0);
  EXPECT_EQ(g.take(&tat, t0), 10 * kSec);
  // After 20 s, two have recovered.
  EXPECT_EQ(g.take(&tat, t0 + 20 * kSec), 0);
  EXPECT_EQ(g.take(&tat, t0 + 20 * kSec), 0);
  EXPECT_EQ(g.take(&tat, t0 + 20 * kSec), 10 * kSec);
  // A huge period does not overflow.
  const Gcra big = Gcra::of(1, milliseconds(int64_t{1} << 50), 2);
  int64_t bt = 0;
  EXPECT_EQ(big.take(&bt, t0, 2), 0);
  EXPECT_GT(big.take(&bt, t0), 0);
  EXPECT_EQ(big.take(&bt, t0, 4000000000u), Gcra::kNever);
  const Gcra wide = Gcra::of(1, milliseconds(int64_t{1} << 50), 4000000000u);  // tau saturates
  int64_t wt = 0;
  EXPECT_EQ(wide.take(&wt, t0, 3), 0);
  EXPECT_GT(wt, t0);
}

// --- CounterTable ---------------------------------------------------------------------

TEST(PolicyCounterTable, ConcurrencyAcquireRelease) {
  CounterTable t(100, 4);
  const CounterKey k = keyOf(1, "192.0.2.1");
  const uint32_t limit = 3;
  auto acquire = [&] {
    return t.update(k, [&](CounterState& s) {
      if (s.concurrent >= limit) return false;
      s.concurrent++;
      return true;
    });
  };
  EXPECT_TRUE(acquire());
  EXPECT_TRUE(acquire());
  EXPECT_TRUE(acquire());
  EXPECT_FALSE(acquire());
  EXPECT_EQ(t.peek(k).concurrent, 3u);
  t.release(k);
  EXPECT_TRUE(acquire());
  for (int i = 0; i < 5; i++) t.release(k);  // extra releases stop at zero
  EXPECT_EQ(t.peek(k).concurrent, 0u);
  t.release(keyOf(1, "absent"));  // no-op, creates nothing
  EXPECT_EQ(t.stats().entries, 1u);
  EXPECT_EQ(t.peek(keyOf(1, "absent")).concurrent, 0u);
  EXPECT_EQ(t.stats().entries, 1u);
}

TEST(PolicyCounterTable, ConcurrentThreadsBalance) {
  CounterTable t(1000, 8);
  std::vector<std::thread> ths;
  for (int w = 0; w < 4; w++) {
    ths.emplace_back([&t] {
      for (int i = 0; i < 5000; i++) {
        const CounterKey k = keyOf(2, std::to_string(i % 50));
        t.update(k, [](CounterState& s) { s.concurrent++; });
        t.release(k);
      }
    });
  }
  for (auto& th : ths) th.join();
  for (int i = 0; i < 50; i++) EXPECT_EQ(t.peek(keyOf(2, std::to_string(i))).concurrent, 0u);
  EXPECT_EQ(t.stats().entries, 50u);
  EXPECT_EQ(t.stats().evictions, 0u);
}

TEST(PolicyCounterTable, BoundedByCapacity) {
  for (unsigned shards : {1u, 4u, 16u}) {
    CounterTable t(64, shards);
    EXPECT_EQ(t.capacity(), 64u);
    for (int i = 0; i < 1000; i++) t.update(keyOf(5, std::to_string(i)), [](CounterState& s) { s.extra++; });
    const CounterStats st = t.stats();
    EXPECT_EQ(st.capacity, 64u);
    EXPECT_LE(st.entries, 64u);
    EXPECT_EQ(st.entries + st.evictions, 1000u) << shards;
    // Every key still held is found, with its value.
    size_t held = 0;
    for (int i = 0; i < 1000; i++) held += t.peek(keyOf(5, std::to_string(i))).extra == 1;
    EXPECT_EQ(held, st.entries);
  }
}

TEST(PolicyCounterTable, EvictsLeastRecentlyUsed) {
  const size_t n = 8;
  CounterTable t(n, 1);
  auto touch = [&](int i) { t.update(keyOf(6, std::to_string(i)), [i](CounterState& s) { s.extra = uint64_t(i) + 1; }); };
  auto has = [&](int i) { return t.peek(keyOf(6, std::to_string(i))).extra == uint64_t(i) + 1; };
  for (int i = 0; i < 8; i++) touch(i);
  touch(0);  // 0 is now the most recent; 1 the least
  // peek does not reorder: 1 stays the oldest.
  EXPECT_TRUE(has(1));
  touch(100);
  EXPECT_FALSE(has(1));
  EXPECT_TRUE(has(0));
  EXPECT_TRUE(has(100));
  touch(101);
  EXPECT_FALSE(has(2));
  for (int i : {0, 3, 4, 5, 6, 7, 100, 101}) EXPECT_TRUE(has(i)) << i;
  EXPECT_EQ(t.stats().evictions, 2u);
  EXPECT_EQ(t.stats().entries, n);
}

TEST(PolicyCounterTable, ConcurrencyHoldersSurviveWhenPossible) {
  CounterTable t(8, 1);
  // The three oldest hold a session each.
  for (int i = 0; i < 8; i++)
    t.update(keyOf(7, std::to_string(i)), [i](CounterState& s) {
      s.concurrent = i < 3 ? 1 : 0;
      s.extra = 1;
    });
  for (int i = 100; i < 105; i++) t.update(keyOf(7, std::to_string(i)), [](CounterState& s) { s.extra = 1; });
  for (int i = 0; i < 3; i++) EXPECT_EQ(t.peek(keyOf(7, std::to_string(i))).concurrent, 1u) << i;
  for (int i = 3; i < 8; i++) EXPECT_EQ(t.peek(keyOf(7, std::to_string(i))).extra, 0u) << i;  // evicted
  for (int i = 100; i < 105; i++) EXPECT_EQ(t.peek(keyOf(7, std::to_string(i))).extra, 1u) << i;
  // When every entry holds concurrency, the oldest goes all the same (the table stays bounded).
  CounterTable full(4, 1);
  for (int i = 0; i < 4; i++) full.update(keyOf(8, std::to_string(i)), [](CounterState& s) { s.concurrent = 1; });
  full.update(keyOf(8, "new"), [](CounterState& s) { s.concurrent = 1; });
  EXPECT_EQ(full.stats().entries, 4u);
  EXPECT_EQ(full.peek(keyOf(8, "0")).concurrent, 0u);
  EXPECT_EQ(full.peek(keyOf(8, "new")).concurrent, 1u);
}

TEST(PolicyCounterTable, ManyEvictionsKeepIndexConsistent) {
  // Random churn through a small table: the index (backward-shift deletion) must keep
  // every held key findable and never report one it evicted.
  CounterTable t(37, 1);
  std::vector<CounterKey> keys;
  for (int i = 0; i < 300; i++) keys.push_back(keyOf(11, std::to_string(i)));
  uint64_t x = 12345;
  for (int step = 0; step < 20000; step++) {
    x = x * 6364136223846793005ull + 1442695040888963407ull;
    const size_t i = (x >> 33) % keys.size();
    t.update(keys[i], [i](CounterState& s) {
      EXPECT_TRUE(s.extra == 0 || s.extra == i + 1);
      s.extra = i + 1;
    });
  }
  size_t held = 0;
  for (size_t i = 0; i < keys.size(); i++) {
    const uint64_t e = t.peek(keys[i]).extra;
    EXPECT_TRUE(e == 0 || e == i + 1);
    held += e != 0;
  }
  EXPECT_EQ(held, 37u);
}

TEST(PolicyCounterTable, NoAllocationPerEvent) {
  CounterTable t(1000, 8);
  const Gcra g = Gcra::of(10, milliseconds(1000), 5);
  std::vector<CounterKey> keys;
  for (int i = 0; i < 5000; i++) keys.push_back(keyOf(12, std::to_string(i)));
  const NetAddr a = addr("2001:db8::1");
  // The counter does count: building a table allocates its slabs and indexes.
  const uint64_t start = g_allocs.load();
  auto other = std::make_unique<CounterTable>(64, 2);
  EXPECT_GT(g_allocs.load(), start);
  const uint64_t before = g_allocs.load();
  int64_t now = 100 * kSec;
  for (const CounterKey& k : keys) {  // inserts, evictions, updates, peeks, releases
    t.update(k, [&](CounterState& s) {
      s.concurrent++;
      return g.take(&s.tat_us, now++);
    });
    (void)t.peek(k);
    t.release(k);
    (void)KeyBuilder(12).add("user@example.org").add(&a, sizeof a).key();
  }
  (void)t.stats();
  EXPECT_EQ(g_allocs.load() - before, 0u);
  EXPECT_GT(t.stats().evictions, 0u);
}

}  // namespace
}  // namespace mailgate::filters::policy
