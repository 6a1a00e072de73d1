// The policy sections of the configuration (lists, geoip, limits, policies): the
// DESIGN example, the built-in limits, the small syntaxes (rates, delays, replies,
// networks) and every check made at load with the line and column it is reported at.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <stdlib.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "conf/config.h"

namespace mailgate::conf {
namespace {

namespace fs = std::filesystem;
using std::chrono::milliseconds;
using ::testing::AllOf;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::StartsWith;

// An error at exactly LINE:COL whose message contains text.
::testing::Matcher<std::string> At(int line, int col, const std::string& text) {
  return AllOf(StartsWith(std::to_string(line) + ":" + std::to_string(col) + ": "), HasSubstr(text));
}

class PolicyConfigTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = (fs::temp_directory_path() / "mailgate-policy-XXXXXX").string();
    ASSERT_NE(mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
    write("users.passwd", "user@example.org:{PLAIN}secret\n");
    write("lists/partners.cidr", "# partners\n192.0.2.0/24\n");
    write("geo/country-v4.mmdb", "not read at load\n");
    write("geo/country-v6.mmdb", "not read at load\n");
    write("geo/asn.mmdb", "not read at load\n");
  }
  void TearDown() override { fs::remove_all(dir_); }

  void write(const std::string& rel, const std::string& content) {
    fs::create_directories((dir_ / rel).parent_path());
    std::ofstream(dir_ / rel) << content;
  }
  std::string path() const { return (dir_ / "mailgate.yaml").string(); }

  std::vector<std::string> errors(const std::string& yaml) {
    const LoadResult r = loadConfigText(yaml, path());
    std::vector<std::string> out;
    for (const auto& e : r.errors) {
      EXPECT_EQ(e.file, path());
      out.push_back(std::to_string(e.line) + ":" + std::to_string(e.column) + ": " + e.message);
    }
    EXPECT_EQ(r.config == nullptr, !out.empty());
    return out;
  }

  std::shared_ptr<const Config> ok(const std::string& yaml) {
    const LoadResult r = loadConfigText(yaml, path());
    for (const auto& e : r.errors) ADD_FAILURE() << e.format();
    return r.config;
  }

  fs::path dir_;
};

// Listeners mx (smtp), imap and imaps (imap); both GeoIP databases; lists trusted
// (networks) and kp (countries), last. 13 lines: tests append from line 14.
const std::string kBase =
    "directory: { file: { users: users.passwd } }\n"                       // 1
    "backends:\n"                                                          // 2
    "  - { name: b1, host: 127.0.0.1, ports: { imap: 143, smtp: 25 } }\n"  // 3
    "listeners:\n"                                                         // 4
    "  - { name: mx, protocol: smtp, listen: \"127.0.0.1:2525\" }\n"       // 5
    "  - { name: imap, protocol: imap, listen: \"127.0.0.1:1143\" }\n"     // 6
    "  - { name: imaps, protocol: imap, listen: \"127.0.0.1:1993\" }\n"    // 7
    "geoip:\n"                                                             // 8
    "  country: { mmdb: geo/country-v4.mmdb }\n"                           // 9
    "  asn: { mmdb: geo/asn.mmdb }\n"                                      // 10
    "lists:\n"                                                             // 11
    "  trusted: { cidrs: [10.0.0.0/8] }\n"                                 // 12
    "  kp: { countries: [KP] }\n";                                         // 13

// One policy at stage STAGE (line 15) with the given `when` (line 16) and then (line 17).
std::string policy(const std::string& stage, const std::string& when, const std::string& then = "reject") {
  std::string yaml = kBase + "policies:\n";          // 14
  yaml += "  - { name: p, stage: " + stage + ",\n";  // 15
  yaml += "      when: " + when + ",\n";             // 16
  yaml += "      then: " + then + " }\n";            // 17
  return yaml;
}

// The DESIGN document's example, with files in the temporary directory.
const char kDesign[] = R"(directory: { driver: postgres, postgres: { conninfo: "dbname=mail" } }
backends:
  - { name: b1, host: 127.0.0.1, ports: { imap: 143, smtp: 25 } }
listeners:
  - { name: mx, protocol: smtp, listen: "127.0.0.1:2525" }
  - { name: imap, protocol: imap, listen: "127.0.0.1:1143", append_limit: 50M }
  - { name: imaps, protocol: imap, listen: "127.0.0.1:1993" }
lists:
  trusted:    { cidrs: [10.0.0.0/8, "2001:db8::/32"] }
  partners:   { file: lists/partners.cidr }        # one CIDR a line, # comments; reloaded on SIGHUP
  blocked_cc: { countries: [kp] }
geoip:                                             # a corrupt file keeps the old one on reload
  country: { mmdb: [geo/country-v4.mmdb, geo/country-v6.mmdb], field: country_code }
  asn:     { mmdb: [geo/asn.mmdb], field: autonomous_system_number }
limits:
  defaults: { ipv4_prefix: 32, ipv6_prefix: 64, exempt: [trusted] }
  rules:
    - { name: conn-per-ip, when: { listener: [imap, imaps] }, count: connections, key: [client.net],
        concurrency: 20, rate: 60/1m, burst: 30, on_exceed: tempfail }
    - { name: auth-fail-ip, count: auth_failures, key: [client.net], rate: 10/10m,
        distinct_credentials: true, on_exceed: ban }
    - { name: submit-rcpts, when: { authenticated: true }, count: recipients, key: [user],
        rate: 500/1h, scope: cluster, on_exceed: tempfail }
    - { name: slow-down, count: auth_failures, key: client.ip, rate: 3/m,
        on_exceed: { action: delay, delay: 1s..4s } }
  bans: { ttl: 1h, increment: { factor: 4, max: 7d }, never: [trusted] }
  early_talker: { listeners: [mx], greet_wait: 6s, action: reject }
  line_timeout: 20s
  user_sessions: 5
policies:
  - name: mx-blocked-countries
    stage: connect
    when: { listener: mx, country: { in: blocked_cc }, not: { client.net: { in: partners } } }
    then: reject
    reply: "554 5.7.1 Not accepted from your network"
    mode: enforce
  - { name: exe, stage: data, when: { attachment.filename: { re2: '(?i)\.(exe|scr|js)$' } }, then: reject }
  - { name: mark, stage: data, when: { header: { re2: ['^Subject: .*offer', '^X-Spam: yes'] } }, then: tag,
      mode: shadow }
  - { name: slow-helo, stage: helo, when: { helo: { re2: '^localhost$' }, tls: false }, then: delay, delay: 10s }
)";

