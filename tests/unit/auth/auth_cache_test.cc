#include "auth/auth_cache.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

namespace mailgate::auth {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;

// A fake directory: a user → password table, a switch for "database down", call count.
class FakeDirectory : public Directory {
 public:
  AuthResult authenticate(std::string_view user, std::string_view password) override {
    ++calls;
    AuthResult r;
    if (down) {
      r.verdict = Verdict::kTempFail;
      return r;
    }
    auto it = users.find(std::string(user));
    if (it == users.end()) {
      r.verdict = Verdict::kUnknownUser;
    } else if (it->second != password) {
      r.verdict = Verdict::kBadPassword;
    } else {
      r.verdict = Verdict::kOk;
      r.user = it->first;
      if (!route_primary.empty()) r.route = RouteHint{route_primary, "storage-02"};
    }
    return r;
  }
  AuthResult authenticate(std::string_view user, std::string_view password,
                          const filters::SessionFacts& ctx) override {
    last_protocol = ctx.protocol;
    return authenticate(user, password);
  }
  std::string statsText() const override { return "fake=1"; }
  RecipientResult recipient(std::string_view address) override {
    ++rcpt_calls;
    if (down) return RecipientResult::kTempFail;
    auto it = recipients.find(std::string(address));
    return it == recipients.end() ? RecipientResult::kForeignDomain : it->second;
  }

