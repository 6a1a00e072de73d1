// The policy engine (filters/policy/policy.h) driven directly: configurations from
// YAML text, filters made by the factory, stages and events with facts filled here.
// Limits (concurrency, rates at each stage, auth failures with their tarpit and
// bans, per-user sessions, errors), exemptions, every condition of a policy rule,
// the replies each verdict renders to in SMTP, IMAP and POP3, and the dry run.
//
// The counters and bans are process-wide (policyState()): every test uses client
// addresses of its own (next()) so that no test sees another's counts.
#include "filters/policy/policy.h"

#include <gtest/gtest.h>
#include <stdlib.h>

#include <atomic>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "conf/config.h"
#include "filters/message_body.h"
#include "gateway/session/verdict_render.h"

namespace mailgate::filters::policy {
namespace {

namespace fs = std::filesystem;
using session::renderImap;
using session::renderPop3;
using session::renderSmtp;

constexpr const char* kHost = "gw.example.net";

// A fresh IPv4 address for each call (198.18.0.0/15 is for benchmarks: nobody's).
std::string nextIp() {
  static std::atomic<unsigned> n{1};
  const unsigned i = n++;
  return "198.18." + std::to_string((i / 250) % 250) + "." + std::to_string(i % 250 + 1);
}

// Listeners mx (smtp), sub (submission), imap (imap), pop (pop3). Lists trusted
// (10.0.0.0/8) and friends (172.16.0.0/12).
const std::string kBase =
    "directory: { file: { users: users.passwd } }\n"
    "backends:\n"
    "  - { name: b1, host: 127.0.0.1, ports: { imap: 143, pop3: 110, smtp: 25 } }\n"
    "routing: { submission_relay: b1 }\n"
    "listeners:\n"
    "  - { name: mx, protocol: smtp, listen: \"127.0.0.1:2525\" }\n"
    "  - { name: sub, protocol: submission, listen: \"127.0.0.1:2587\" }\n"
    "  - { name: imap, protocol: imap, listen: \"127.0.0.1:1143\" }\n"
    "  - { name: pop, protocol: pop3, listen: \"127.0.0.1:1110\" }\n"
    "lists:\n"
    "  trusted: { cidrs: [10.0.0.0/8] }\n"
    "  friends: { cidrs: [172.16.0.0/12] }\n";

class PolicyEngine : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = (fs::temp_directory_path() / "mailgate-policy-engine-XXXXXX").string();
    ASSERT_NE(mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
    std::ofstream(dir_ / "users.passwd") << "user@example.org:{PLAIN}secret\n";
  }
  void TearDown() override { fs::remove_all(dir_); }

  // The policy of kBase + `extra`; fails the test on any error. `postgres`: with the
  // postgres directory (scope: cluster needs it; nothing connects to it here).
  std::shared_ptr<const Policy> compile(const std::string& extra, bool postgres = false) {
    std::string base = kBase;
    if (postgres)
      base = "directory: { driver: postgres, postgres: { conninfo: \"dbname=mail\" } }\n" +
             kBase.substr(kBase.find('\n') + 1);
    const conf::LoadResult r = conf::loadConfigText(base + extra, (dir_ / "mailgate.yaml").string());
    for (const auto& e : r.errors) ADD_FAILURE() << e.format();
    if (!r.config) return nullptr;
    std::vector<conf::ConfigError> errors;
    std::vector<std::string> warnings;
    auto p = Policy::compile(*r.config, nullptr, &errors, &warnings);
    for (const auto& e : errors) ADD_FAILURE() << e.format();
    return p;
  }

  static SessionFacts facts(const std::string& listener, const std::string& ip) {
    SessionFacts f;
    f.session_id = "t" + ip;
    f.listener = listener;
    if (listener == "mx") {
      f.protocol = "smtp";
    } else if (listener == "sub") {
      f.protocol = "smtp";
      f.submission = true;
    } else if (listener == "pop") {
      f.protocol = "pop3";
    } else {
      f.protocol = "imap";
    }
    f.client_ip = ip;
    f.client_port = 40000;
    return f;
  }

  static std::unique_ptr<Filter> make(const std::shared_ptr<const Policy>& p, const SessionFacts& f) {
    PolicyFilterFactory factory(p);
    auto filter = factory.create(f, FilterServices{});
    EXPECT_NE(filter, nullptr);
    return filter;
  }

  static Verdict stage(Filter& f, Stage s, SessionFacts& facts) { return f.onStage(s, facts, Resumer{}); }

  static Verdict event(Filter& f, EventKind kind, SessionFacts& facts, uint64_t credential = 0) {
    Event ev;
    ev.kind = kind;
    ev.credential = credential;
    return f.onEvent(ev, facts);
  }

  static NetAddr addr(const std::string& s) {
    NetAddr a;
    EXPECT_TRUE(parseAddr(s, &a)) << s;
    return a;
  }

  static bool banned(const std::string& ip) { return policyState().bans.find(addr(ip), BanTable::wallMs()); }