TEST_F(PolicyConfigTest, DesignExample) {
  auto c = ok(kDesign);
  ASSERT_NE(c, nullptr);
  const PolicyConfig& p = c->policy;
  EXPECT_EQ(c->listeners[1].append_limit, 50ull << 20);
  EXPECT_EQ(c->listeners[2].append_limit, 0u);

  ASSERT_EQ(p.lists.size(), 3u);
  EXPECT_EQ(p.lists[0].name, "trusted");
  EXPECT_THAT(p.lists[0].cidrs, ElementsAre("10.0.0.0/8", "2001:db8::/32"));
  EXPECT_EQ(p.lists[0].pos.line, 9);
  EXPECT_EQ(p.lists[0].pos.column, 3);
  EXPECT_EQ(p.lists[1].file, (dir_ / "lists/partners.cidr").string());
  EXPECT_TRUE(p.lists[1].cidrs.empty());
  EXPECT_THAT(p.lists[2].countries, ElementsAre("KP"));  // upper case
  EXPECT_EQ(p.findList("partners"), &p.lists[1]);

  EXPECT_THAT(p.geoip.country.mmdb,
              ElementsAre((dir_ / "geo/country-v4.mmdb").string(), (dir_ / "geo/country-v6.mmdb").string()));
  EXPECT_EQ(p.geoip.country.field, "country_code");
  EXPECT_THAT(p.geoip.asn.mmdb, ElementsAre((dir_ / "geo/asn.mmdb").string()));
  EXPECT_EQ(p.geoip.asn.field, "autonomous_system_number");

  const LimitsConfig& l = p.limits;
  EXPECT_TRUE(l.present);
  EXPECT_EQ(l.ipv4_prefix, 32);
  EXPECT_EQ(l.ipv6_prefix, 64);
  EXPECT_THAT(l.exempt, ElementsAre("trusted"));
  EXPECT_EQ(l.max_keys, 100000u);
  ASSERT_EQ(l.rules.size(), 4u);
  const auto& conn = l.rules[0];
  EXPECT_EQ(conn.name, "conn-per-ip");
  EXPECT_FALSE(conn.builtin);
  EXPECT_THAT(conn.when.listeners, ElementsAre("imap", "imaps"));
  EXPECT_EQ(conn.count, CountKind::kConnections);
  EXPECT_THAT(conn.key, ElementsAre(KeyPart::kClientNet));
  EXPECT_EQ(conn.concurrency, 20u);
  EXPECT_EQ(conn.rate, 60u);
  EXPECT_EQ(conn.per, milliseconds(60000));
  EXPECT_EQ(conn.burst, 30u);
  EXPECT_EQ(conn.on_exceed, LimitAction::kTempfail);
  EXPECT_FALSE(conn.cluster);
  EXPECT_EQ(conn.pos.line, 18);
  EXPECT_EQ(conn.pos.column, 7);
  const auto& fail = l.rules[1];
  EXPECT_EQ(fail.count, CountKind::kAuthFailures);
  EXPECT_EQ(fail.rate, 10u);
  EXPECT_EQ(fail.per, milliseconds(600000));
  EXPECT_EQ(fail.burst, 0u);
  EXPECT_TRUE(fail.distinct_credentials);
  EXPECT_EQ(fail.on_exceed, LimitAction::kBan);
  EXPECT_TRUE(fail.when.empty());
  const auto& rcpts = l.rules[2];
  EXPECT_EQ(rcpts.when.authenticated, std::optional<bool>(true));
  EXPECT_EQ(rcpts.count, CountKind::kRecipients);
  EXPECT_THAT(rcpts.key, ElementsAre(KeyPart::kUser));
  EXPECT_EQ(rcpts.per, milliseconds(3600000));
  EXPECT_TRUE(rcpts.cluster);
  const auto& slow = l.rules[3];
  EXPECT_THAT(slow.key, ElementsAre(KeyPart::kClientIp));
  EXPECT_EQ(slow.rate, 3u);
  EXPECT_EQ(slow.per, milliseconds(60000));
  EXPECT_EQ(slow.on_exceed, LimitAction::kDelay);
  EXPECT_EQ(slow.delay_min, milliseconds(1000));
  EXPECT_EQ(slow.delay_max, milliseconds(4000));

  EXPECT_EQ(l.bans.ttl, milliseconds(3600000));
  EXPECT_EQ(l.bans.factor, 4);
  EXPECT_EQ(l.bans.max, milliseconds(7 * 86400000LL));
  EXPECT_EQ(l.bans.forget, milliseconds(86400000));
  EXPECT_THAT(l.bans.never, ElementsAre("trusted"));
  EXPECT_THAT(l.early_talker.listeners, ElementsAre("mx"));
  EXPECT_EQ(l.early_talker.greet_wait, milliseconds(6000));
  EXPECT_EQ(l.early_talker.action, LimitAction::kReject);
  EXPECT_EQ(l.line_timeout, milliseconds(20000));
  EXPECT_EQ(l.max_user_sessions, 5u);

  ASSERT_EQ(p.policies.size(), 4u);
  const auto& mx = p.policies[0];
  EXPECT_EQ(mx.name, "mx-blocked-countries");
  EXPECT_EQ(mx.stage, "connect");
  EXPECT_THAT(mx.when.listeners, ElementsAre("mx"));
  EXPECT_THAT(mx.when.country_lists, ElementsAre("blocked_cc"));
  EXPECT_TRUE(mx.when.country_in.empty());
  ASSERT_NE(mx.when.negated, nullptr);
  EXPECT_THAT(mx.when.negated->client_net_in, ElementsAre("partners"));
  EXPECT_FALSE(mx.when.empty());
  EXPECT_FALSE(mx.when.negated->empty());
  EXPECT_EQ(mx.then, PolicyAction::kReject);
  EXPECT_EQ(mx.reply, "554 5.7.1 Not accepted from your network");
  EXPECT_FALSE(mx.shadow);
  EXPECT_EQ(mx.pos.line, 31);
  EXPECT_EQ(mx.pos.column, 5);
  EXPECT_EQ(mx.when.pos.line, 33);
  EXPECT_EQ(mx.when.pos.column, 11);
  const auto& exe = p.policies[1];
  EXPECT_EQ(exe.stage, "data");
  EXPECT_THAT(exe.when.attachment_re2, ElementsAre("(?i)\\.(exe|scr|js)$"));
  const auto& mark = p.policies[2];
  EXPECT_EQ(mark.then, PolicyAction::kTag);
  EXPECT_EQ(mark.header, "X-Mailgate-Policy: mark");  // the default
  EXPECT_TRUE(mark.shadow);
  EXPECT_THAT(mark.when.header_re2, ElementsAre("^Subject: .*offer", "^X-Spam: yes"));
  const auto& helo = p.policies[3];
  EXPECT_EQ(helo.then, PolicyAction::kDelay);
  EXPECT_EQ(helo.delay, milliseconds(10000));
  EXPECT_EQ(helo.when.tls, std::optional<bool>(false));
  EXPECT_THAT(helo.when.helo_re2, ElementsAre("^localhost$"));
}