  std::map<std::string, std::string> users;
  std::string route_primary = "storage-01";  // the route hint of every login; empty = none
  std::atomic<bool> down{false};
  std::atomic<int> calls{0};
  std::string last_protocol;
  std::map<std::string, RecipientResult> recipients;
  std::atomic<int> rcpt_calls{0};
};

struct FakeClock {
  std::chrono::steady_clock::time_point now = std::chrono::steady_clock::time_point() + std::chrono::hours(1);
  CachingDirectory::Clock fn() {
    return [this] { return now; };
  }
};

struct Fixture : ::testing::Test {
  std::shared_ptr<FakeDirectory> fake = std::make_shared<FakeDirectory>();
  FakeClock clock;
  conf::CacheConfig cfg{milliseconds(60000), milliseconds(10000)};
  Fixture() { fake->users["alice@example.org"] = "alice-pw"; }
};

using AuthCache = Fixture;

TEST_F(AuthCache, PositiveHitCostsNoInnerCall) {
  CachingDirectory cache(fake, cfg, clock.fn());
  auto r = cache.authenticate("alice@example.org", "alice-pw");
  EXPECT_EQ(r.verdict, Verdict::kOk);
  EXPECT_EQ(fake->calls, 1);
  r = cache.authenticate("ALICE@Example.ORG", "alice-pw");
  EXPECT_EQ(r.verdict, Verdict::kOk);
  EXPECT_EQ(r.user, "alice@example.org");
  ASSERT_TRUE(r.route);
  EXPECT_EQ(r.route->primary, "storage-01");
  EXPECT_EQ(fake->calls, 1);
  EXPECT_EQ(cache.hits(), 1u);
  EXPECT_EQ(cache.misses(), 1u);
  EXPECT_EQ(cache.statsText(),
            "auth_cache_hits=1 auth_cache_misses=1 auth_cache_stale_hits=0 auth_cache_entries=1 "
            "auth_cache_negative_entries=0 rcpt_cache_hits=0 rcpt_cache_misses=0 rcpt_cache_entries=0 fake=1");
}

TEST_F(AuthCache, ContextIsPassedOnMiss) {
  CachingDirectory cache(fake, cfg, clock.fn());
  filters::SessionFacts ctx;
  ctx.protocol = "pop3";
  EXPECT_EQ(cache.authenticate("alice@example.org", "alice-pw", ctx).verdict, Verdict::kOk);
  EXPECT_EQ(fake->last_protocol, "pop3");
}

TEST_F(AuthCache, WrongPasswordIsNotAHitForTheRightOne) {
  CachingDirectory cache(fake, cfg, clock.fn());
  EXPECT_EQ(cache.authenticate("alice@example.org", "alice-pw").verdict, Verdict::kOk);
  EXPECT_EQ(cache.authenticate("alice@example.org", "wrong").verdict, Verdict::kBadPassword);
  EXPECT_EQ(fake->calls, 2);
  // negative entry: no further inner call within negative_ttl
  EXPECT_EQ(cache.authenticate("alice@example.org", "wrong").verdict, Verdict::kBadPassword);
  EXPECT_EQ(fake->calls, 2);
  clock.now += milliseconds(10000);
  EXPECT_EQ(cache.authenticate("alice@example.org", "wrong").verdict, Verdict::kBadPassword);
  EXPECT_EQ(fake->calls, 3);
}

TEST_F(AuthCache, UnknownUserIsCachedNegatively) {
  CachingDirectory cache(fake, cfg, clock.fn());
  EXPECT_EQ(cache.authenticate("nobody@example.org", "x").verdict, Verdict::kUnknownUser);
  EXPECT_EQ(cache.authenticate("nobody@example.org", "x").verdict, Verdict::kUnknownUser);
  EXPECT_EQ(fake->calls, 1);
  fake->users["nobody@example.org"] = "x";
  clock.now += milliseconds(10001);
  EXPECT_EQ(cache.authenticate("nobody@example.org", "x").verdict, Verdict::kOk);
}

TEST_F(AuthCache, PasswordChangeTakesEffectAtExpiry) {
  CachingDirectory cache(fake, cfg, clock.fn());
  EXPECT_EQ(cache.authenticate("alice@example.org", "alice-pw").verdict, Verdict::kOk);
  fake->users["alice@example.org"] = "new-pw";
  clock.now += milliseconds(59999);
  EXPECT_EQ(cache.authenticate("alice@example.org", "alice-pw").verdict, Verdict::kOk);  // still cached
  EXPECT_EQ(cache.authenticate("alice@example.org", "new-pw").verdict, Verdict::kOk);    // new one works at once
  clock.now += milliseconds(1);
  EXPECT_EQ(cache.authenticate("alice@example.org", "alice-pw").verdict, Verdict::kBadPassword);
  // and the old password is not honoured during a later outage either
  fake->down = true;
  clock.now += milliseconds(20000);
  EXPECT_EQ(cache.authenticate("alice@example.org", "alice-pw").verdict, Verdict::kTempFail);
}

TEST_F(AuthCache, DisabledMailboxTakesEffectAtExpiry) {
  CachingDirectory cache(fake, cfg, clock.fn());
  EXPECT_EQ(cache.authenticate("alice@example.org", "alice-pw").verdict, Verdict::kOk);
  fake->users.erase("alice@example.org");
  clock.now += seconds(60);
  EXPECT_EQ(cache.authenticate("alice@example.org", "alice-pw").verdict, Verdict::kUnknownUser);
}

TEST_F(AuthCache, OutageHonoursExpiredPositiveEntriesUpToTheStaleLimit) {
  CachingDirectory cache(fake, cfg, clock.fn());
  EXPECT_EQ(cache.authenticate("alice@example.org", "alice-pw").verdict, Verdict::kOk);
  fake->down = true;
  clock.now += seconds(61);
  auto r = cache.authenticate("alice@example.org", "alice-pw");
  EXPECT_EQ(r.verdict, Verdict::kOk);
  EXPECT_EQ(cache.staleHits(), 1u);
  // the wrong password, or a user never seen, is a temporary failure, not a login
  EXPECT_EQ(cache.authenticate("alice@example.org", "guess").verdict, Verdict::kTempFail);
  EXPECT_EQ(cache.authenticate("bob@example.org", "x").verdict, Verdict::kTempFail);
  clock.now += CachingDirectory::kStaleLimit;
  EXPECT_EQ(cache.authenticate("alice@example.org", "alice-pw").verdict, Verdict::kTempFail);
  // the database returns: a fresh answer refreshes the entry
  fake->down = false;
  EXPECT_EQ(cache.authenticate("alice@example.org", "alice-pw").verdict, Verdict::kOk);
  fake->down = true;
  clock.now += seconds(3600);
  EXPECT_EQ(cache.authenticate("alice@example.org", "alice-pw").verdict, Verdict::kOk);
}

TEST_F(AuthCache, TempFailIsNeverCached) {
  CachingDirectory cache(fake, cfg, clock.fn());
  fake->down = true;
  EXPECT_EQ(cache.authenticate("alice@example.org", "alice-pw").verdict, Verdict::kTempFail);
  fake->down = false;
  EXPECT_EQ(cache.authenticate("alice@example.org", "alice-pw").verdict, Verdict::kOk);
  EXPECT_EQ(fake->calls, 2);
}

TEST_F(AuthCache, ZeroTtlDisablesTheCache) {
  cfg.ttl = milliseconds(0);
  CachingDirectory cache(fake, cfg, clock.fn());
  EXPECT_EQ(cache.authenticate("alice@example.org", "alice-pw").verdict, Verdict::kOk);
  EXPECT_EQ(cache.authenticate("alice@example.org", "alice-pw").verdict, Verdict::kOk);
  EXPECT_EQ(fake->calls, 2);
  EXPECT_EQ(cache.size(), 0u);
}

TEST_F(AuthCache, ZeroNegativeTtlStoresNoNegativeEntries) {
  cfg.negative_ttl = milliseconds(0);
  CachingDirectory cache(fake, cfg, clock.fn());
  EXPECT_EQ(cache.authenticate("alice@example.org", "bad").verdict, Verdict::kBadPassword);
  EXPECT_EQ(cache.authenticate("alice@example.org", "bad").verdict, Verdict::kBadPassword);
  EXPECT_EQ(fake->calls, 2);
  EXPECT_EQ(cache.size(), 0u);
}

TEST_F(AuthCache, BoundedSizeEvictsOldest) {
  for (int i = 0; i < 5; ++i) fake->users["u" + std::to_string(i)] = "pw";
  CachingDirectory cache(fake, cfg, clock.fn(), 3);
  for (int i = 0; i < 5; ++i) EXPECT_EQ(cache.authenticate("u" + std::to_string(i), "pw").verdict, Verdict::kOk);
  EXPECT_EQ(cache.size(), 3u);
  EXPECT_EQ(fake->calls, 5);
  EXPECT_EQ(cache.authenticate("u4", "pw").verdict, Verdict::kOk);  // kept
  EXPECT_EQ(fake->calls, 5);
  EXPECT_EQ(cache.authenticate("u0", "pw").verdict, Verdict::kOk);  // evicted
  EXPECT_EQ(fake->calls, 6);
  EXPECT_EQ(cache.size(), 3u);
}

// Password spraying: many distinct wrong credentials fill the negative table only; the
// positive entries the outage rule depends on stay (default bounds).
TEST_F(AuthCache, SprayingNeverEvictsPositiveEntries) {
  fake->users["bob@example.org"] = "bob-pw";
  CachingDirectory cache(fake, cfg, clock.fn());
  EXPECT_EQ(cache.authenticate("alice@example.org", "alice-pw").verdict, Verdict::kOk);
  EXPECT_EQ(cache.authenticate("bob@example.org", "bob-pw").verdict, Verdict::kOk);
  const int spray = static_cast<int>(CachingDirectory::kDefaultMaxEntries) + 10;
  for (int i = 0; i < spray; ++i) {
    const std::string n = std::to_string(i);
    const Verdict v = cache.authenticate(i % 2 ? "alice@example.org" : "nobody" + n + "@example.org", "guess" + n).verdict;
    ASSERT_NE(v, Verdict::kOk);
  }
  EXPECT_EQ(fake->calls, spray + 2);
  EXPECT_LE(cache.negativeSize(), CachingDirectory::kDefaultMaxNegativeEntries);
  EXPECT_EQ(cache.size(), cache.negativeSize() + 2);
  // Still cached (no inner call) ...
  EXPECT_EQ(cache.authenticate("alice@example.org", "alice-pw").verdict, Verdict::kOk);
  EXPECT_EQ(fake->calls, spray + 2);
  // ... and honoured during an outage after they expired.
  fake->down = true;
  clock.now += seconds(61);
  EXPECT_EQ(cache.authenticate("alice@example.org", "alice-pw").verdict, Verdict::kOk);
  EXPECT_EQ(cache.authenticate("bob@example.org", "bob-pw").verdict, Verdict::kOk);
  EXPECT_EQ(cache.staleHits(), 2u);
}

TEST_F(AuthCache, PositiveAndNegativeEntriesAreBoundedSeparately) {
  for (int i = 0; i < 3; ++i) fake->users["u" + std::to_string(i)] = "pw";
  CachingDirectory cache(fake, cfg, clock.fn(), /*max_entries=*/3, /*max_negative_entries=*/2);
  for (int i = 0; i < 3; ++i) EXPECT_EQ(cache.authenticate("u" + std::to_string(i), "pw").verdict, Verdict::kOk);
  for (int i = 0; i < 50; ++i) {
    EXPECT_EQ(cache.authenticate("u0", "bad" + std::to_string(i)).verdict, Verdict::kBadPassword);
    EXPECT_LE(cache.negativeSize(), 2u);
  }
  EXPECT_EQ(cache.size(), 5u);
  EXPECT_EQ(fake->calls, 53);
  for (int i = 0; i < 3; ++i) EXPECT_EQ(cache.authenticate("u" + std::to_string(i), "pw").verdict, Verdict::kOk);
  EXPECT_EQ(fake->calls, 53);  // every positive entry kept
  EXPECT_EQ(cache.authenticate("u0", "bad49").verdict, Verdict::kBadPassword);  // newest negative kept
  EXPECT_EQ(cache.authenticate("u0", "bad0").verdict, Verdict::kBadPassword);   // oldest evicted
  EXPECT_EQ(fake->calls, 54);
  // A refusal replaces the positive entry for the same credentials, and the reverse.
  fake->users["u1"] = "other";
  clock.now += seconds(61);
  EXPECT_EQ(cache.authenticate("u1", "pw").verdict, Verdict::kBadPassword);
  fake->down = true;
  EXPECT_EQ(cache.authenticate("u1", "pw").verdict, Verdict::kBadPassword);  // the negative entry, not stale
  clock.now += seconds(11);
  EXPECT_EQ(cache.authenticate("u1", "pw").verdict, Verdict::kTempFail);  // no stale positive left
  fake->down = false;
  fake->users["u1"] = "pw";
  const std::size_t negatives = cache.negativeSize();
  EXPECT_EQ(cache.authenticate("u1", "pw").verdict, Verdict::kOk);
  EXPECT_EQ(cache.negativeSize(), negatives - 1);  // the expired refusal is gone
}

TEST_F(AuthCache, BackendCredentialsAreNotCached) {
  class Creds : public Directory {
   public:
    AuthResult authenticate(std::string_view, std::string_view) override {
      ++calls;
      AuthResult r;
      r.verdict = Verdict::kOk;
      r.backend_password = "master";
      return r;
    }
    int calls = 0;
  };
  auto inner = std::make_shared<Creds>();
  CachingDirectory cache(inner, cfg, clock.fn());
  EXPECT_EQ(cache.authenticate("a", "b").verdict, Verdict::kOk);
  EXPECT_EQ(cache.authenticate("a", "b").verdict, Verdict::kOk);
  EXPECT_EQ(inner->calls, 2);
}

TEST_F(AuthCache, ConcurrentCallersAgree) {
  CachingDirectory cache(fake, cfg);
  std::vector<std::thread> threads;
  std::atomic<int> ok{0};
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&] {
      for (int i = 0; i < 200; ++i)
        if (cache.authenticate("alice@example.org", "alice-pw").verdict == Verdict::kOk) ++ok;
    });
  for (auto& th : threads) th.join();
  EXPECT_EQ(ok, 800);
  EXPECT_EQ(cache.hits() + cache.misses(), 800u);
}