  fs::path dir_;
};

// --- concurrency ---

TEST_F(PolicyEngine, ConcurrencyAllowsNRefusesOneMoreAndReleasesOnDestroy) {
  auto p = compile(
      "limits:\n"
      "  rules:\n"
      "    - { name: conc-a, count: connections, key: [client.net], concurrency: 3 }\n");
  ASSERT_NE(p, nullptr);
  for (const std::string listener : {"imap", "pop", "mx"}) {
    SCOPED_TRACE(listener);
    const std::string ip = nextIp();
    SessionFacts f = facts(listener, ip);
    std::vector<std::unique_ptr<Filter>> held;
    for (int i = 0; i < 3; i++) {
      held.push_back(make(p, f));
      EXPECT_EQ(stage(*held.back(), Stage::kConnect, f).action, Action::kContinue) << i;
    }
    auto extra = make(p, f);
    Verdict v = stage(*extra, Stage::kConnect, f);
    ASSERT_EQ(v.action, Action::kTempfail);
    EXPECT_NE(v.reason.find("conc-a"), std::string::npos) << v.reason;
    if (listener == "imap") {
      EXPECT_EQ(renderImap(v, Stage::kConnect, "a1").line, "* BYE [UNAVAILABLE] Too many connections from your address");
      EXPECT_TRUE(renderImap(v, Stage::kConnect, "a1").close);
    } else if (listener == "pop") {
      EXPECT_EQ(renderPop3(v, Stage::kConnect).line, "-ERR [IN-USE] Too many connections from your address");
      EXPECT_TRUE(renderPop3(v, Stage::kConnect).close);
    } else {
      EXPECT_EQ(renderSmtp(v, Stage::kConnect, kHost).line,
                "421 4.7.0 gw.example.net Too many connections from your address, try again later");
      EXPECT_TRUE(renderSmtp(v, Stage::kConnect, kHost).close);
    }
    // The refused one holds no slot; a closed session gives its slot back.
    extra.reset();
    auto again = make(p, f);
    EXPECT_EQ(stage(*again, Stage::kConnect, f).action, Action::kTempfail);
    again.reset();
    held.erase(held.begin());
    auto next = make(p, f);
    EXPECT_EQ(stage(*next, Stage::kConnect, f).action, Action::kContinue);
    // Another address has slots of its own.
    SessionFacts g = facts(listener, nextIp());
    auto other = make(p, g);
    EXPECT_EQ(stage(*other, Stage::kConnect, g).action, Action::kContinue);
  }
}

TEST_F(PolicyEngine, ConcurrencySlotReleasedWhenTheRateRefuses) {
  // The same rule with a rate: a connection within the concurrency but over the rate
  // is refused, and its slot comes back when it closes.
  auto p = compile(
      "limits:\n"
      "  rules:\n"
      "    - { name: conc-rate, count: connections, concurrency: 2, rate: 3/1h, burst: 3 }\n");
  ASSERT_NE(p, nullptr);
  const std::string ip = nextIp();
  SessionFacts f = facts("imap", ip);
  for (int i = 0; i < 3; i++) {
    auto s = make(p, f);
    EXPECT_EQ(stage(*s, Stage::kConnect, f).action, Action::kContinue) << i;
  }
  for (int i = 0; i < 5; i++) {
    auto s = make(p, f);
    EXPECT_EQ(stage(*s, Stage::kConnect, f).action, Action::kTempfail) << i;
  }
  // All destroyed: no slot is held (seen through a dry run).
  Trace trace;
  auto dry = makeDryRunFilter(p, f, &trace);
  stage(*dry, Stage::kConnect, f);
  bool saw = false;
  for (const auto& t : trace)
    if (t.kind == "limit" && t.detail.find("0 of 2 concurrent") != std::string::npos) saw = true;
  EXPECT_TRUE(saw);
}

// Sessions on several threads take and give back slots of one key: never more than
// the limit at once, and none left held once they are all gone.
TEST_F(PolicyEngine, ConcurrencyAcrossThreads) {
  auto p = compile(
      "limits:\n"
      "  rules:\n"
      "    - { name: conc-threads, count: connections, key: [client.net], concurrency: 4 }\n");
  ASSERT_NE(p, nullptr);
  const std::string ip = nextIp();
  std::atomic<int> inside{0}, most{0}, admitted{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 6; t++)
    threads.emplace_back([&] {
      for (int i = 0; i < 2000; i++) {
        SessionFacts f = facts("imap", ip);
        auto s = make(p, f);
        if (stage(*s, Stage::kConnect, f).action != Action::kContinue) continue;
        admitted++;
        const int now = ++inside;
        int m = most.load();
        while (now > m && !most.compare_exchange_weak(m, now)) {
        }
        --inside;
      }
    });
  for (auto& t : threads) t.join();
  EXPECT_LE(most.load(), 4);
  EXPECT_GT(admitted.load(), 0);
  SessionFacts f = facts("imap", ip);
  std::vector<std::unique_ptr<Filter>> held;
  for (int i = 0; i < 4; i++) {
    held.push_back(make(p, f));
    EXPECT_EQ(stage(*held.back(), Stage::kConnect, f).action, Action::kContinue) << i;
  }
  EXPECT_EQ(stage(*make(p, f), Stage::kConnect, f).action, Action::kTempfail);
}

// --- rates ---

TEST_F(PolicyEngine, ConnectionRateGcra) {
  auto p = compile(
      "limits:\n"
      "  rules:\n"
      "    - { name: conn-rate, count: connections, key: [client.ip, listener], rate: 4/1h, burst: 4 }\n");
  ASSERT_NE(p, nullptr);
  const std::string ip = nextIp();
  SessionFacts f = facts("mx", ip);
  for (int i = 0; i < 4; i++) {
    auto s = make(p, f);
    EXPECT_EQ(stage(*s, Stage::kConnect, f).action, Action::kContinue) << i;
  }
  auto s = make(p, f);
  Verdict v = stage(*s, Stage::kConnect, f);
  EXPECT_EQ(v.action, Action::kTempfail);
  EXPECT_EQ(renderSmtp(v, Stage::kConnect, kHost).line,
            "421 4.7.0 gw.example.net Too many connections from your address, try again later");
  // The key has the listener: another listener is counted apart.
  SessionFacts g = facts("sub", ip);
  auto t = make(p, g);
  EXPECT_EQ(stage(*t, Stage::kConnect, g).action, Action::kContinue);
}

TEST_F(PolicyEngine, MessagesAtMailRecipientsAtRcptBytesAtData) {
  auto p = compile(
      "limits:\n"
      "  rules:\n"
      "    - { name: msgs, count: messages, key: [client.ip], rate: 2/1h }\n"
      "    - { name: rcpts, count: recipients, key: [client.ip, rcpt.domain], rate: 3/1h }\n"
      "    - { name: bytes, count: bytes, key: [client.ip], rate: 1000/1h }\n");
  ASSERT_NE(p, nullptr);
  const std::string ip = nextIp();
  SessionFacts f = facts("mx", ip);
  auto s = make(p, f);
  ASSERT_EQ(stage(*s, Stage::kConnect, f).action, Action::kContinue);
  f.from = "a@example.com";
  EXPECT_EQ(stage(*s, Stage::kMail, f).action, Action::kContinue);
  EXPECT_EQ(stage(*s, Stage::kMail, f).action, Action::kContinue);
  Verdict v = stage(*s, Stage::kMail, f);
  ASSERT_EQ(v.action, Action::kTempfail);
  EXPECT_EQ(renderSmtp(v, Stage::kMail, kHost).line, "450 4.7.1 Too much mail from you, try again later");
  EXPECT_FALSE(renderSmtp(v, Stage::kMail, kHost).close);

  for (int i = 0; i < 3; i++) {
    f.rcpt = "r" + std::to_string(i) + "@one.example";
    EXPECT_EQ(stage(*s, Stage::kRcpt, f).action, Action::kContinue) << i;
  }
  f.rcpt = "r9@ONE.example";  // the domain is compared without case
  v = stage(*s, Stage::kRcpt, f);
  ASSERT_EQ(v.action, Action::kTempfail);
  EXPECT_EQ(renderSmtp(v, Stage::kRcpt, kHost).line, "452 4.5.3 Too many recipients, try again later");
  v.ref = "abc123";
  EXPECT_EQ(renderSmtp(v, Stage::kRcpt, kHost).line, "452 4.5.3 Too many recipients, try again later (ref abc123)");
  f.rcpt = "r@two.example";  // another domain: a key of its own
  EXPECT_EQ(stage(*s, Stage::kRcpt, f).action, Action::kContinue);

  f.message = std::make_shared<StringBody>(std::string(600, 'x'));
  EXPECT_EQ(stage(*s, Stage::kData, f).action, Action::kContinue);
  v = stage(*s, Stage::kData, f);  // 1200 of 1000
  ASSERT_EQ(v.action, Action::kTempfail);
  EXPECT_EQ(renderSmtp(v, Stage::kData, kHost).line, "450 4.7.1 Too much mail from you, try again later");
  // A message larger than the whole burst never passes.
  SessionFacts g = facts("mx", nextIp());
  auto t = make(p, g);
  g.message = std::make_shared<StringBody>(std::string(1001, 'x'));
  EXPECT_EQ(stage(*t, Stage::kData, g).action, Action::kTempfail);
}

TEST_F(PolicyEngine, SenderDomainKeyAndNullSender) {
  auto p = compile(
      "limits:\n"
      "  rules:\n"
      "    - { name: per-sender-dom, count: messages, key: [sender.domain], rate: 1/1h }\n");
  ASSERT_NE(p, nullptr);
  const std::string dom = "d" + nextIp() + ".example";
  SessionFacts f = facts("mx", nextIp());
  auto s = make(p, f);
  f.from = "a@" + dom;
  EXPECT_EQ(stage(*s, Stage::kMail, f).action, Action::kContinue);
  SessionFacts g = facts("mx", nextIp());  // another client, the same sender domain
  auto t = make(p, g);
  g.from = "b@" + dom;
  EXPECT_EQ(stage(*t, Stage::kMail, g).action, Action::kTempfail);
  g.from = "";  // the null sender has no domain: not counted
  for (int i = 0; i < 3; i++) EXPECT_EQ(stage(*t, Stage::kMail, g).action, Action::kContinue);
}

// A limit that delays does not skip the later limits nor the stage's rules: a refusal wins.
TEST_F(PolicyEngine, LimitDelayDoesNotSkipLaterLimitsOrRules) {
  auto p = compile(
      "limits:\n"
      "  rules:\n"
      "    - { name: dl-slow, count: messages, key: [client.ip], rate: 1/1h, burst: 1,\n"
      "        on_exceed: { action: delay, delay: 3s } }\n"
      "    - { name: dl-hard, count: messages, key: [client.ip], rate: 2/1h, burst: 2 }\n"
      "policies:\n"
      "  - { name: dl-spam, stage: mail, when: { sender: { re2: '@spam\\.example$' } }, then: reject }\n");
  ASSERT_NE(p, nullptr);
  SessionFacts f = facts("mx", nextIp());
  auto s = make(p, f);
  f.from = "a@ham.example";
  EXPECT_EQ(stage(*s, Stage::kMail, f).action, Action::kContinue);
  f.from = "a@spam.example";  // over dl-slow (a delay), and the rule refuses it
  Verdict v = stage(*s, Stage::kMail, f);
  EXPECT_EQ(v.action, Action::kReject);
  EXPECT_EQ(v.reason, "rule dl-spam");
  f.from = "a@ham.example";  // dl-hard counted the one before: now over it too
  v = stage(*s, Stage::kMail, f);
  EXPECT_EQ(v.action, Action::kTempfail);
  EXPECT_NE(v.reason.find("dl-hard"), std::string::npos) << v.reason;
  // Only the delay: the stage goes on after it.
  SessionFacts g = facts("mx", nextIp());
  auto t = make(p, g);
  g.from = "b@ham.example";
  EXPECT_EQ(stage(*t, Stage::kMail, g).action, Action::kContinue);
  v = stage(*t, Stage::kMail, g);
  EXPECT_EQ(v.action, Action::kDelay);
  EXPECT_EQ(v.delay.count(), 3000);
}

// --- auth failures ---

TEST_F(PolicyEngine, AuthFailureDelayGrowsAndIsCapped) {
  auto p = compile(
      "limits:\n"
      "  rules:\n"
      "    - { name: af-delay, count: auth_failures, key: client.net, rate: 1/1h, burst: 1,\n"
      "        on_exceed: { action: delay, delay: 2s..15s } }\n");
  ASSERT_NE(p, nullptr);
  SessionFacts f = facts("imap", nextIp());
  auto s = make(p, f);
  ASSERT_EQ(stage(*s, Stage::kConnect, f).action, Action::kContinue);
  EXPECT_EQ(event(*s, EventKind::kAuthFailure, f, 11).action, Action::kContinue);
  const int64_t expect[] = {2000, 4000, 8000, 15000, 15000};
  for (int i = 0; i < 5; i++) {
    Verdict v = event(*s, EventKind::kAuthFailure, f, 12 + i);
    EXPECT_EQ(v.action, Action::kDelay) << i;
    EXPECT_EQ(v.delay.count(), expect[i]) << i;
  }
  // A delay limit never refuses the login before it is tried.
  EXPECT_EQ(stage(*s, Stage::kAuth, f).action, Action::kContinue);
}

TEST_F(PolicyEngine, AuthFailuresBanThenRefusedAtConnect) {
  auto p = compile(
      "limits:\n"
      "  rules:\n"
      "    - { name: af-ban, count: auth_failures, key: [client.net], rate: 3/10m, burst: 3, on_exceed: ban }\n"
      "  bans: { ttl: 1h }\n");
  ASSERT_NE(p, nullptr);
  for (const std::string listener : {"sub", "imap", "pop"}) {
    SCOPED_TRACE(listener);
    const std::string ip = nextIp();
    SessionFacts f = facts(listener, ip);
    auto s = make(p, f);
    ASSERT_EQ(stage(*s, Stage::kConnect, f).action, Action::kContinue);
    for (int i = 0; i < 3; i++) EXPECT_EQ(event(*s, EventKind::kAuthFailure, f, 100 + i).action, Action::kContinue);
    EXPECT_FALSE(banned(ip));
    Verdict v = event(*s, EventKind::kAuthFailure, f, 200);
    ASSERT_EQ(v.action, Action::kClose);
    EXPECT_TRUE(banned(ip));
    if (listener == "sub") {
      EXPECT_EQ(renderSmtp(v, Stage::kAuth, kHost).line,
                "421 4.7.0 gw.example.net Too many failures from your address, try again later");
    } else if (listener == "imap") {
      EXPECT_EQ(renderImap(v, Stage::kAuth, "a1").line,
                "* BYE [UNAVAILABLE] Too many failures from your address, try again later");
    } else {
      EXPECT_EQ(renderPop3(v, Stage::kAuth).line, "-ERR [SYS/TEMP] Too many failures from your address, try again later");
      EXPECT_TRUE(renderPop3(v, Stage::kAuth).close);
    }
    // A new connection from the address is refused at connect.
    SessionFacts g = facts(listener, ip);
    auto t = make(p, g);
    Verdict b = stage(*t, Stage::kConnect, g);
    EXPECT_EQ(b.action, Action::kClose);
    EXPECT_NE(b.reason.find("af-ban"), std::string::npos) << b.reason;
    b.ref = "0a1b2c";
    if (listener == "sub")
      EXPECT_EQ(renderSmtp(b, Stage::kConnect, kHost).line,
                "421 4.7.0 gw.example.net Too many failures from your address, try again later (ref 0a1b2c)");
    else if (listener == "imap")
      EXPECT_EQ(renderImap(b, Stage::kConnect, "*").line,
                "* BYE [UNAVAILABLE] Too many failures from your address, try again later (ref 0a1b2c)");
    else
      EXPECT_EQ(renderPop3(b, Stage::kConnect).line,
                "-ERR [SYS/TEMP] Too many failures from your address, try again later (ref 0a1b2c)");
  }
}

TEST_F(PolicyEngine, AuthPrecheckRefusesAnAddressOverATempfailLimit) {
  auto p = compile(
      "limits:\n"
      "  rules:\n"
      "    - { name: af-temp, count: auth_failures, key: [client.net], rate: 2/1h, burst: 2 }\n");
  ASSERT_NE(p, nullptr);
  SessionFacts f = facts("sub", nextIp());
  auto s = make(p, f);
  EXPECT_EQ(stage(*s, Stage::kAuth, f).action, Action::kContinue);
  EXPECT_EQ(event(*s, EventKind::kAuthFailure, f, 1).action, Action::kContinue);
  EXPECT_EQ(event(*s, EventKind::kAuthFailure, f, 2).action, Action::kContinue);
  Verdict v = stage(*s, Stage::kAuth, f);
  ASSERT_EQ(v.action, Action::kTempfail);
  EXPECT_EQ(renderSmtp(v, Stage::kAuth, kHost).line, "454 4.7.0 Try again later");
}

TEST_F(PolicyEngine, DistinctCredentialsCountsTheSamePairOnce) {
  auto p = compile(
      "limits:\n"
      "  rules:\n"
      "    - { name: af-distinct, count: auth_failures, key: [client.net], rate: 3/1h, burst: 3,\n"
      "        distinct_credentials: true, on_exceed: ban }\n");
  ASSERT_NE(p, nullptr);
  const std::string ip = nextIp();
  SessionFacts f = facts("imap", ip);
  auto s = make(p, f);
  const uint64_t old = credentialHash("User@Example.org", "old-password");
  EXPECT_EQ(old, credentialHash("user@example.org", "old-password"));  // the user without case
  EXPECT_NE(old, credentialHash("user@example.org", "other"));
  for (int i = 0; i < 20; i++) EXPECT_EQ(event(*s, EventKind::kAuthFailure, f, old).action, Action::kContinue) << i;
  EXPECT_FALSE(banned(ip));
  EXPECT_EQ(event(*s, EventKind::kAuthFailure, f, credentialHash("u", "1")).action, Action::kContinue);
  EXPECT_EQ(event(*s, EventKind::kAuthFailure, f, credentialHash("u", "2")).action, Action::kContinue);
  EXPECT_EQ(event(*s, EventKind::kAuthFailure, f, credentialHash("u", "3")).action, Action::kClose);
  EXPECT_TRUE(banned(ip));
}

// A cluster-scope limit keeps its count where distinct_credentials kept the last
// credential: each must have a place of its own. (No cluster link in a unit test:
// the count is this gateway's.)
TEST_F(PolicyEngine, DistinctCredentialsWithClusterScope) {
  auto p = compile(
      "limits:\n"
      "  rules:\n"
      "    - { name: af-cluster, count: auth_failures, key: [client.net], rate: 3/30d, scope: cluster,\n"
      "        distinct_credentials: true, on_exceed: ban }\n",
      /*postgres=*/true);
  ASSERT_NE(p, nullptr);
  ASSERT_EQ(policyState().cluster.load(), nullptr);
  const std::string ip = nextIp();
  SessionFacts f = facts("imap", ip);
  auto s = make(p, f);
  for (int i = 0; i < 3; i++) {
    EXPECT_EQ(event(*s, EventKind::kAuthFailure, f, credentialHash("u", std::to_string(i))).action,
              Action::kContinue)
        << i;
    EXPECT_EQ(event(*s, EventKind::kAuthFailure, f, credentialHash("u", std::to_string(i))).action,
              Action::kContinue)
        << i << " again";
  }
  EXPECT_FALSE(banned(ip));
  EXPECT_EQ(event(*s, EventKind::kAuthFailure, f, credentialHash("u", "x")).action, Action::kClose);
  EXPECT_TRUE(banned(ip));
}

// The check before a login reads a cluster-scope limit's count, not a GCRA time
// (its entry holds the window's start, in wall-clock milliseconds).
TEST_F(PolicyEngine, AuthPrecheckWithClusterScope) {
  auto p = compile(
      "limits:\n"
      "  rules:\n"
      "    - { name: af-cl-temp, count: auth_failures, key: [client.net], rate: 3/30d, scope: cluster }\n",
      /*postgres=*/true);
  ASSERT_NE(p, nullptr);
  SessionFacts f = facts("pop", nextIp());
  auto s = make(p, f);
  EXPECT_EQ(stage(*s, Stage::kAuth, f).action, Action::kContinue);
  EXPECT_EQ(event(*s, EventKind::kAuthFailure, f, 1).action, Action::kContinue);
  EXPECT_EQ(stage(*s, Stage::kAuth, f).action, Action::kContinue);
  EXPECT_EQ(event(*s, EventKind::kAuthFailure, f, 2).action, Action::kContinue);
  EXPECT_EQ(event(*s, EventKind::kAuthFailure, f, 3).action, Action::kContinue);
  Verdict v = stage(*s, Stage::kAuth, f);  // three of three: one more would be over
  ASSERT_EQ(v.action, Action::kTempfail);
  EXPECT_EQ(renderPop3(v, Stage::kAuth).line, "-ERR [SYS/TEMP] Limit exceeded");
  EXPECT_EQ(event(*s, EventKind::kAuthFailure, f, 4).action, Action::kTempfail);
}

TEST_F(PolicyEngine, ExemptNeverLimitedNorBanned) {
  auto p = compile(
      "limits:\n"
      "  defaults: { exempt: [trusted] }\n"
      "  user_sessions: 1\n"
      "  rules:\n"
      "    - { name: ex-conn, count: connections, concurrency: 1, rate: 1/1h }\n"
      "    - { name: ex-af, count: auth_failures, rate: 1/1h, on_exceed: ban }\n"
      "    - { name: ex-err, count: errors, rate: 1/1h }\n"
      "    - { name: ex-msg, count: messages, rate: 1/1h }\n");
  ASSERT_NE(p, nullptr);
  const std::string ip = "10.1.2.3";
  ASSERT_TRUE(p->exempt(addr(ip)));
  SessionFacts f = facts("imap", ip);
  f.user = "user@example.org";
  std::vector<std::unique_ptr<Filter>> held;
  for (int i = 0; i < 5; i++) {
    held.push_back(make(p, f));
    EXPECT_EQ(stage(*held.back(), Stage::kConnect, f).action, Action::kContinue);
    EXPECT_EQ(stage(*held.back(), Stage::kAuth, f).action, Action::kContinue);
    EXPECT_EQ(event(*held.back(), EventKind::kAuthFailure, f, 1000 + i).action, Action::kContinue);
    EXPECT_EQ(event(*held.back(), EventKind::kError, f).action, Action::kContinue);
    EXPECT_EQ(event(*held.back(), EventKind::kAuthSuccess, f).action, Action::kContinue);
  }
  EXPECT_FALSE(banned(ip));
  SessionFacts m = facts("mx", ip);
  auto s = make(p, m);
  m.from = "a@b.example";
  for (int i = 0; i < 5; i++) EXPECT_EQ(stage(*s, Stage::kMail, m).action, Action::kContinue);
}

TEST_F(PolicyEngine, BansNeverTempfailsInsteadOfBanning) {
  auto p = compile(
      "limits:\n"
      "  rules:\n"
      "    - { name: nb-af, count: auth_failures, rate: 1/1h, burst: 1, on_exceed: ban }\n"
      "  bans: { never: [friends] }\n");
  ASSERT_NE(p, nullptr);
  const std::string ip = "172.16." + nextIp().substr(7);  // in friends, and new to this process
  ASSERT_TRUE(p->neverBan(addr(ip)));
  ASSERT_FALSE(p->exempt(addr(ip)));
  SessionFacts f = facts("imap", ip);
  auto s = make(p, f);
  EXPECT_EQ(event(*s, EventKind::kAuthFailure, f, 1).action, Action::kContinue);
  Verdict v = event(*s, EventKind::kAuthFailure, f, 2);  // limited (not exempt), never banned
  EXPECT_EQ(v.action, Action::kTempfail);
  EXPECT_FALSE(banned(ip));
  EXPECT_EQ(renderImap(v, Stage::kAuth, "a2").line, "a2 NO [LIMIT] Limit exceeded");
  EXPECT_EQ(stage(*make(p, f), Stage::kConnect, f).action, Action::kContinue);
}

// --- per-user sessions ---

TEST_F(PolicyEngine, UserSessionsAtLogin) {
  auto p = compile("limits:\n  user_sessions: 2\n  rules: []\n");
  ASSERT_NE(p, nullptr);
  for (const std::string listener : {"imap", "pop"}) {
    SCOPED_TRACE(listener);
    const std::string ip = nextIp();
    SessionFacts f = facts(listener, ip);
    f.user = "Alice@Example.org";
    std::vector<std::unique_ptr<Filter>> held;
    for (int i = 0; i < 2; i++) {
      held.push_back(make(p, f));
      EXPECT_EQ(event(*held.back(), EventKind::kAuthSuccess, f).action, Action::kContinue);
    }
    auto third = make(p, f);
    f.user = "alice@example.org";  // the same user, written otherwise
    Verdict v = event(*third, EventKind::kAuthSuccess, f);
    ASSERT_EQ(v.action, Action::kTempfail);
    v.ref = "beef01";
    if (listener == "imap")
      EXPECT_EQ(renderImap(v, Stage::kAuth, "a3").line,
                "a3 NO [LIMIT] Too many sessions for this user from your address (ref beef01)");
    else
      EXPECT_EQ(renderPop3(v, Stage::kAuth).line,
                "-ERR [IN-USE] Too many sessions for this user from your address (ref beef01)");
    // Another user from the address, the user from another address: not limited.
    SessionFacts g = facts(listener, ip);
    g.user = "bob@example.org";
    EXPECT_EQ(event(*make(p, g), EventKind::kAuthSuccess, g).action, Action::kContinue);
    SessionFacts h = facts(listener, nextIp());
    h.user = "alice@example.org";
    EXPECT_EQ(event(*make(p, h), EventKind::kAuthSuccess, h).action, Action::kContinue);
    // A closed session frees its place.
    held.pop_back();
    third = make(p, f);
    EXPECT_EQ(event(*third, EventKind::kAuthSuccess, f).action, Action::kContinue);
  }
  // SMTP sessions are not counted.
  SessionFacts s = facts("sub", nextIp());
  s.user = "carol@example.org";
  std::vector<std::unique_ptr<Filter>> smtp;
  for (int i = 0; i < 4; i++) {
    smtp.push_back(make(p, s));
    EXPECT_EQ(event(*smtp.back(), EventKind::kAuthSuccess, s).action, Action::kContinue);
  }
}

// --- errors ---

TEST_F(PolicyEngine, ErrorsAreCountedByEvent) {
  auto p = compile(
      "limits:\n"
      "  rules:\n"
      "    - { name: errs, count: errors, key: [client.net], rate: 3/1h, burst: 3 }\n");
  ASSERT_NE(p, nullptr);
  for (const std::string listener : {"mx", "imap", "pop"}) {
    SCOPED_TRACE(listener);
    SessionFacts f = facts(listener, nextIp());
    auto s = make(p, f);
    for (int i = 0; i < 3; i++) EXPECT_EQ(event(*s, EventKind::kError, f).action, Action::kContinue);
    Verdict v = event(*s, EventKind::kError, f);
    ASSERT_EQ(v.action, Action::kTempfail);
    // The sessions answer it with a close (their renderers get a kClose verdict).
    Verdict bye = v;
    bye.action = Action::kClose;
    if (listener == "mx") {
      EXPECT_EQ(renderSmtp(bye, Stage::kClose, kHost).line,
                "421 4.7.0 gw.example.net Service not available, closing connection");
    } else if (listener == "imap") {
      EXPECT_EQ(v.response_code, "LIMIT");
      EXPECT_EQ(renderImap(v, Stage::kMail, "x").line, "x NO [LIMIT] Limit exceeded");
    } else {
      EXPECT_EQ(renderPop3(v, Stage::kAuth).line, "-ERR [SYS/TEMP] Limit exceeded");
    }
  }
}

// --- policies: conditions ---

// A policy with one rule at STAGE whose `when` is WHEN; `then: reject`.
std::string onePolicy(const std::string& stage, const std::string& when, const std::string& more = "") {
  return "limits: { rules: [] }\n"
         "policies:\n"
         "  - { name: p1, stage: " + stage + ", when: " + when + ", then: reject" + more + " }\n";
}

TEST_F(PolicyEngine, ConditionListenerAndProtocol) {
  auto p = compile(onePolicy("connect", "{ listener: [mx, pop] }"));
  ASSERT_NE(p, nullptr);
  for (const auto& [l, hit] : std::vector<std::pair<std::string, bool>>{{"mx", true}, {"pop", true}, {"imap", false},
                                                                        {"sub", false}}) {
    SessionFacts f = facts(l, nextIp());
    EXPECT_EQ(stage(*make(p, f), Stage::kConnect, f).action, hit ? Action::kReject : Action::kContinue) << l;
  }
  p = compile(onePolicy("connect", "{ protocol: submission }"));
  ASSERT_NE(p, nullptr);
  for (const auto& [l, hit] : std::vector<std::pair<std::string, bool>>{{"mx", false}, {"sub", true}}) {
    SessionFacts f = facts(l, nextIp());
    EXPECT_EQ(stage(*make(p, f), Stage::kConnect, f).action, hit ? Action::kReject : Action::kContinue) << l;
  }
  p = compile(onePolicy("connect", "{ protocol: [imap, smtp] }"));
  ASSERT_NE(p, nullptr);
  for (const auto& [l, hit] : std::vector<std::pair<std::string, bool>>{{"mx", true}, {"sub", false}, {"imap", true},
                                                                        {"pop", false}}) {
    SessionFacts f = facts(l, nextIp());
    EXPECT_EQ(stage(*make(p, f), Stage::kConnect, f).action, hit ? Action::kReject : Action::kContinue) << l;
  }
}

TEST_F(PolicyEngine, ConditionClientNetAndNot) {
  auto p = compile(onePolicy("connect", "{ client.net: { in: [trusted, friends] } }"));
  ASSERT_NE(p, nullptr);
  for (const auto& [ip, hit] : std::vector<std::pair<std::string, bool>>{
           {"10.9.9.9", true}, {"172.20.0.1", true}, {"::ffff:10.0.0.1", true}, {"192.0.2.1", false}}) {
    SessionFacts f = facts("mx", ip);
    EXPECT_EQ(stage(*make(p, f), Stage::kConnect, f).action, hit ? Action::kReject : Action::kContinue) << ip;
  }
  p = compile(onePolicy("connect", "{ listener: mx, not: { client.net: { in: trusted } } }"));
  ASSERT_NE(p, nullptr);
  for (const auto& [ip, hit] :
       std::vector<std::pair<std::string, bool>>{{"10.9.9.9", false}, {"172.20.0.1", true}, {"192.0.2.1", true}}) {
    SessionFacts f = facts("mx", ip);
    EXPECT_EQ(stage(*make(p, f), Stage::kConnect, f).action, hit ? Action::kReject : Action::kContinue) << ip;
  }
}

TEST_F(PolicyEngine, ConditionTlsAuthenticatedUser) {
  auto p = compile(onePolicy("mail", "{ tls: false }"));
  ASSERT_NE(p, nullptr);
  SessionFacts f = facts("mx", nextIp());
  f.from = "a@b.example";
  EXPECT_EQ(stage(*make(p, f), Stage::kMail, f).action, Action::kReject);
  f.secured = true;
  EXPECT_EQ(stage(*make(p, f), Stage::kMail, f).action, Action::kContinue);

  p = compile(onePolicy("mail", "{ authenticated: true }"));
  ASSERT_NE(p, nullptr);
  f.authenticated = false;
  EXPECT_EQ(stage(*make(p, f), Stage::kMail, f).action, Action::kContinue);
  f.authenticated = true;
  EXPECT_EQ(stage(*make(p, f), Stage::kMail, f).action, Action::kReject);

  p = compile(onePolicy("auth", "{ user: [Mallory@Example.org, eve@example.org] }"));
  ASSERT_NE(p, nullptr);
  SessionFacts g = facts("imap", nextIp());
  g.user = "MALLORY@example.org";
  Verdict v = stage(*make(p, g), Stage::kAuth, g);
  EXPECT_EQ(v.action, Action::kReject);
  EXPECT_EQ(renderImap(v, Stage::kAuth, "a1").line, "a1 NO [CONTACTADMIN] Rejected by policy");
  EXPECT_EQ(renderSmtp(v, Stage::kAuth, kHost).line, "535 5.7.8 Rejected by policy");
  g.user = "alice@example.org";
  EXPECT_EQ(stage(*make(p, g), Stage::kAuth, g).action, Action::kContinue);
}

TEST_F(PolicyEngine, ConditionHeloSenderRcptRe2) {
  auto p = compile(onePolicy("helo", "{ helo: { re2: '^[^.]*$' } }"));
  ASSERT_NE(p, nullptr);
  SessionFacts f = facts("mx", nextIp());
  f.helo = "localhost";
  EXPECT_EQ(stage(*make(p, f), Stage::kHelo, f).action, Action::kReject);
  f.helo = "mail.example.com";
  EXPECT_EQ(stage(*make(p, f), Stage::kHelo, f).action, Action::kContinue);

  p = compile(onePolicy("mail", "{ sender: { re2: ['@spam\\.example$', '^$'] } }"));
  ASSERT_NE(p, nullptr);
  f.from = "x@spam.example";
  EXPECT_EQ(stage(*make(p, f), Stage::kMail, f).action, Action::kReject);
  f.from = "";  // the null sender is ""
  EXPECT_EQ(stage(*make(p, f), Stage::kMail, f).action, Action::kReject);
  f.from = "x@ham.example";
  EXPECT_EQ(stage(*make(p, f), Stage::kMail, f).action, Action::kContinue);
  f.from.reset();  // no MAIL yet: a sender condition cannot hold
  EXPECT_EQ(stage(*make(p, f), Stage::kMail, f).action, Action::kContinue);

  p = compile(onePolicy("rcpt", "{ rcpt: { re2: '(?i)^postmaster@' } }"));
  ASSERT_NE(p, nullptr);
  f.rcpt = "PostMaster@example.com";
  Verdict v = stage(*make(p, f), Stage::kRcpt, f);
  EXPECT_EQ(v.action, Action::kReject);
  EXPECT_EQ(renderSmtp(v, Stage::kRcpt, kHost).line, "550 5.7.1 Rejected by policy");
  f.rcpt = "user@example.com";
  EXPECT_EQ(stage(*make(p, f), Stage::kRcpt, f).action, Action::kContinue);
}

TEST_F(PolicyEngine, Re2SetWithManyPatterns) {
  std::string pats = "[";
  for (int i = 0; i < 200; i++) pats += std::string(i ? ", " : "") + "'^bad" + std::to_string(i) + "\\.example$'";
  pats += "]";
  auto p = compile(onePolicy("helo", "{ helo: { re2: " + pats + " } }"));
  ASSERT_NE(p, nullptr);
  SessionFacts f = facts("mx", nextIp());
  for (int i : {0, 57, 199}) {
    f.helo = "bad" + std::to_string(i) + ".example";
    EXPECT_EQ(stage(*make(p, f), Stage::kHelo, f).action, Action::kReject) << f.helo;
  }
  f.helo = "bad200.example";
  EXPECT_EQ(stage(*make(p, f), Stage::kHelo, f).action, Action::kContinue);
  f.helo = "xbad1.example";
  EXPECT_EQ(stage(*make(p, f), Stage::kHelo, f).action, Action::kContinue);
}

const char kMime[] =
    "From: a@example.com\r\n"
    "To: b@example.org\r\n"
    "Subject: =?UTF-8?B?SGVsbG8=?=\r\n"
    "X-Spam-Flag: YES\r\n"
    "MIME-Version: 1.0\r\n"
    "Content-Type: multipart/mixed; boundary=\"XX\"\r\n"
    "\r\n"
    "--XX\r\n"
    "Content-Type: text/plain\r\n"
    "\r\n"
    "hello\r\n"
    "--XX\r\n"
    "Content-Type: application/octet-stream; name=\"setup.EXE\"\r\n"
    "Content-Disposition: attachment; filename=\"setup.EXE\"\r\n"
    "Content-Transfer-Encoding: base64\r\n"
    "\r\n"
    "TVqQAAMAAAAEAAAA\r\n"
    "--XX--\r\n";

TEST_F(PolicyEngine, ConditionHeaderAndAttachmentAtData) {
  auto p = compile(onePolicy("data", "{ attachment.filename: { re2: '(?i)\\.(exe|scr|js)$' } }"));
  ASSERT_NE(p, nullptr);
  SessionFacts f = facts("mx", nextIp());
  f.message = std::make_shared<StringBody>(kMime);
  Verdict v = stage(*make(p, f), Stage::kData, f);
  EXPECT_EQ(v.action, Action::kReject);
  EXPECT_NE(v.reason.find("setup.EXE"), std::string::npos) << v.reason;
  EXPECT_EQ(renderSmtp(v, Stage::kData, kHost).line, "554 5.7.1 Rejected by policy");
  f.message = std::make_shared<StringBody>("From: a@example.com\r\nSubject: plain\r\n\r\nhi\r\n");
  EXPECT_EQ(stage(*make(p, f), Stage::kData, f).action, Action::kContinue);

  p = compile(onePolicy("data", "{ header: { re2: '^Subject: Hello$' } }"));  // decoded
  ASSERT_NE(p, nullptr);
  f.message = std::make_shared<StringBody>(kMime);
  EXPECT_EQ(stage(*make(p, f), Stage::kData, f).action, Action::kReject);
  f.message = std::make_shared<StringBody>("Subject: Goodbye\r\n\r\nhi\r\n");
  EXPECT_EQ(stage(*make(p, f), Stage::kData, f).action, Action::kContinue);
}

// A data-stage limit whose `when` looks at attachment names or header fields sees them.
TEST_F(PolicyEngine, DataLimitWithMessageConditions) {
  auto p = compile(
      "limits:\n"
      "  rules:\n"
      "    - { name: exe-bytes, when: { attachment.filename: { re2: '(?i)\\.exe$' } }, count: bytes,\n"
      "        key: [client.ip], rate: 100/1h }\n"
      "    - { name: bulk-bytes, when: { header: { re2: '^X-Bulk: ' } }, count: bytes, key: [client.ip],\n"
      "        rate: 10/1h, on_exceed: reject }\n");
  ASSERT_NE(p, nullptr);
  SessionFacts f = facts("mx", nextIp());
  f.message = std::make_shared<StringBody>("Subject: x\r\n\r\nx\r\n");
  EXPECT_EQ(stage(*make(p, f), Stage::kData, f).action, Action::kContinue);
  f.message = std::make_shared<StringBody>(kMime);  // larger than 100: never within
  Verdict v = stage(*make(p, f), Stage::kData, f);
  EXPECT_EQ(v.action, Action::kTempfail);
  EXPECT_NE(v.reason.find("exe-bytes"), std::string::npos) << v.reason;
  EXPECT_EQ(renderSmtp(v, Stage::kData, kHost).line, "450 4.7.1 Too much mail from you, try again later");
  f.message = std::make_shared<StringBody>("X-Bulk: yes\r\nSubject: x\r\n\r\nx\r\n");
  v = stage(*make(p, f), Stage::kData, f);
  EXPECT_EQ(v.action, Action::kReject);
  EXPECT_EQ(renderSmtp(v, Stage::kData, kHost).line, "554 5.7.1 Rejected by policy");
}

// --- policies: actions ---

TEST_F(PolicyEngine, AcceptSkipsLaterRulesOfTheStage) {
  auto p = compile(
      "limits: { rules: [] }\n"
      "policies:\n"
      "  - { name: acc-trusted, stage: connect, when: { client.net: { in: trusted } }, then: accept }\n"
      "  - { name: rej-all, stage: connect, then: reject }\n"
      "  - { name: rej-helo, stage: helo, then: tempfail }\n");
  ASSERT_NE(p, nullptr);
  SessionFacts t = facts("mx", "10.3.3.3");
  auto s = make(p, t);
  EXPECT_EQ(stage(*s, Stage::kConnect, t).action, Action::kContinue);
  Verdict v = stage(*s, Stage::kHelo, t);  // accept is for its stage only
  EXPECT_EQ(v.action, Action::kTempfail);
  EXPECT_EQ(renderSmtp(v, Stage::kHelo, kHost).line, "451 4.7.1 Try again later");
  SessionFacts o = facts("mx", nextIp());
  v = stage(*make(p, o), Stage::kConnect, o);
  EXPECT_EQ(v.action, Action::kReject);
  EXPECT_EQ(v.reason, "rule rej-all");
  EXPECT_EQ(renderSmtp(v, Stage::kConnect, kHost).line, "554 5.7.1 Rejected by policy");
  EXPECT_TRUE(renderSmtp(v, Stage::kConnect, kHost).close);
}

TEST_F(PolicyEngine, ShadowRulesDoNotAct) {
  auto p = compile(
      "limits: { rules: [] }\n"
      "policies:\n"
      "  - { name: sh-rej, stage: connect, then: reject, mode: shadow }\n"
      "  - { name: sh-tag, stage: data, then: tag, mode: shadow }\n");
  ASSERT_NE(p, nullptr);
  uint64_t before = 0;
  forEachRuleMetric([&](const RuleMetric& m) {
    if (m.kind == "rule" && m.name == "sh-rej") before = m.count.load();
  });
  SessionFacts f = facts("mx", nextIp());
  auto s = make(p, f);
  EXPECT_EQ(stage(*s, Stage::kConnect, f).action, Action::kContinue);
  f.message = std::make_shared<StringBody>("Subject: x\r\n\r\nx\r\n");
  EXPECT_EQ(stage(*s, Stage::kData, f).action, Action::kContinue);
  uint64_t after = 0;
  std::string outcome;
  forEachRuleMetric([&](const RuleMetric& m) {
    if (m.kind == "rule" && m.name == "sh-rej") {
      after = m.count.load();
      outcome = m.outcome;
    }
  });
  EXPECT_EQ(after, before + 1);  // counted
  EXPECT_EQ(outcome, "shadow");
}

TEST_F(PolicyEngine, TagAddsAHeader) {
  auto p = compile(
      "limits: { rules: [] }\n"
      "policies:\n"
      "  - { name: tag-default, stage: data, when: { listener: mx }, then: tag }\n"
      "  - { name: tag-own, stage: data, when: { listener: sub }, then: tag, header: 'X-Spam: yes' }\n");
  ASSERT_NE(p, nullptr);
  SessionFacts f = facts("mx", nextIp());
  f.message = std::make_shared<StringBody>("Subject: x\r\n\r\nx\r\n");
  Verdict v = stage(*make(p, f), Stage::kData, f);
  EXPECT_EQ(v.action, Action::kAddHeader);
  EXPECT_EQ(v.header, "X-Mailgate-Policy: tag-default");
  SessionFacts g = facts("sub", nextIp());
  g.message = f.message;
  v = stage(*make(p, g), Stage::kData, g);
  EXPECT_EQ(v.action, Action::kAddHeader);
  EXPECT_EQ(v.header, "X-Spam: yes");
}

TEST_F(PolicyEngine, DelayRule) {
  auto p = compile(
      "limits: { rules: [] }\n"
      "policies:\n"
      "  - { name: slow-helo, stage: helo, when: { helo: { re2: '^[^.]*$' } }, then: delay, delay: 10s }\n");
  ASSERT_NE(p, nullptr);
  SessionFacts f = facts("mx", nextIp());
  f.helo = "bare";
  Verdict v = stage(*make(p, f), Stage::kHelo, f);
  EXPECT_EQ(v.action, Action::kDelay);
  EXPECT_EQ(v.delay.count(), 10000);
}

// delay and tag apply and the later rules are still tried: a reject after them wins.
TEST_F(PolicyEngine, DelayAndTagDoNotStopLaterRules) {
  auto p = compile(
      "limits: { rules: [] }\n"
      "policies:\n"
      "  - { name: go-slow, stage: helo, then: delay, delay: 5s }\n"
      "  - { name: no-bare, stage: helo, when: { helo: { re2: '^[^.]*$' } }, then: reject }\n"
      "  - { name: mark, stage: data, then: tag, header: 'X-Mark: 1' }\n"
      "  - { name: no-exe, stage: data, when: { attachment.filename: { re2: '(?i)\\.exe$' } }, then: reject }\n");
  ASSERT_NE(p, nullptr);
  SessionFacts f = facts("mx", nextIp());
  f.helo = "bare";
  EXPECT_EQ(stage(*make(p, f), Stage::kHelo, f).action, Action::kReject);
  f.helo = "mail.example.com";
  Verdict v = stage(*make(p, f), Stage::kHelo, f);
  EXPECT_EQ(v.action, Action::kDelay);
  EXPECT_EQ(v.delay.count(), 5000);
  f.message = std::make_shared<StringBody>(kMime);
  v = stage(*make(p, f), Stage::kData, f);
  EXPECT_EQ(v.action, Action::kReject);
  EXPECT_NE(v.reason.find("no-exe"), std::string::npos) << v.reason;
  f.message = std::make_shared<StringBody>("Subject: x\r\n\r\nx\r\n");
  v = stage(*make(p, f), Stage::kData, f);
  EXPECT_EQ(v.action, Action::kAddHeader);
  EXPECT_EQ(v.header, "X-Mark: 1");
}

TEST_F(PolicyEngine, CustomReplyParsed) {
  auto p = compile(
      "limits: { rules: [] }\n"
      "policies:\n"
      "  - { name: cr, stage: mail, then: reject, reply: '553 5.7.26 Sender not allowed here' }\n"
      "  - { name: cr2, stage: rcpt, then: tempfail, reply: '451 4.7.28 Slow down' }\n");
  ASSERT_NE(p, nullptr);
  SessionFacts f = facts("mx", nextIp());
  f.from = "a@b.example";
  Verdict v = stage(*make(p, f), Stage::kMail, f);
  EXPECT_EQ(v.action, Action::kReject);
  EXPECT_EQ(v.code, 553);
  EXPECT_EQ(v.enhanced, "5.7.26");
  EXPECT_EQ(v.text, "Sender not allowed here");
  v.ref = "123abc";
  EXPECT_EQ(renderSmtp(v, Stage::kMail, kHost).line, "553 5.7.26 Sender not allowed here (ref 123abc)");
  f.rcpt = "x@y.example";
  v = stage(*make(p, f), Stage::kRcpt, f);
  EXPECT_EQ(renderSmtp(v, Stage::kRcpt, kHost).line, "451 4.7.28 Slow down");
}

// --- every limit reply, every protocol ---

TEST_F(PolicyEngine, LimitRepliesPerProtocol) {
  auto p = compile(
      "limits:\n"
      "  rules:\n"
      "    - { name: rr-conn, count: connections, rate: 1/1h, burst: 1 }\n"
      "    - { name: rr-af, count: auth_failures, rate: 1/1h, burst: 1 }\n"
      "    - { name: rr-msg, count: messages, rate: 1/1h, burst: 1 }\n"
      "    - { name: rr-rcpt, count: recipients, rate: 1/1h, burst: 1 }\n");
  ASSERT_NE(p, nullptr);
  struct Case {
    std::string listener;
    Stage stage;
    std::string expect;  // without the ref
  };
  const std::vector<Case> cases = {
      {"mx", Stage::kConnect, "421 4.7.0 gw.example.net Too many connections from your address, try again later"},
      {"sub", Stage::kAuth, "454 4.7.0 Try again later"},
      {"mx", Stage::kMail, "450 4.7.1 Too much mail from you, try again later"},
      {"mx", Stage::kRcpt, "452 4.5.3 Too many recipients, try again later"},
      {"imap", Stage::kConnect, "* BYE [UNAVAILABLE] Too many connections from your address"},
      {"imap", Stage::kAuth, "t1 NO [LIMIT] Limit exceeded"},
      {"pop", Stage::kConnect, "-ERR [SYS/TEMP] Too many connections from your address"},
      {"pop", Stage::kAuth, "-ERR [SYS/TEMP] Limit exceeded"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.listener + " " + std::string(stageName(c.stage)));
    SessionFacts f = facts(c.listener, nextIp());
    f.from = "a@b.example";
    f.rcpt = "c@d.example";
    Verdict v;
    for (int i = 0; i < 2; i++) {
      auto s = make(p, f);
      if (c.stage == Stage::kAuth) {
        v = event(*s, EventKind::kAuthFailure, f, 7 + i);
        v = stage(*s, Stage::kAuth, f);
      } else {
        v = stage(*s, c.stage, f);
      }
    }
    ASSERT_EQ(v.action, Action::kTempfail);
    for (const std::string ref : {"", "7f3a9c"}) {
      v.ref = ref;
      const std::string want = c.expect + (ref.empty() ? "" : " (ref " + ref + ")");
      if (c.listener == "imap")
        EXPECT_EQ(renderImap(v, c.stage, "t1").line, want);
      else if (c.listener == "pop")
        EXPECT_EQ(renderPop3(v, c.stage).line, want);
      else
        EXPECT_EQ(renderSmtp(v, c.stage, kHost).line, want);
    }
  }
}

TEST_F(PolicyEngine, LimitRejectRepliesPerProtocol) {
  auto p = compile(
      "limits:\n"
      "  rules:\n"
      "    - { name: rj-msg, count: messages, rate: 1/1h, burst: 1, on_exceed: reject }\n"
      "    - { name: rj-conn, count: connections, rate: 1/1h, burst: 1, on_exceed: reject }\n");
  ASSERT_NE(p, nullptr);
  SessionFacts f = facts("mx", nextIp());
  f.from = "a@b.example";
  auto s = make(p, f);
  EXPECT_EQ(stage(*s, Stage::kMail, f).action, Action::kContinue);
  Verdict v = stage(*s, Stage::kMail, f);
  ASSERT_EQ(v.action, Action::kReject);
  EXPECT_EQ(renderSmtp(v, Stage::kMail, kHost).line, "550 5.7.1 Rejected by policy");
  SessionFacts g = facts("imap", nextIp());
  make(p, g)->onStage(Stage::kConnect, g, Resumer{});
  v = stage(*make(p, g), Stage::kConnect, g);
  ASSERT_EQ(v.action, Action::kReject);
  EXPECT_EQ(renderImap(v, Stage::kConnect, "*").line, "* BYE [UNAVAILABLE] Too many connections from your address");
}

// A limit's own reply is for SMTP; IMAP and POP3 keep their response codes.
TEST_F(PolicyEngine, LimitCustomReplyKeepsImapAndPop3Codes) {
  auto p = compile(
      "limits:\n"
      "  rules:\n"
      "    - { name: cu-conn, count: connections, concurrency: 1,\n"
      "        on_exceed: { action: tempfail, reply: '421 4.7.0 Go away for now' } }\n"
      "    - { name: cu-af, count: auth_failures, rate: 1/1h, burst: 1,\n"
      "        on_exceed: { action: tempfail, reply: '454 4.7.0 Slow down' } }\n");
  ASSERT_NE(p, nullptr);
  {
    SessionFacts f = facts("mx", nextIp());
    auto a = make(p, f);
    ASSERT_EQ(stage(*a, Stage::kConnect, f).action, Action::kContinue);
    Verdict v = stage(*make(p, f), Stage::kConnect, f);
    EXPECT_EQ(renderSmtp(v, Stage::kConnect, kHost).line, "421 4.7.0 gw.example.net Go away for now");
  }
  {
    SessionFacts f = facts("pop", nextIp());
    auto a = make(p, f);
    ASSERT_EQ(stage(*a, Stage::kConnect, f).action, Action::kContinue);
    Verdict v = stage(*make(p, f), Stage::kConnect, f);
    EXPECT_EQ(v.response_code, "IN-USE");
    EXPECT_EQ(renderPop3(v, Stage::kConnect).line.rfind("-ERR [IN-USE] ", 0), 0u) << renderPop3(v, Stage::kConnect).line;
  }
  {
    SessionFacts f = facts("imap", nextIp());
    auto a = make(p, f);
    EXPECT_EQ(event(*a, EventKind::kAuthFailure, f, 1).action, Action::kContinue);
    Verdict v = event(*a, EventKind::kAuthFailure, f, 2);
    ASSERT_EQ(v.action, Action::kTempfail);
    EXPECT_EQ(v.response_code, "LIMIT");
    EXPECT_EQ(renderImap(v, Stage::kAuth, "a9").line.rfind("a9 NO [LIMIT] ", 0), 0u) << renderImap(v, Stage::kAuth, "a9").line;
  }
}

// --- dry run ---

TEST_F(PolicyEngine, DryRunChangesNothingAndTraces) {
  auto p = compile(
      "limits:\n"
      "  user_sessions: 1\n"
      "  rules:\n"
      "    - { name: dr-conn, count: connections, concurrency: 1, rate: 2/1h, burst: 2 }\n"
      "    - { name: dr-af, count: auth_failures, rate: 1/1h, burst: 1, on_exceed: ban }\n"
      "    - { name: dr-msg, count: messages, rate: 1/1h, burst: 1 }\n"
      "policies:\n"
      "  - { name: dr-rule, stage: helo, when: { helo: { re2: '^evil' } }, then: reject }\n");
  ASSERT_NE(p, nullptr);
  const std::string ip = nextIp();
  SessionFacts f = facts("mx", ip);
  f.helo = "evil.example";
  f.from = "a@b.example";
  Trace trace;
  for (int i = 0; i < 50; i++) {
    trace.clear();
    auto d = makeDryRunFilter(p, f, &trace);
    EXPECT_EQ(stage(*d, Stage::kConnect, f).action, Action::kContinue);
    EXPECT_EQ(stage(*d, Stage::kMail, f).action, Action::kContinue);
    EXPECT_EQ(event(*d, EventKind::kAuthFailure, f, 1).action, Action::kContinue);
    EXPECT_EQ(stage(*d, Stage::kHelo, f).action, Action::kReject);
  }
  EXPECT_FALSE(banned(ip));
  bool ban_line = false, limit_line = false, rule_line = false;
  for (const auto& t : trace) {
    if (t.kind == "ban" && !t.matched) ban_line = true;
    if (t.kind == "limit" && t.name == "dr-conn" && t.detail.find("0 of 1 concurrent") != std::string::npos)
      limit_line = true;
    if (t.kind == "rule" && t.name == "dr-rule" && t.matched) rule_line = true;
  }
  EXPECT_TRUE(ban_line);
  EXPECT_TRUE(limit_line);
  EXPECT_TRUE(rule_line);
  // The live filters see untouched counters: the whole burst is there.
  auto a = make(p, f);
  EXPECT_EQ(stage(*a, Stage::kConnect, f).action, Action::kContinue);
  EXPECT_EQ(stage(*a, Stage::kMail, f).action, Action::kContinue);
  EXPECT_EQ(event(*a, EventKind::kAuthFailure, f, 1).action, Action::kContinue);
  EXPECT_FALSE(banned(ip));
  // Over the auth-failure limit, a dry run says "ban" and bans nothing.
  for (int i = 0; i < 5; i++) {
    trace.clear();
    auto d = makeDryRunFilter(p, f, &trace);
    EXPECT_EQ(event(*d, EventKind::kAuthFailure, f, 2 + i).action, Action::kClose);
  }
  EXPECT_FALSE(banned(ip));
  EXPECT_EQ(event(*a, EventKind::kAuthFailure, f, 9).action, Action::kClose);  // the live one does
  EXPECT_TRUE(banned(ip));
}

// The per-user session limit in a dry run reads the count and holds nothing.
TEST_F(PolicyEngine, DryRunUserSessionsHoldsNothing) {
  auto p = compile("limits:\n  user_sessions: 1\n  rules: []\n");
  ASSERT_NE(p, nullptr);
  SessionFacts f = facts("imap", nextIp());
  f.user = "dry@example.org";
  for (int i = 0; i < 5; i++) {
    Trace trace;
    auto d = makeDryRunFilter(p, f, &trace);
    EXPECT_EQ(event(*d, EventKind::kAuthSuccess, f).action, Action::kContinue) << i;
  }
  auto live = make(p, f);
  EXPECT_EQ(event(*live, EventKind::kAuthSuccess, f).action, Action::kContinue);
  // Now the one place is taken: a dry run says so, and still takes nothing.
  Trace trace;
  EXPECT_EQ(event(*makeDryRunFilter(p, f, &trace), EventKind::kAuthSuccess, f).action, Action::kTempfail);
  live.reset();
  EXPECT_EQ(event(*make(p, f), EventKind::kAuthSuccess, f).action, Action::kContinue);
}

// --- GeoIP ---

constexpr const char* kWriter = R"PERL(
use strict;
use warnings;
use MaxMind::DB::Writer::Tree;
my ($out, $ipver, @pairs) = @ARGV;
my %types = (autonomous_system_number => 'uint32');
my $tree = MaxMind::DB::Writer::Tree->new(
  ip_version => $ipver, record_size => 24, database_type => 'mailgate-test', languages => ['en'],
  description => { en => 'mailgate test' }, remove_reserved_networks => 0,
  map_key_type_callback => sub { $types{$_[0]} // 'utf8_string' });
while (@pairs) {
  my ($net, $kv) = splice(@pairs, 0, 2);
  my %rec;
  for my $item (split /,/, $kv) {
    my ($k, $v) = split /=/, $item, 2;
    $rec{$k} = $v;
  }
  $tree->insert_network($net, \%rec);
}
open my $fh, '>:raw', $out or die "$out: $!";
$tree->write_tree($fh);
close $fh or die "$out: $!";
)PERL";

TEST_F(PolicyEngine, ConditionCountryAndAsn) {
  if (std::system("perl -MMaxMind::DB::Writer::Tree -e1 >/dev/null 2>&1") != 0)
    GTEST_SKIP() << "Perl's MaxMind::DB::Writer is missing (libmaxmind-db-writer-perl)";
  std::ofstream(dir_ / "make.pl") << kWriter;
  const std::string cmd = "perl " + (dir_ / "make.pl").string() + " " + (dir_ / "geo.mmdb").string() +
                          " 6 192.0.2.0/24 country_code=KP,autonomous_system_number=64500"
                          " 198.51.100.0/24 country_code=DE,autonomous_system_number=64501";
  ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
  auto p = compile(
      "  blocked: { countries: [kp] }\n"
      "geoip:\n"
      "  country: { mmdb: geo.mmdb, field: country_code }\n"
      "  asn: { mmdb: geo.mmdb }\n"
      "limits: { rules: [] }\n"
      "policies:\n"
      "  - { name: geo-cc, stage: connect, when: { listener: mx, country: { in: blocked } }, then: reject }\n"
      "  - { name: geo-asn, stage: connect, when: { listener: imap, asn: [64501, 1] }, then: tempfail }\n"
      "  - { name: geo-inline, stage: connect, when: { listener: pop, country: [DE] }, then: reject }\n");
  ASSERT_NE(p, nullptr);
  struct Case {
    std::string listener, ip;
    Action want;
  };
  for (const Case& c : std::vector<Case>{{"mx", "192.0.2.5", Action::kReject},
                                         {"mx", "198.51.100.5", Action::kContinue},
                                         {"imap", "198.51.100.5", Action::kTempfail},
                                         {"imap", "192.0.2.5", Action::kContinue},
                                         {"pop", "198.51.100.5", Action::kReject},
                                         {"pop", "203.0.113.5", Action::kContinue}}) {
    SessionFacts f = facts(c.listener, c.ip);
    EXPECT_EQ(stage(*make(p, f), Stage::kConnect, f).action, c.want) << c.listener << " " << c.ip;
  }
  SessionFacts f = facts("mx", "192.0.2.9");
  stage(*make(p, f), Stage::kConnect, f);
  EXPECT_EQ(f.country, "KP");
  EXPECT_EQ(f.asn, 64500u);
}

}  // namespace
}  // namespace mailgate::filters::policy