TEST_F(PolicyConfigTest, BuiltInLimitsWhenAbsent) {
  for (const std::string& yaml : {kBase, kBase + "limits: {}\n", kBase + "limits: { line_timeout: 0 }\n"}) {
    auto c = ok(yaml);
    ASSERT_NE(c, nullptr);
    const LimitsConfig& l = c->policy.limits;
    ASSERT_EQ(l.rules.size(), 4u) << yaml;
    for (const auto& r : l.rules) {
      EXPECT_TRUE(r.builtin);
      EXPECT_TRUE(r.when.empty());
      EXPECT_EQ(r.pos.line, 0);
      EXPECT_FALSE(r.cluster);
    }
    const auto& conn = l.rules[0];
    EXPECT_EQ(conn.name, "default-conn-per-ip");
    EXPECT_EQ(conn.count, CountKind::kConnections);
    EXPECT_THAT(conn.key, ElementsAre(KeyPart::kClientNet, KeyPart::kListener));
    EXPECT_EQ(conn.concurrency, 50u);
    EXPECT_EQ(conn.rate, 0u);
    EXPECT_EQ(conn.on_exceed, LimitAction::kTempfail);
    const auto& ban = l.rules[1];
    EXPECT_EQ(ban.name, "default-auth-fail-ip");
    EXPECT_EQ(ban.count, CountKind::kAuthFailures);
    EXPECT_THAT(ban.key, ElementsAre(KeyPart::kClientNet));
    EXPECT_EQ(ban.rate, 10u);
    EXPECT_EQ(ban.per, milliseconds(600000));
    EXPECT_EQ(ban.burst, 10u);
    EXPECT_TRUE(ban.distinct_credentials);
    EXPECT_EQ(ban.on_exceed, LimitAction::kBan);
    const auto& delay = l.rules[2];
    EXPECT_EQ(delay.name, "default-auth-fail-delay");
    EXPECT_EQ(delay.count, CountKind::kAuthFailures);
    EXPECT_EQ(delay.rate, 3u);
    EXPECT_EQ(delay.per, milliseconds(60000));
    EXPECT_EQ(delay.burst, 3u);
    EXPECT_TRUE(delay.distinct_credentials);
    EXPECT_EQ(delay.on_exceed, LimitAction::kDelay);
    EXPECT_EQ(delay.delay_min, milliseconds(2000));
    EXPECT_EQ(delay.delay_max, milliseconds(15000));
    const auto& errs = l.rules[3];
    EXPECT_EQ(errs.name, "default-errors-ip");
    EXPECT_EQ(errs.count, CountKind::kErrors);
    EXPECT_EQ(errs.rate, 30u);
    EXPECT_EQ(errs.burst, 30u);
    EXPECT_EQ(errs.on_exceed, LimitAction::kTempfail);

    EXPECT_EQ(l.max_user_sessions, 10u);
    EXPECT_EQ(l.bans.ttl, milliseconds(3600000));
    EXPECT_EQ(l.bans.factor, 4);
    EXPECT_EQ(l.bans.max, milliseconds(7 * 86400000LL));
    EXPECT_EQ(l.bans.forget, milliseconds(86400000));
    EXPECT_EQ(l.early_talker.greet_wait, milliseconds(6000));
    EXPECT_TRUE(l.early_talker.listeners.empty());
  }
  auto absent = ok(kBase);
  ASSERT_NE(absent, nullptr);
  EXPECT_FALSE(absent->policy.limits.present);
  EXPECT_EQ(absent->policy.limits.line_timeout, milliseconds(20000));
  EXPECT_TRUE(absent->policy.policies.empty());
  auto off = ok(kBase + "limits: { line_timeout: 0, user_sessions: 0 }\n");
  ASSERT_NE(off, nullptr);
  EXPECT_TRUE(off->policy.limits.present);
  EXPECT_EQ(off->policy.limits.line_timeout, milliseconds(0));
  EXPECT_EQ(off->policy.limits.max_user_sessions, 0u);
  // An explicit empty list turns the built-in rules off.
  auto none = ok(kBase + "limits: { rules: [] }\n");
  ASSERT_NE(none, nullptr);
  EXPECT_TRUE(none->policy.limits.rules.empty());
}