// A map that changed after the hint was read (SessionFacts::route_map) wins over it.
TEST_F(AuthCache, RouteHintOlderThanTheMapIsAskedAgain) {
  CachingDirectory cache(fake, cfg, clock.fn());
  filters::SessionFacts ctx;
  ctx.route_map = clock.now - seconds(5);  // the map the first login routes with
  ASSERT_EQ(cache.authenticate("alice@example.org", "alice-pw", ctx).route->primary, "storage-01");
  clock.now += seconds(1);
  EXPECT_EQ(cache.authenticate("alice@example.org", "alice-pw", ctx).route->primary, "storage-01");
  EXPECT_EQ(fake->calls, 1);  // the map is older than the hint: a hit
  // the route changes in the directory; the map is reloaded after the hint was read
  fake->route_primary = "storage-03";
  clock.now += seconds(1);
  ctx.route_map = clock.now;
  clock.now += milliseconds(1);
  auto r = cache.authenticate("alice@example.org", "alice-pw", ctx);
  ASSERT_TRUE(r.route);
  EXPECT_EQ(r.route->primary, "storage-03");
  EXPECT_EQ(fake->calls, 2);
  // the new hint was read after that map: cached again
  EXPECT_EQ(cache.authenticate("alice@example.org", "alice-pw", ctx).route->primary, "storage-03");
  EXPECT_EQ(fake->calls, 2);
  // no context (no map to compare with): the hint stands
  EXPECT_EQ(cache.authenticate("alice@example.org", "alice-pw").route->primary, "storage-03");
  EXPECT_EQ(fake->calls, 2);
}

TEST_F(AuthCache, OutageDropsAHintOlderThanTheMap) {
  CachingDirectory cache(fake, cfg, clock.fn());
  filters::SessionFacts ctx;
  ASSERT_TRUE(cache.authenticate("alice@example.org", "alice-pw", ctx).route);
  fake->down = true;
  clock.now += seconds(1);
  // a map older than the hint: the hint stands (and is a plain hit within ttl)
  auto r = cache.authenticate("alice@example.org", "alice-pw", ctx);
  ASSERT_TRUE(r.route);
  EXPECT_EQ(fake->calls, 1);
  // a newer map: the directory is asked, is down, and the login goes on without the hint
  ctx.route_map = clock.now;
  clock.now += milliseconds(1);
  r = cache.authenticate("alice@example.org", "alice-pw", ctx);
  EXPECT_EQ(r.verdict, Verdict::kOk);
  EXPECT_EQ(r.user, "alice@example.org");
  EXPECT_FALSE(r.route);
  EXPECT_EQ(fake->calls, 2);
  EXPECT_EQ(cache.staleHits(), 1u);
  // also after the entry expired
  clock.now += seconds(120);
  r = cache.authenticate("alice@example.org", "alice-pw", ctx);
  EXPECT_EQ(r.verdict, Verdict::kOk);
  EXPECT_FALSE(r.route);
  // the database returns: the hint is read again and used
  fake->down = false;
  fake->route_primary = "storage-02";
  r = cache.authenticate("alice@example.org", "alice-pw", ctx);
  ASSERT_TRUE(r.route);
  EXPECT_EQ(r.route->primary, "storage-02");
}