TEST(PolicySyntax, Rates) {
  uint32_t n = 0;
  milliseconds per{};
  std::string why;
  ASSERT_TRUE(parseRate("60/1m", &n, &per, &why)) << why;
  EXPECT_EQ(n, 60u);
  EXPECT_EQ(per, milliseconds(60000));
  ASSERT_TRUE(parseRate("10/10m", &n, &per, &why));
  EXPECT_EQ(n, 10u);
  EXPECT_EQ(per, milliseconds(600000));
  ASSERT_TRUE(parseRate("500/1h", &n, &per, &why));
  EXPECT_EQ(per, milliseconds(3600000));
  ASSERT_TRUE(parseRate("100/s", &n, &per, &why));
  EXPECT_EQ(n, 100u);
  EXPECT_EQ(per, milliseconds(1000));
  ASSERT_TRUE(parseRate("5/250ms", &n, &per, &why));
  EXPECT_EQ(per, milliseconds(250));
  ASSERT_TRUE(parseRate("1/d", &n, &per, &why));
  EXPECT_EQ(per, milliseconds(86400000));
  for (const char* bad : {"", "60", "/1m", "0/1m", "-1/1m", "60/", "60/1", "60/0s", "60/1w", "60/31d",
                          "1e3/1m", " 60/1m", "60/1m ", "60//1m", "2000000000/1s"}) {
    why.clear();
    EXPECT_FALSE(parseRate(bad, &n, &per, &why)) << bad;
    EXPECT_FALSE(why.empty()) << bad;
  }
}

TEST(PolicySyntax, DelayRanges) {
  milliseconds lo{}, hi{};
  std::string why;
  ASSERT_TRUE(parseDelayRange("2s..15s", &lo, &hi, &why)) << why;
  EXPECT_EQ(lo, milliseconds(2000));
  EXPECT_EQ(hi, milliseconds(15000));
  ASSERT_TRUE(parseDelayRange("500ms..1m", &lo, &hi, &why));
  EXPECT_EQ(lo, milliseconds(500));
  EXPECT_EQ(hi, milliseconds(60000));
  ASSERT_TRUE(parseDelayRange("5s", &lo, &hi, &why));
  EXPECT_EQ(lo, milliseconds(5000));
  EXPECT_EQ(hi, milliseconds(5000));
  ASSERT_TRUE(parseDelayRange("0s..3s", &lo, &hi, &why));
  EXPECT_EQ(lo, milliseconds(0));
  for (const char* bad : {"", "..", "2s..", "..15s", "15s..2s", "2s...15s", "2s-15s", "0s", "0..0", "soon"}) {
    why.clear();
    EXPECT_FALSE(parseDelayRange(bad, &lo, &hi, &why)) << bad;
    EXPECT_FALSE(why.empty()) << bad;
  }
}

TEST(PolicySyntax, Replies) {
  std::string why;
  EXPECT_TRUE(checkPolicyReply("554 5.7.1 Not accepted from your network", '5', &why)) << why;
  EXPECT_TRUE(checkPolicyReply("451 4.7.1 Try again later", '4', &why)) << why;
  EXPECT_TRUE(checkPolicyReply("421 4.7.0 Too many connections", '4', &why)) << why;
  EXPECT_FALSE(checkPolicyReply("554 5.7.1 Refused", '4', &why));
  EXPECT_FALSE(checkPolicyReply("451 4.7.1 Later", '5', &why));
  EXPECT_FALSE(checkPolicyReply("451 5.7.1 Mixed classes", '4', &why));
  EXPECT_FALSE(checkPolicyReply("451 4.7.1", '4', &why));
  EXPECT_FALSE(checkPolicyReply("451 4.7.1 ", '4', &why));
  EXPECT_FALSE(checkPolicyReply("451 Later", '4', &why));
  EXPECT_FALSE(checkPolicyReply("451 4.7 Later", '4', &why));
  EXPECT_FALSE(checkPolicyReply("4511 4.7.1 Later", '4', &why));
  EXPECT_FALSE(checkPolicyReply("461 4.7.1 Later", '4', &why));
  EXPECT_FALSE(checkPolicyReply("451 4.7.1 Later\r\n250 OK", '4', &why));
  EXPECT_THAT(why, HasSubstr("control characters"));
  EXPECT_FALSE(checkPolicyReply("451 4.7.1 " + std::string(250, 'x'), '4', &why));
  EXPECT_THAT(why, HasSubstr("256"));
  EXPECT_TRUE(checkPolicyReply("451 4.7.1 " + std::string(246, 'x'), '4', &why)) << why;
}

TEST(PolicySyntax, Networks) {
  std::string why;
  for (const char* good : {"10.0.0.0/8", "192.0.2.1", "192.0.2.1/32", "0.0.0.0/0", "2001:db8::/32", "::1",
                           "::/0", "::ffff:192.0.2.0/120", "10.1.2.3/8"})
    EXPECT_TRUE(checkCidr(good, &why)) << good << ": " << why;
  for (const char* bad : {"", "10.0.0.0/33", "2001:db8::/129", "10.0.0/8", "10.0.0.0/", "10.0.0.0/-1",
                          "example.org", "10.0.0.0/8/8", "::ffff:192.0.2.0/64", " 10.0.0.0/8"})
    EXPECT_FALSE(checkCidr(bad, &why)) << bad;
}

TEST(PolicySyntax, MatchEmpty) {
  Match m;
  EXPECT_TRUE(m.empty());
  m.tls = false;
  EXPECT_FALSE(m.empty());
  Match n;
  n.negated = std::make_shared<Match>();
  EXPECT_FALSE(n.empty());
  Match r;
  r.attachment_re2.push_back("x");
  EXPECT_FALSE(r.empty());
}

TEST_F(PolicyConfigTest, ListErrors) {
  EXPECT_THAT(
      errors(kBase + "  a: { cidrs: [10.0.0.0/33, \"2001:db8::/32\", 10.0.0] }\n"  // 14
                     "  b: { cidrs: [10.0.0.0/8], countries: [KP] }\n"             // 15
                     "  c: { file: lists/missing.cidr }\n"                         // 16
                     "  d: { countries: [KP, KOR, \"1A\"] }\n"                     // 17
                     "  e: {}\n"                                                   // 18
                     "  f: { cidr: [10.0.0.0/8] }\n"                               // 19
                     "  trusted: { cidrs: [192.0.2.0/24] }\n"                      // 20
                     "  \"bad name\": { cidrs: [] }\n"),                           // 21
      ElementsAre(
          At(14, 16, "lists.a.cidrs[0]: \"10.0.0.0/33\": the prefix length must be a number from 0 to 32"),
          At(14, 46, "lists.a.cidrs[2]: \"10.0.0\": not an IPv4 or IPv6 address"),
          At(15, 8, "lists.b: a list holds networks (cidrs, file) or countries, not both"),
          At(16, 14,
             "lists.c.file: cannot read " + (dir_ / "lists/missing.cidr").string() +
                 ": No such file or directory"),
          At(17, 24, "lists.d.countries[1]: \"KOR\" is not a two-letter country code"),
          At(17, 29, "lists.d.countries[2]: \"1A\" is not a two-letter country code"),
          At(18, 3, "lists.e: needs cidrs and/or file (a network list), or countries"),
          At(19, 8, "unknown key \"cidr\" in lists.f (did you mean \"cidrs\"?)"),
          At(20, 3, "lists.trusted: duplicate list name (first defined at line 12)"),
          At(21, 3, "lists: \"bad name\" is not a valid list name")));
}

TEST_F(PolicyConfigTest, GeoipDefaultsAndErrors) {
  auto c = ok(kBase);
  ASSERT_NE(c, nullptr);
  EXPECT_EQ(c->policy.geoip.country.field, "country.iso_code");
  EXPECT_EQ(c->policy.geoip.asn.field, "autonomous_system_number");
  EXPECT_THAT(c->policy.geoip.country.mmdb, ElementsAre((dir_ / "geo/country-v4.mmdb").string()));
  EXPECT_EQ(c->policy.geoip.country.pos.line, 9);

  const std::string head = kBase.substr(0, kBase.find("geoip:\n"));  // lines 1-7
  EXPECT_THAT(
      errors(head + "geoip:\n"                                                                      // 8
                    "  country: { mmdb: [geo/country-v4.mmdb, geo/nope.mmdb], field: \"a..b\" }\n"  // 9
                    "  asn: { field: asn }\n"                                                       // 10
                    "  city: { mmdb: geo/asn.mmdb }\n"),                                            // 11
      ElementsAre(At(9, 42, "geoip.country.mmdb[1]: cannot read " + (dir_ / "geo/nope.mmdb").string()),
                  At(9, 65, "geoip.country.field: \"a..b\" is not a record path"),
                  At(10, 8, "geoip.asn: missing required key \"mmdb\""),
                  At(11, 3, "unknown key \"city\" in geoip")));
  // A country or ASN condition needs its database.
  EXPECT_THAT(
      errors(head + "policies:\n"  // 8
                    "  - { name: p, stage: connect, when: { country: [KP], asn: 64500 }, then: reject }\n"),
      ElementsAre(At(9, 40, "policies[0].when.country: needs a country database (geoip.country)"),
                  At(9, 55, "policies[0].when.asn: needs an AS number database (geoip.asn)")));
}