TEST_F(AuthCache, EntryWithoutHintIsNotAskedAgainForANewerMap) {
  fake->route_primary.clear();
  CachingDirectory cache(fake, cfg, clock.fn());
  filters::SessionFacts ctx;
  EXPECT_EQ(cache.authenticate("alice@example.org", "alice-pw", ctx).verdict, Verdict::kOk);
  clock.now += seconds(1);
  ctx.route_map = clock.now;  // the map routes this user anyway
  clock.now += seconds(1);
  auto r = cache.authenticate("alice@example.org", "alice-pw", ctx);
  EXPECT_EQ(r.verdict, Verdict::kOk);
  EXPECT_FALSE(r.route);
  EXPECT_EQ(fake->calls, 1);
}

// ------------------------------------------------------------------ recipients

struct RecipientFixture : Fixture {
  RecipientFixture() {
    fake->recipients["alice@example.org"] = RecipientResult::kLocal;
    fake->recipients["nobody@example.org"] = RecipientResult::kUnknownMailbox;
  }
};
using RecipientCache = RecipientFixture;

TEST_F(RecipientCache, LocalIsKeptForTtlCaseInsensitively) {
  CachingDirectory cache(fake, cfg, clock.fn());
  EXPECT_EQ(cache.recipient("alice@example.org"), RecipientResult::kLocal);
  EXPECT_EQ(cache.recipient("ALICE@example.org"), RecipientResult::kLocal);
  EXPECT_EQ(fake->rcpt_calls, 1);
  clock.now += seconds(59);
  EXPECT_EQ(cache.recipient("alice@example.org"), RecipientResult::kLocal);
  EXPECT_EQ(fake->rcpt_calls, 1);
  fake->recipients.erase("alice@example.org");  // mailbox removed
  clock.now += seconds(2);
  EXPECT_EQ(cache.recipient("alice@example.org"), RecipientResult::kForeignDomain);
  EXPECT_EQ(fake->rcpt_calls, 2);
  EXPECT_EQ(cache.recipientHits(), 2U);
  EXPECT_EQ(cache.recipientMisses(), 2U);
}