TEST_F(PolicyConfigTest, LimitErrors) {
  EXPECT_THAT(
      errors(kBase + "limits:\n"                                                                        // 14
                     "  defaults: { ipv4_prefix: 33, ipv6_prefix: 64, exempt: [trusted, nope, kp] }\n"  // 15
                     "  rules:\n"                                                                       // 16
                     "    - { name: a, count: connections, key: [client.net, user], rate: 10/1m }\n"    // 17
                     "    - { name: a, count: messages, concurrency: 5, rate: 10/1h }\n"                // 18
                     "    - { name: c, count: visits, rate: 10/1m }\n"                                  // 19
                     "    - { name: d, count: auth_failures, rate: 10 }\n"                              // 20
                     "    - { name: e, count: errors, key: [sender.domain], rate: 1/s }\n"              // 21
                     "    - { name: f, count: connections }\n"                                          // 22
                     "    - { name: g, count: recipients, key: rcpt.domain, rate: 5/m, distinct_credentials: "
                     "true }\n"                                                            // 23
                     "    - { name: h, count: connections, rate: 1/s, scope: cluster }\n"  // 24
                     "    - { name: i, count: messages, rate: 1/s, on_exceed: { action: delay, delay: "
                     "15s..2s } }\n"  // 25
                     "    - { name: j, count: messages, rate: 1/s, on_exceed: { action: tempfail, reply: "
                     "\"550 5.7.1 No\" } }\n"                                                            // 26
                     "    - { name: k, count: messages, rate: 1/s, on_exceed: punish }\n"                // 27
                     "    - { count: bytes, rate: 1/s }\n"                                               // 28
                     "  bans: { ttl: 1d, increment: { factor: 0.5, max: 1h }, never: [kp] }\n"           // 29
                     "  early_talker: { listeners: [mx, imap, nope], greet_wait: 0s, action: delay }\n"  // 30
                     "  line_timeout: forever\n"),                                                       // 31
      ElementsAre(
          At(15, 28, "limits.defaults.ipv4_prefix: expected a number from 0 to 32, got \"33\""),
          At(15, 67, "limits.defaults.exempt: unknown list \"nope\""),
          At(15, 73, "limits.defaults.exempt: list \"kp\" is a country list, not a network list"),
          At(17, 56, "limits.rules[0].key: user is not known at count connections (stage connect)"),
          At(18, 15, "limits.rules[1].name: duplicate rule name \"a\" (first defined at line 17)"),
          At(18, 35, "limits.rules[1].concurrency: only with count: connections"),
          At(19, 25,
             "limits.rules[2].count: expected one of connections, auth_failures, errors, messages, "
             "recipients, "
             "bytes, got \"visits\""),
          At(20, 46, "limits.rules[3].rate: \"10\": expected N/PERIOD"),
          At(21, 39, "limits.rules[4].key: sender.domain is not known at count errors (any stage)"),
          At(22, 7, "limits.rules[5]: needs a rate or a concurrency"),
          At(23, 66, "limits.rules[6].distinct_credentials: only with count: auth_failures"),
          At(24, 56,
             "limits.rules[7].scope: cluster counters are shared through PostgreSQL; it needs "
             "directory.driver postgres"),
          At(25, 81, "limits.rules[8].on_exceed.delay: \"15s..2s\": the range's minimum is greater"),
          At(26, 84, "limits.rules[9].on_exceed.reply: \"550 5.7.1 No\" expected \"4xx 4.X.Y text\""),
          At(27, 57,
             "limits.rules[10].on_exceed: expected one of tempfail, reject, delay, ban, got \"punish\""),
          At(28, 7, "limits.rules[11]: missing required key \"name\""),
          At(29, 31, "limits.bans: increment.max (3600s) is shorter than ttl (86400s)"),
          At(29, 41, "limits.bans.increment.factor: expected a number from 1 to 100, got \"0.5\""),
          At(29, 65, "limits.bans.never: list \"kp\" is a country list"),
          At(30, 35, "limits.early_talker.listeners: listener \"imap\" is an imap listener"),
          At(30, 41, "limits.early_talker.listeners: unknown listener \"nope\""),
          At(30, 60, "limits.early_talker.greet_wait: must be greater than 0"),
          At(30, 72, "limits.early_talker.action: expected one of reject, tempfail, ban, got \"delay\""),
          At(31, 17, "limits.line_timeout: invalid duration \"forever\"")));
}

TEST_F(PolicyConfigTest, UnknownList) {
  EXPECT_THAT(errors(policy("connect", "{ client.net: { in: [trusted, friends] } }")),
              ElementsAre(At(16, 43, "policies[0].when.client.net.in: unknown list \"friends\"")));
  EXPECT_THAT(errors(policy("connect", "{ client.net: { in: kp } }")),
              ElementsAre(At(16, 33,
                             "policies[0].when.client.net.in: list \"kp\" is a country list, not a network "
                             "list")));
  EXPECT_THAT(errors(policy("connect", "{ country: { in: trusted } }")),
              ElementsAre(At(16, 30,
                             "policies[0].when.country.in: list \"trusted\" is a network list, not a country "
                             "list")));
  EXPECT_THAT(errors(policy("connect", "{ not: { client.net: { in: nope } } }")),
              ElementsAre(At(16, 40, "policies[0].when.not.client.net.in: unknown list \"nope\"")));
}

TEST_F(PolicyConfigTest, ConditionAtTheWrongStage) {
  EXPECT_THAT(
      errors(policy("connect", "{ tls: true, authenticated: true, user: bob }")),
      ElementsAre(At(16, 15,
                     "policies[0].when.tls: tls is not known at stage connect (it is, from stage "
                     "helo on"),
                  At(16, 26, "policies[0].when.authenticated: authenticated is not known at stage connect"),
                  At(16, 47,
                     "policies[0].when.user: user is not known at stage connect (it is, from stage "
                     "auth on)")));
  EXPECT_THAT(errors(policy("helo", "{ sender: { re2: x }, rcpt: { re2: y } }")),
              ElementsAre(At(16, 15,
                             "policies[0].when.sender: sender is not known at stage helo (it is, at stages "
                             "mail, rcpt and data)"),
                          At(16, 35, "policies[0].when.rcpt: rcpt is not known at stage helo")));
  EXPECT_THAT(
      errors(policy("rcpt", "{ header: { re2: x }, not: { attachment.filename: { re2: y } } }")),
      ElementsAre(At(16, 15,
                     "policies[0].when.header: header is not known at stage rcpt (it is, at stage "
                     "data only)"),
                  At(16, 42, "policies[0].when.not.attachment.filename: attachment.filename is not known")));
  EXPECT_THAT(errors(policy("connect", "{ helo: { re2: x } }")),
              ElementsAre(At(16, 15, "policies[0].when.helo: helo is not known at stage connect")));
  // Stages after helo exist on SMTP listeners only.
  EXPECT_THAT(errors(policy("mail", "{ listener: [mx, imap], protocol: [smtp, pop3] }")),
              ElementsAre(At(16, 30,
                             "policies[0].when.listener: listener \"imap\" is an imap listener; stage mail "
                             "exists on smtp and submission listeners only"),
                          At(16, 54,
                             "policies[0].when.protocol: stage mail exists on smtp and submission listeners "
                             "only, not pop3")));
  EXPECT_THAT(errors(policy("auth", "{ listener: imap, helo: { re2: x } }")),
              ElementsAre(At(16, 25, "listener \"imap\" is an imap listener")));
  // At auth, IMAP is fine; `not` may name any listener.
  EXPECT_NE(ok(policy("auth", "{ listener: imap, user: [Bob@Example.org], authenticated: false }")), nullptr);
  EXPECT_NE(ok(policy("mail", "{ not: { listener: imap }, sender: { re2: '@example\\.org$' } }")), nullptr);
  // A limit's `when` is checked at the stage of its count.
  EXPECT_THAT(
      errors(kBase +
             "limits:\n"                                                                           // 14
             "  rules:\n"                                                                          // 15
             "    - { name: a, count: connections, rate: 1/s, when: { tls: true } }\n"             // 16
             "    - { name: b, count: errors, rate: 1/s, when: { rcpt: { re2: x }, user: u } }\n"  // 17
             "    - { name: c, count: messages, rate: 1/s, when: { listener: imap } }\n"),         // 18
      ElementsAre(At(16, 57,
                     "limits.rules[0].when.tls: tls is not known at count connections (stage "
                     "connect)"),
                  At(17, 52, "limits.rules[1].when.rcpt: rcpt is not known at count errors (any stage)"),
                  At(18, 64, "limits.rules[2].when.listener: listener \"imap\" is an imap listener")));
}

TEST_F(PolicyConfigTest, ReplyMustFitItsAction) {
  const auto with = [&](const std::string& then, const std::string& extra) {
    std::string yaml = kBase + "policies:\n";                     // 14
    yaml += "  - { name: p, stage: data, then: " + then + ",\n";  // 15
    yaml += "      " + extra + " }\n";                            // 16
    return yaml;
  };
  EXPECT_NE(ok(with("tempfail", "reply: \"451 4.7.1 Try later\"")), nullptr);
  EXPECT_THAT(errors(with("tempfail", "reply: \"554 5.7.1 No\"")),
              ElementsAre(At(16, 14, "policies[0].reply: \"554 5.7.1 No\" expected \"4xx 4.X.Y text\"")));
  EXPECT_THAT(errors(with("reject", "reply: \"451 4.7.1 Later\"")),
              ElementsAre(At(16, 14, "policies[0].reply: \"451 4.7.1 Later\" expected \"5xx 5.X.Y text\"")));
  EXPECT_THAT(errors(with("reject", "reply: \"550 No\"")),
              ElementsAre(At(16, 14, "an enhanced status code 5.X.Y")));
  EXPECT_THAT(errors(with("reject", "reply: \"550 5.7.1 a\\tb\"")),
              ElementsAre(At(16, 14, "control characters")));
  EXPECT_THAT(errors(with("accept", "reply: \"250 2.0.0 OK\"")),
              ElementsAre(At(16, 7, "policies[0].reply: then: accept sends no reply of its own")));
  EXPECT_THAT(errors(with("tag", "reply: \"550 5.7.1 No\"")),
              ElementsAre(At(16, 7, "policies[0].reply: then: tag sends no reply of its own")));
  EXPECT_THAT(errors(with("delay", "delay: 2s, reply: \"451 4.7.1 Wait\"")),
              ElementsAre(At(16, 18, "policies[0].reply: then: delay sends no reply")));
}