TEST_F(RecipientCache, NegativeAnswersAreKeptForNegativeTtl) {
  CachingDirectory cache(fake, cfg, clock.fn());
  EXPECT_EQ(cache.recipient("nobody@example.org"), RecipientResult::kUnknownMailbox);
  EXPECT_EQ(cache.recipient("x@example.com"), RecipientResult::kForeignDomain);
  EXPECT_EQ(cache.recipient("nobody@example.org"), RecipientResult::kUnknownMailbox);
  EXPECT_EQ(cache.recipient("x@example.com"), RecipientResult::kForeignDomain);
  EXPECT_EQ(fake->rcpt_calls, 2);
  fake->recipients["nobody@example.org"] = RecipientResult::kLocal;  // mailbox created
  clock.now += seconds(9);
  EXPECT_EQ(cache.recipient("nobody@example.org"), RecipientResult::kUnknownMailbox);
  clock.now += seconds(2);
  EXPECT_EQ(cache.recipient("nobody@example.org"), RecipientResult::kLocal);
  EXPECT_EQ(fake->rcpt_calls, 3);
}

TEST_F(RecipientCache, TempFailIsNeverCachedNorServedStale) {
  CachingDirectory cache(fake, cfg, clock.fn());
  EXPECT_EQ(cache.recipient("alice@example.org"), RecipientResult::kLocal);
  fake->down = true;
  EXPECT_EQ(cache.recipient("bob@example.org"), RecipientResult::kTempFail);
  EXPECT_EQ(cache.recipient("bob@example.org"), RecipientResult::kTempFail);
  EXPECT_EQ(fake->rcpt_calls, 3);
  EXPECT_EQ(cache.recipient("alice@example.org"), RecipientResult::kLocal);  // still fresh
  clock.now += seconds(61);
  EXPECT_EQ(cache.recipient("alice@example.org"), RecipientResult::kTempFail);  // expired: no stale answer
  fake->down = false;
  EXPECT_EQ(cache.recipient("bob@example.org"), RecipientResult::kForeignDomain);
  EXPECT_EQ(cache.recipientSize(), 2U);
}

TEST_F(RecipientCache, ZeroTtlsDisableIt) {
  CachingDirectory none(fake, conf::CacheConfig{milliseconds(0), milliseconds(10000)}, clock.fn());
  EXPECT_EQ(none.recipient("nobody@example.org"), RecipientResult::kUnknownMailbox);
  EXPECT_EQ(none.recipient("nobody@example.org"), RecipientResult::kUnknownMailbox);
  EXPECT_EQ(fake->rcpt_calls, 2);
  EXPECT_EQ(none.recipientSize(), 0U);

  CachingDirectory positive_only(fake, conf::CacheConfig{milliseconds(60000), milliseconds(0)}, clock.fn());
  EXPECT_EQ(positive_only.recipient("nobody@example.org"), RecipientResult::kUnknownMailbox);
  EXPECT_EQ(positive_only.recipient("nobody@example.org"), RecipientResult::kUnknownMailbox);
  EXPECT_EQ(positive_only.recipient("alice@example.org"), RecipientResult::kLocal);
  EXPECT_EQ(positive_only.recipient("alice@example.org"), RecipientResult::kLocal);
  EXPECT_EQ(fake->rcpt_calls, 5);
  EXPECT_EQ(positive_only.recipientSize(), 1U);
}

TEST_F(RecipientCache, BoundedAndCounted) {
  CachingDirectory cache(fake, cfg, clock.fn(), /*max_entries=*/2);
  for (const char* a : {"a@x.test", "b@x.test", "c@x.test", "d@x.test"}) (void)cache.recipient(a);
  EXPECT_EQ(cache.recipientSize(), 2U);
  (void)cache.recipient("d@x.test");
  (void)cache.recipient("a@x.test");  // evicted: asked again
  EXPECT_EQ(fake->rcpt_calls, 5);
  EXPECT_EQ(cache.statsText(),
            "auth_cache_hits=0 auth_cache_misses=0 auth_cache_stale_hits=0 auth_cache_entries=0 "
            "auth_cache_negative_entries=0 rcpt_cache_hits=1 rcpt_cache_misses=5 rcpt_cache_entries=2 fake=1");
}

TEST_F(RecipientCache, SenderCheckGoesToTheInnerDirectory) {
  CachingDirectory cache(fake, cfg, clock.fn());
  EXPECT_EQ(cache.senderAllowed("alice@example.org", "alice@EXAMPLE.org"), SenderResult::kAllowed);
  EXPECT_EQ(cache.senderAllowed("alice@example.org", "bob@example.org"), SenderResult::kDenied);
}

}  // namespace
}  // namespace mailgate::auth