TEST_F(PolicyConfigTest, PolicyErrors) {
  EXPECT_THAT(
      errors(kBase + "policies:\n"                                                                // 14
                     "  - { name: a, stage: greet, then: reject }\n"                              // 15
                     "  - { name: a, stage: connect, then: quarantine }\n"                        // 16
                     "  - { name: c, stage: rcpt, then: tag }\n"                                  // 17
                     "  - { name: d, stage: data, then: delay }\n"                                // 18
                     "  - { name: e, stage: data, then: reject, delay: 5s, header: \"X: y\" }\n"  // 19
                     "  - { name: f, stage: data, then: tag, header: \"X-Bad\", mode: loud }\n"   // 20
                     "  - { stage: data, when: { colour: red }, then: accept }\n"                 // 21
                     "  - { name: h, stage: data, when: { not: { not: { tls: maybe } } } }\n"     // 22
                     "  - just a string\n"),                                                      // 23
      ElementsAre(
          At(15, 23,
             "policies[0].stage: expected one of connect, helo, auth, mail, rcpt, data, got \"greet\""),
          At(16, 13, "policies[1].name: duplicate policy name \"a\" (first defined at line 15)"),
          At(16, 38, "policies[1].then: quarantine holds a message, so only at stage data"),
          At(17, 35, "policies[2].then: tag adds a header field, so only at stage data"),
          At(18, 35, "policies[3].then: delay needs a delay"),
          At(19, 43, "policies[4].delay: only with then: delay"),
          At(19, 54, "policies[4].header: only with then: tag"),
          At(20, 48, "policies[5].header: expected a header field \"Name: value\""),
          At(20, 63, "policies[5].mode: expected one of enforce, shadow, got \"loud\""),
          At(21, 5, "policies[6]: missing required key \"name\""),
          At(21, 28, "unknown key \"colour\" in policies[6].when"),
          At(22, 5, "policies[7]: missing required key \"then\""),
          At(22, 56, "policies[7].when.not.not.tls: expected true or false, got \"maybe\""),
          At(23, 5, "policies[8]: expected a map, got \"just a string\"")));
  EXPECT_THAT(errors(kBase + "policies: { a: 1 }\n"),
              ElementsAre(At(14, 11, "policies: expected a list, got a map")));
  auto c = ok(kBase + "policies:\n  - { name: t, stage: data, then: tag, header: \"X-Flag: 1\" }\n");
  ASSERT_NE(c, nullptr);
  EXPECT_EQ(c->policy.policies[0].header, "X-Flag: 1");
}

TEST_F(PolicyConfigTest, BadRe2) {
  EXPECT_THAT(errors(policy("mail", "{ sender: { re2: ['ok$', '(unclosed'] } }")),
              ElementsAre(At(16, 38,
                             "policies[0].when.sender.re2: invalid pattern \"(unclosed\": missing ): "
                             "(unclosed")));
  EXPECT_THAT(errors(policy("data", "{ header: { re2: 'a{2,1}' }, rcpt: { regex: x } }")),
              ElementsAre(At(16, 30,
                             "policies[0].when.header.re2: invalid pattern \"a{2,1}\": invalid repetition "
                             "size: {2,1}"),
                          At(16, 50, "unknown key \"regex\" in policies[0].when.rcpt")));
  // Perl's lookaround is not RE2.
  EXPECT_THAT(errors(policy("data", "{ attachment.filename: { re2: '(?<!x)\\.exe$' } }")),
              ElementsAre(At(16, 43, "invalid pattern \"(?<!x)\\x5c.exe$\": invalid perl operator: (?<")));
}

TEST_F(PolicyConfigTest, AppendLimit) {
  auto c = ok(kBase.substr(0, kBase.find("geoip:\n")) +
              "  - { name: imap2, protocol: imap, listen: \"127.0.0.1:1144\", append_limit: 25M }\n");
  ASSERT_NE(c, nullptr);
  EXPECT_EQ(c->listeners[3].append_limit, 25ull << 20);
  EXPECT_EQ(c->listeners[0].append_limit, 0u);
  EXPECT_THAT(
      errors(kBase.substr(0, kBase.find("geoip:\n")) +
             "  - { name: mx2, protocol: smtp, listen: \"127.0.0.1:2526\", append_limit: 25M }\n"    // 8
             "  - { name: i3, protocol: imap, listen: \"127.0.0.1:1145\", append_limit: lots }\n"),  // 9
      ElementsAre(At(8, 74, "listeners[3].append_limit: only an imap listener receives APPEND"),
                  At(9, 73, "listeners[4].append_limit: invalid size \"lots\"")));
}

}  // namespace
}  // namespace mailgate::conf
