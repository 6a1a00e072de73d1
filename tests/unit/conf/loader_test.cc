// The YAML loader: the DESIGN example, defaults, and every class of error with the
// exact line and column it is reported at.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/stat.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "conf/config.h"

namespace mailgate::conf {
namespace {

namespace fs = std::filesystem;
using ::testing::AllOf;
using ::testing::Contains;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::StartsWith;

std::string readFile(const fs::path& p) {
  std::ifstream in(p);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// An error at exactly LINE:COL whose message contains text.
::testing::Matcher<std::string> At(int line, int col, const std::string& text) {
  return AllOf(StartsWith(std::to_string(line) + ":" + std::to_string(col) + ": "), HasSubstr(text));
}

class LoaderTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = (fs::temp_directory_path() / "mailgate-conf-XXXXXX").string();
    ASSERT_NE(mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
    write("certs/example.org.pem", "cert\n");
    write("certs/example.org.key", "key\n");
    write("certs/ca.pem", "ca\n");
    write("users.passwd", "user@example.org:{PLAIN}secret\n");
  }
  void TearDown() override { fs::remove_all(dir_); }

  void write(const std::string& rel, const std::string& content) {
    fs::create_directories((dir_ / rel).parent_path());
    std::ofstream(dir_ / rel) << content;
  }
  std::string path() const { return (dir_ / "mailgate.yaml").string(); }
  LoadResult load(const std::string& yaml) { return loadConfigText(yaml, path()); }

  // The errors as "LINE:COL: message", after checking their file name and that no
  // config came back.
  std::vector<std::string> errors(const std::string& yaml) {
    const LoadResult r = load(yaml);
    std::vector<std::string> out;
    for (const auto& e : r.errors) {
      EXPECT_EQ(e.file, path());
      out.push_back(std::to_string(e.line) + ":" + std::to_string(e.column) + ": " + e.message);
    }
    EXPECT_EQ(r.config == nullptr, !out.empty());
    return out;
  }

  std::shared_ptr<const Config> ok(const std::string& yaml) {
    const LoadResult r = load(yaml);
    for (const auto& e : r.errors) ADD_FAILURE() << e.format();
    return r.config;
  }

  fs::path dir_;
};

// The smallest valid configuration; tests append to it (it is 5 lines long).
const std::string kBase =
    "directory: { file: { users: users.passwd } }\n"
    "backends:\n"
    "  - { name: b1, host: 127.0.0.1, ports: { imap: 143, pop3: 110 } }\n"
    "listeners:\n"
    "  - { name: l1, protocol: imap, listen: \"127.0.0.1:1143\" }\n";

TEST_F(LoaderTest, DesignExample) {
  const fs::path src = fs::path(__FILE__).parent_path() / "data" / "design.yaml";
  write("mailgate.yaml", readFile(src));
  const LoadResult r = loadConfigFile(path());
  for (const auto& e : r.errors) ADD_FAILURE() << e.format();
  ASSERT_NE(r.config, nullptr);
  const Config& c = *r.config;
  EXPECT_EQ(c.path, path());
  EXPECT_EQ(c.server.threads, 0u);
  EXPECT_EQ(c.server.shutdown_grace, Duration(30000));
  EXPECT_EQ(c.server.workers, 2u);
  EXPECT_EQ(c.log.level, LogLevel::kInfo);
  EXPECT_EQ(c.log.format, LogFormat::kJson);
  EXPECT_EQ(c.admin.listen, "127.0.0.1:9180");
  ASSERT_EQ(c.tls.certificates.size(), 1u);
  EXPECT_EQ(c.tls.certificates[0].cert, (dir_ / "certs/example.org.pem").string());
  EXPECT_EQ(c.tls.certificates[0].key, (dir_ / "certs/example.org.key").string());
  EXPECT_EQ(c.tls.min_version, "TLSv1.2");

  ASSERT_EQ(c.listeners.size(), 6u);
  const auto& mx = c.listeners[0];
  EXPECT_EQ(mx.name, "mx");
  EXPECT_EQ(mx.protocol, Protocol::kSmtp);
  EXPECT_THAT(mx.listen, ElementsAre("0.0.0.0:25"));
  EXPECT_EQ(mx.tls, TlsMode::kStarttls);
  EXPECT_EQ(mx.max_line, 512u);
  EXPECT_EQ(mx.line, 10);
  EXPECT_EQ(mx.column, 5);
  EXPECT_EQ(c.listeners[1].protocol, Protocol::kSubmission);
  EXPECT_EQ(c.listeners[2].tls, TlsMode::kImplicit);
  EXPECT_EQ(c.listeners[3].name, "imap");
  EXPECT_EQ(c.listeners[3].protocol, Protocol::kImap);
  EXPECT_EQ(c.listeners[3].max_line, 65536u);
  const auto& pop3s = c.listeners[5];
  EXPECT_EQ(pop3s.protocol, Protocol::kPop3);
  EXPECT_EQ(pop3s.max_line, 512u);
  EXPECT_FALSE(pop3s.proxy_protocol);
  EXPECT_FALSE(pop3s.allow_plaintext_auth);
  EXPECT_EQ(pop3s.preauth_timeout, Duration(60000));
  EXPECT_EQ(pop3s.max_literal, 8192u);

  EXPECT_EQ(c.directory.driver, "file");
  EXPECT_EQ(c.directory.file.users, (dir_ / "users.passwd").string());
  EXPECT_EQ(c.directory.file.failure_delay, Duration(2000));
  EXPECT_EQ(c.directory.postgres.conninfo,
            "host=db1,db2 dbname=mail user=mailgate target_session_attrs=read-write");
  EXPECT_EQ(c.directory.postgres.pool, 8u);
  EXPECT_EQ(c.directory.postgres.timeout, Duration(2000));
  EXPECT_EQ(c.directory.postgres.refresh, Duration(30000));
  EXPECT_EQ(c.directory.postgres.default_scheme, "SHA512-CRYPT");
  EXPECT_EQ(c.directory.postgres.queries.routes, "...");
  EXPECT_EQ(c.directory.http.url, "http://127.0.0.1:8185/auth");
  EXPECT_EQ(c.directory.http.timeout, Duration(2000));
  EXPECT_EQ(c.directory.cache.ttl, Duration(60000));
  EXPECT_EQ(c.directory.cache.negative_ttl, Duration(10000));

  ASSERT_EQ(c.backends.size(), 3u);
  const auto& s1 = c.backends[0];
  EXPECT_EQ(s1.name, "storage-01");
  EXPECT_EQ(s1.host, "127.0.0.1");
  EXPECT_EQ(s1.ports.imap, 143);
  EXPECT_EQ(s1.ports.pop3, 110);
  EXPECT_EQ(s1.ports.smtp, 25);
  EXPECT_EQ(s1.ports.lmtp, 24);
  EXPECT_EQ(s1.tls, TlsMode::kNone);
  EXPECT_EQ(s1.login, "replay");
  EXPECT_EQ(s1.deliver, "lmtp");
  EXPECT_EQ(s1.health.interval, Duration(5000));
  EXPECT_EQ(s1.health.timeout, Duration(2000));
  EXPECT_EQ(s1.connect_timeout, Duration(5000));
  EXPECT_TRUE(s1.tls_verify);
  const auto& s2 = c.backends[1];
  EXPECT_EQ(s2.host, "storage-02.example.org");
  EXPECT_EQ(s2.ports.smtp, 0);
  EXPECT_EQ(s2.tls, TlsMode::kImplicit);
  EXPECT_EQ(s2.tls_ca, (dir_ / "certs/ca.pem").string());
  EXPECT_EQ(s2.tls_name, "storage-02.internal");
  EXPECT_EQ(s2.connect_timeout, Duration(3000));
  const auto& o1 = c.backends[2];
  EXPECT_EQ(o1.host, "::1");
  EXPECT_FALSE(o1.tls_verify);
  EXPECT_EQ(o1.deliver, "smtp");
  EXPECT_EQ(c.findBackend("storage-02"), &s2);

  ASSERT_EQ(c.routing.static_routes.size(), 1u);
  EXPECT_EQ(c.routing.static_routes[0].domain, "example.org");
  EXPECT_EQ(c.routing.static_routes[0].primary, "storage-01");
  EXPECT_EQ(c.routing.static_routes[0].secondary, "storage-02");
  EXPECT_EQ(c.routing.submission_relay, "outbound-01");
}

TEST_F(LoaderTest, MinimalDefaults) {
  auto c = ok(kBase);
  ASSERT_NE(c, nullptr);
  EXPECT_EQ(c->server.threads, 0u);
  EXPECT_EQ(c->log.format, LogFormat::kJson);
  EXPECT_TRUE(c->admin.listen.empty());
  EXPECT_TRUE(c->tls.certificates.empty());
  ASSERT_EQ(c->listeners.size(), 1u);
  EXPECT_THAT(c->listeners[0].listen, ElementsAre("127.0.0.1:1143"));  // a single string is accepted
  EXPECT_EQ(c->listeners[0].tls, TlsMode::kNone);
  EXPECT_EQ(c->listeners[0].max_line, 65536u);
  EXPECT_EQ(c->listeners[0].max_bad_commands, 10u);
  EXPECT_EQ(c->listeners[0].max_auth_attempts, 3u);
  EXPECT_EQ(c->listeners[0].idle_timeout, Duration(3600000));
  EXPECT_TRUE(c->routing.static_routes.empty());
}

TEST_F(LoaderTest, AllListenerKeys) {
  auto c = ok(kBase +
              "  - name: p\n"
              "    protocol: pop3\n"
              "    listen: [\"*:1110\", \"[::1]:1110\"]\n"
              "    proxy_protocol: true\n"
              "    allow_plaintext_auth: true\n"
              "    preauth_timeout: 250ms\n"
              "    idle_timeout: 2h\n"
              "    max_line: 1K\n"
              "    max_literal: 50M\n"
              "    max_bad_commands: 5\n"
              "    max_auth_attempts: 1\n"
              "server: { threads: 4, workers: 3, shutdown_grace: 0 }\n"
              "log: { level: debug, format: text }\n");
  ASSERT_NE(c, nullptr);
  const auto& p = c->listeners[1];
  EXPECT_THAT(p.listen, ElementsAre("*:1110", "[::1]:1110"));
  EXPECT_TRUE(p.proxy_protocol);
  EXPECT_TRUE(p.allow_plaintext_auth);
  EXPECT_EQ(p.preauth_timeout, Duration(250));
  EXPECT_EQ(p.idle_timeout, Duration(7200000));
  EXPECT_EQ(p.max_line, 1024u);
  EXPECT_EQ(p.max_literal, 50u << 20);
  EXPECT_EQ(p.max_bad_commands, 5u);
  EXPECT_EQ(p.max_auth_attempts, 1u);
  EXPECT_EQ(p.line, 6);
  EXPECT_EQ(p.column, 5);
  EXPECT_EQ(c->server.threads, 4u);
  EXPECT_EQ(c->server.workers, 3u);
  EXPECT_EQ(c->server.shutdown_grace, Duration(0));
  EXPECT_EQ(c->log.level, LogLevel::kDebug);
  EXPECT_EQ(c->log.format, LogFormat::kText);
}

TEST_F(LoaderTest, SmtpMaxMessageSize) {
  auto c = ok(kBase + "  - { name: mx, protocol: smtp, listen: \"127.0.0.1:2525\", max_message_size: 10M }\n");
  ASSERT_NE(c, nullptr);
  EXPECT_EQ(c->listeners[0].max_message_size, 50u << 20);  // default
  EXPECT_EQ(c->listeners[1].max_message_size, 10u << 20);
  EXPECT_EQ(c->listeners[0].preauth_timeout, Duration(60000));   // imap default
  EXPECT_EQ(c->listeners[1].preauth_timeout, Duration(300000));  // smtp default: RFC 5321 §4.5.3.2
  EXPECT_THAT(errors(kBase + "  - { name: mx, protocol: smtp, listen: \"127.0.0.1:2525\", max_message_size: 2G }\n"),
              ElementsAre(::testing::HasSubstr("max_message_size: 2G is out of range")));
}

TEST_F(LoaderTest, SmtpMaxRecipients) {
  auto c = ok(kBase + "  - { name: mx, protocol: smtp, listen: \"127.0.0.1:2525\", max_recipients: 5 }\n");
  ASSERT_NE(c, nullptr);
  EXPECT_EQ(c->listeners[0].max_recipients, 100u);  // default
  EXPECT_EQ(c->listeners[1].max_recipients, 5u);
  EXPECT_THAT(errors(kBase + "  - { name: mx, protocol: smtp, listen: \"127.0.0.1:2525\", max_recipients: 0 }\n"),
              ElementsAre(::testing::HasSubstr("max_recipients: expected a number from 1")));
}

TEST_F(LoaderTest, SmtpMaxMessages) {
  auto c = ok(kBase + "  - { name: mx, protocol: smtp, listen: \"127.0.0.1:2525\", max_messages: 7 }\n");
  ASSERT_NE(c, nullptr);
  EXPECT_EQ(c->listeners[0].max_messages, 100u);  // default
  EXPECT_EQ(c->listeners[1].max_messages, 7u);
  EXPECT_THAT(errors(kBase + "  - { name: mx, protocol: smtp, listen: \"127.0.0.1:2525\", max_messages: x }\n"),
              ElementsAre(::testing::HasSubstr("max_messages: expected a number from 1")));
}

TEST_F(LoaderTest, SmtpGreetingDelay) {
  auto c = ok(kBase + "  - { name: mx, protocol: smtp, listen: \"127.0.0.1:2525\", greeting_delay: 3s }\n");
  ASSERT_NE(c, nullptr);
  EXPECT_EQ(c->listeners[0].greeting_delay, Duration(0));  // default
  EXPECT_EQ(c->listeners[1].greeting_delay, Duration(3000));
  EXPECT_THAT(errors(kBase + "  - { name: mx, protocol: smtp, listen: \"127.0.0.1:2525\", greeting_delay: soon }\n"),
              ElementsAre(::testing::HasSubstr("greeting_delay: invalid duration")));
}

TEST_F(LoaderTest, HostnameAndBanner) {
  auto c = ok("server: { hostname: mx1.example.org }\n" + kBase +
              "  - { name: mx, protocol: smtp, listen: \"127.0.0.1:2525\", banner: \"mx1 ready\" }\n");
  ASSERT_NE(c, nullptr);
  EXPECT_EQ(c->server.hostname, "mx1.example.org");
  EXPECT_EQ(c->listeners[0].banner, "");  // default: the protocol's own
  EXPECT_EQ(c->listeners[1].banner, "mx1 ready");
  EXPECT_THAT(errors("server: { hostname: \"mx 1\" }\n" + kBase),
              ElementsAre(::testing::HasSubstr("server.hostname: expected a host name")));
  EXPECT_THAT(errors(kBase + "  - { name: mx, protocol: smtp, listen: \"127.0.0.1:2525\", banner: \"a\\r\\nb\" }\n"),
              ElementsAre(::testing::HasSubstr("banner: must not contain control characters")));
}

TEST_F(LoaderTest, SubmissionSenderCheckAndRelay) {
  const std::string base =
      "directory: { file: { users: users.passwd } }\n"
      "backends:\n"
      "  - { name: b1, host: 127.0.0.1, ports: { imap: 143 } }\n"
      "  - { name: out, host: 127.0.0.1, ports: { smtp: 2525 } }\n"
      "listeners:\n"
      "  - { name: sub, protocol: submission, listen: \"127.0.0.1:1587\", sender_check: any }\n"
      "  - { name: sub2, protocol: submission, listen: \"127.0.0.1:2587\" }\n";
  auto c = ok(base + "routing: { submission_relay: out }\n");
  ASSERT_NE(c, nullptr);
  EXPECT_TRUE(c->listeners[0].sender_any);
  EXPECT_FALSE(c->listeners[1].sender_any);
  EXPECT_EQ(c->routing.submission_relay, "out");
  EXPECT_THAT(errors(base), ElementsAre(At(6, 5, "listener \"sub\": protocol submission needs routing.submission_relay"),
                                        At(7, 5, "listener \"sub2\": protocol submission needs routing.submission_relay")));
  EXPECT_THAT(errors(base + "routing: { submission_relay: b1 }\n"),
              ElementsAre(::testing::HasSubstr("routing.submission_relay: backend \"b1\" has no ports.smtp")));
  EXPECT_THAT(errors(kBase + "  - { name: mx, protocol: smtp, listen: \"127.0.0.1:2526\", sender_check: any }\n"),
              ElementsAre(::testing::HasSubstr("sender_check: only a submission listener checks senders")));
  EXPECT_THAT(errors(kBase + "  - { name: s3, protocol: submission, listen: \"127.0.0.1:3587\", sender_check: maybe }\n"),
              ::testing::Contains(::testing::HasSubstr("sender_check")));
}

TEST_F(LoaderTest, SmtpPostmaster) {
  auto c = ok(kBase + "  - { name: mx, protocol: smtp, listen: \"127.0.0.1:2525\", postmaster: pm@example.org }\n");
  ASSERT_NE(c, nullptr);
  EXPECT_EQ(c->listeners[0].postmaster, "");
  EXPECT_EQ(c->listeners[1].postmaster, "pm@example.org");
  EXPECT_THAT(errors(kBase + "  - { name: mx, protocol: smtp, listen: \"127.0.0.1:2525\", postmaster: pm }\n"),
              ElementsAre(::testing::HasSubstr("postmaster: expected an address local@domain, got \"pm\"")));
  EXPECT_THAT(errors(kBase + "  - { name: i, protocol: imap, listen: \"127.0.0.1:2143\", postmaster: a@b.c }\n"),
              ElementsAre(::testing::HasSubstr("only an smtp listener")));
}

TEST_F(LoaderTest, UnknownKeys) {
  EXPECT_THAT(errors(kBase + "sever: {}\n"                             // 6
                             "backends2: []\n"                         // 7
                             "log: { level: info, colour: true }\n"),  // 8
              ElementsAre(At(6, 1, "unknown key \"sever\" at the top level (did you mean \"server\"?)"),
                          At(7, 1, "unknown key \"backends2\" at the top level (did you mean \"backends\"?)"),
                          At(8, 21, "unknown key \"colour\" in log")));
}

TEST_F(LoaderTest, UnknownNestedKeys) {
  EXPECT_THAT(
      errors("directory: { file: { users: users.passwd, delay: 1s } }\n"
             "backends:\n"
             "  - name: b1\n"
             "    host: h\n"
             "    ports: { imap: 143, imaps: 993 }\n"
             "    health: { interval: 1s, timeuot: 1s }\n"
             "listeners:\n"
             "  - { name: l1, protocol: imap, lisen: \"*:143\" }\n"),
      ElementsAre(At(1, 43, "unknown key \"delay\" in directory.file"),
                  At(5, 25, "unknown key \"imaps\" in backends[0].ports (did you mean \"imap\"?)"),
                  At(6, 29, "unknown key \"timeuot\" in backends[0].health (did you mean \"timeout\"?)"),
                  At(8, 5, "listeners[0]: missing required key \"listen\""),
                  At(8, 33, "unknown key \"lisen\" in listeners[0] (did you mean \"listen\"?)")));
}

TEST_F(LoaderTest, DuplicateKey) {
  EXPECT_THAT(errors(kBase + "log: { level: info, level: debug }\n"),
              ElementsAre(At(6, 21, "duplicate key \"level\" in log")));
}

TEST_F(LoaderTest, WrongTypes) {
  EXPECT_THAT(
      errors("directory: { file: { users: users.passwd } }\n"    // 1
             "backends:\n"                                       // 2
             "  - name: b1\n"                                    // 3
             "    host: { a: b }\n"                              // 4
             "    ports: { imap: abc, pop3: 0, smtp: 65536 }\n"  // 5
             "    tls_verify: yes\n"                             // 6
             "listeners:\n"                                      // 7
             "  - name: [l1]\n"                                  // 8
             "    protocol: imap\n"                              // 9
             "    listen: { a: 1 }\n"                            // 10
             "    max_bad_commands: -1\n"                        // 11
             "server: []\n"                                      // 12
             "routing: { static: {} }\n"),                       // 13
      ElementsAre(
          At(4, 11, "backends[0].host: expected a string, got a map"),
          At(5, 20, "backends[0].ports.imap: expected a number from 1 to 65535, got \"abc\""),
          At(5, 31, "backends[0].ports.pop3: expected a number from 1 to 65535, got \"0\""),
          At(5, 40, "backends[0].ports.smtp: expected a number from 1 to 65535, got \"65536\""),
          At(6, 17, "backends[0].tls_verify: expected true or false, got \"yes\""),
          At(8, 11, "listeners[0].name: expected a string, got a list"),
          At(10, 13, "listeners[0].listen: expected an address or a list of addresses, got a map"),
          At(11, 23, "listeners[0].max_bad_commands: expected a number from 1 to 1000000, got \"-1\""),
          At(12, 9, "server: expected a map, got a list"),
          At(13, 20, "routing.static: expected a list, got a map")));
}

TEST_F(LoaderTest, NullValueIsATypeError) {
  EXPECT_THAT(
      errors(kBase + "log:\n  level:\n"),
      ElementsAre(At(7, 3, "log.level: expected one of debug, info, warn, error, got nothing (null)")));
}

TEST_F(LoaderTest, BadEnumValues) {
  EXPECT_THAT(
      errors(kBase + "  - { name: l2, protocol: imap4, listen: \"*:2\", tls: startls }\n"  // 6
                     "log: { level: verbose, format: xml }\n"                              // 7
                     "tls: { min_version: TLSv1.1 }\n"                                     // 8
                     "server: { threads: many }\n"),                                       // 9
      ElementsAre(
          At(6, 27, "listeners[1].protocol: expected one of imap, pop3, smtp, submission, got \"imap4\""),
          At(6, 54, "listeners[1].tls: expected one of none, starttls, implicit, got \"startls\""),
          At(7, 15, "log.level: expected one of debug, info, warn, error, got \"verbose\""),
          At(7, 32, "log.format: expected one of json, text, got \"xml\""),
          At(8, 21, "tls.min_version: expected one of TLSv1.2, TLSv1.3, got \"TLSv1.1\""),
          At(9, 20, "server.threads: expected auto or a number from 1 to 1024, got \"many\"")));
}

TEST_F(LoaderTest, MissingRequiredKeys) {
  EXPECT_THAT(errors("directory: { file: { users: users.passwd } }\n"  // 1
                     "backends:\n"                                     // 2
                     "  - { ports: { imap: 1 } }\n"                    // 3
                     "listeners:\n"                                    // 4
                     "  - { tls: none }\n"                             // 5
                     "routing:\n"                                      // 6
                     "  static:\n"                                     // 7
                     "    - secondary: b1\n"),                         // 8
              ElementsAre(At(3, 5, "backends[0]: missing required key \"name\""),
                          At(3, 5, "backends[0]: missing required key \"host\""),
                          At(5, 5, "listeners[0]: missing required key \"name\""),
                          At(5, 5, "listeners[0]: missing required key \"protocol\""),
                          At(5, 5, "listeners[0]: missing required key \"listen\""),
                          At(8, 7, "routing.static[0]: missing required key \"domain\""),
                          At(8, 7, "routing.static[0]: missing required key \"primary\""),
                          At(8, 18, "routing.static[0].secondary: unknown backend \"b1\" (no backends are defined)")));
}

TEST_F(LoaderTest, MissingSections) {
  EXPECT_THAT(errors("log: { level: info }\n"),
              ElementsAre(At(1, 1, "missing required section \"directory\""),
                          At(1, 1, "missing required section \"listeners\"")));
  EXPECT_THAT(errors("directory: { driver: file }\nlisteners: []\n"),
              ElementsAre(At(1, 12, "directory: driver file needs directory.file.users"),
                          At(2, 12, "listeners: at least one listener is required")));
}

TEST_F(LoaderTest, DuplicateNames) {
  EXPECT_THAT(errors(kBase + "  - { name: l1, protocol: pop3, listen: \"127.0.0.1:1110\" }\n"  // 6
                             "  - { name: l3, protocol: pop3, listen: \"127.0.0.1:1143\" }\n"  // 7
                             "backends:\n"),                                                   // 8
              // a repeated top-level key is reported once, and the second list is ignored
              ElementsAre(At(6, 13, "duplicate listener name \"l1\" (first defined at line 5)"),
                          At(7, 41, "address \"127.0.0.1:1143\" is already used by listener \"l1\""),
                          At(8, 1, "duplicate key \"backends\" at the top level")));
  EXPECT_THAT(errors(kBase + "  - { name: l2, protocol: pop3, listen: \"127.0.0.1:1110\" }\n"  // 6
                             "backends2: 1\n"),                                                // 7
              ElementsAre(At(7, 1, "unknown key \"backends2\"")));
}

TEST_F(LoaderTest, DuplicateBackendsAndRoutes) {
  EXPECT_THAT(
      errors("directory: { file: { users: users.passwd } }\n"                  // 1
             "listeners: [{ name: l1, protocol: imap, listen: \"*:143\" }]\n"  // 2
             "backends:\n"                                                     // 3
             "  - { name: b1, host: h1, ports: { imap: 143 } }\n"              // 4
             "  - { name: b1, host: h2, ports: { imap: 143 } }\n"              // 5
             "routing:\n"                                                      // 6
             "  static:\n"                                                     // 7
             "    - { domain: example.org, primary: b1 }\n"                    // 8
             "    - { domain: Example.ORG, primary: b1 }\n"                    // 9
             "    - { domain: \"*\", primary: b9, secondary: b1 }\n"           // 10
             "    - { domain: a.org, primary: b1, secondary: b1 }\n"           // 11
             "  submission_relay: out-1\n"),                                   // 12
      ElementsAre(
          At(5, 13, "backends[1].name: duplicate backend name \"b1\" (first defined at line 4)"),
          At(9, 17, "routing.static[1].domain: duplicate route for \"example.org\" (first at line 8)"),
          At(10, 31, "routing.static[2].primary: unknown backend \"b9\" (defined: b1)"),
          At(11, 48, "routing.static[3].secondary: same backend as primary"),
          At(12, 21, "routing.submission_relay: unknown backend \"out-1\" (defined: b1)")));
}

TEST_F(LoaderTest, TlsListenerNeedsCertificates) {
  EXPECT_THAT(
      errors(kBase + "  - { name: l2, protocol: imap, listen: \"*:993\", tls: implicit }\n"  // 6
                     "  - { name: l3, protocol: pop3, listen: \"*:110\", tls: starttls }\n"  // 7
                     "  - { name: l4, protocol: pop3, listen: \"*:111\", tls: none }\n"),    // 8
      ElementsAre(
          At(6, 55, "listeners[1].tls: implicit needs a certificate, but tls.certificates is empty"),
          At(7, 55, "listeners[2].tls: starttls needs a certificate, but tls.certificates is empty")));
  EXPECT_NE(
      ok(kBase + "  - { name: l2, protocol: imap, listen: \"*:993\", tls: implicit }\n"
                 "tls: { certificates: [{ cert: certs/example.org.pem, key: certs/example.org.key }] }\n"),
      nullptr);
}

TEST_F(LoaderTest, MissingFiles) {
  fs::remove(dir_ / "users.passwd");
  const std::string d = dir_.string();
  EXPECT_THAT(
      errors("directory: { file: { users: users.passwd } }\n"                        // 1
             "listeners: [{ name: l1, protocol: imap, listen: \"*:143\" }]\n"        // 2
             "tls:\n"                                                                // 3
             "  certificates:\n"                                                     // 4
             "    - { cert: certs/missing.pem, key: /nonexistent/x.key }\n"          // 5
             "    - { cert: certs, key: certs/example.org.key }\n"                   // 6
             "    - { cert: \"\", key: certs/example.org.key }\n"                    // 7
             "    - { cert: certs/example.org.pem }\n"                               // 8
             "backends:\n"                                                           // 9
             "  - { name: b2, host: h, ports: { imap: 1 }, tls_ca: ../ca.pem }\n"),  // 10
      ElementsAre(
          At(1, 29, "directory.file.users: cannot read " + d + "/users.passwd: No such file"),
          At(5, 15, "tls.certificates[0].cert: cannot read " + d + "/certs/missing.pem: No such file"),
          At(5, 39, "tls.certificates[0].key: cannot read /nonexistent/x.key: No such file"),
          At(6, 15, "tls.certificates[1].cert: cannot read " + d + "/certs: is a directory"),
          At(7, 15, "tls.certificates[2].cert: must not be empty"),
          At(8, 7, "tls.certificates[3]: missing required key \"key\""),
          At(10, 54,
             "backends[0].tls_ca: cannot read " + dir_.parent_path().string() + "/ca.pem: No such file")));
}

TEST_F(LoaderTest, MasterLogin) {
  write("master.secret", "s3cret\n");
  auto cfg = ok("directory: { file: { users: users.passwd } }\n"
                "listeners: [{ name: l1, protocol: imap, listen: \"*:143\" }]\n"
                "backends:\n"
                "  - { name: b1, host: h, ports: { imap: 1 }, login: master, master_user: proxy,\n"
                "      master_password_file: master.secret }\n");
  ASSERT_TRUE(cfg);
  EXPECT_EQ(cfg->backends[0].login, "master");
  EXPECT_EQ(cfg->backends[0].master_user, "proxy");
  EXPECT_EQ(cfg->backends[0].master_password_file, (dir_ / "master.secret").string());
  EXPECT_THAT(errors("directory: { file: { users: users.passwd } }\n"                              // 1
                     "listeners: [{ name: l1, protocol: imap, listen: \"*:143\" }]\n"            // 2
                     "backends:\n"                                                                // 3
                     "  - { name: b1, host: h, ports: { imap: 1 }, login: master }\n"             // 4
                     "  - { name: b2, host: h, ports: { imap: 1 }, master_user: proxy }\n"        // 5
                     "  - { name: b3, host: h, ports: { imap: 1 }, login: master, master_user: p,\n"
                     "      master_password_file: nothere }\n"),                                  // 7
              ElementsAre(At(4, 53, "backends[0].login: master needs master_user and master_password_file"),
                          At(5, 59, "backends[1].master_user: only with login: master"),
                          At(7, 29, "backends[2].master_password_file: cannot read")));
}

TEST_F(LoaderTest, UnreadableFile) {
  if (geteuid() == 0) GTEST_SKIP() << "root reads every file";
  ASSERT_EQ(chmod((dir_ / "users.passwd").c_str(), 0), 0);
  EXPECT_THAT(errors(kBase), ElementsAre(At(1, 29, "Permission denied")));
}

TEST_F(LoaderTest, NonRegularFileIsNeverOpened) {
  // A FIFO would block an open(); the loader must refuse it without opening it.
  fs::remove(dir_ / "users.passwd");
  ASSERT_EQ(mkfifo((dir_ / "users.passwd").c_str(), 0600), 0);
  EXPECT_THAT(errors(kBase), ElementsAre(At(1, 29, "users.passwd: not a regular file")));
}

TEST_F(LoaderTest, RelativePathsResolveAgainstTheConfigDirectory) {
  // Whatever the working directory, "users.passwd" means the one next to the config file.
  const fs::path old = fs::current_path();
  fs::current_path("/");
  auto c = ok(kBase);
  fs::current_path(old);
  ASSERT_NE(c, nullptr);
  EXPECT_EQ(c->directory.file.users, (dir_ / "users.passwd").string());
  // An absolute path stays as it is (normalised).
  auto c2 = ok("directory: { file: { users: " + dir_.string() + "/certs/../users.passwd } }\n" +
               kBase.substr(kBase.find('\n') + 1));
  ASSERT_NE(c2, nullptr);
  EXPECT_EQ(c2->directory.file.users, (dir_ / "users.passwd").string());
}

TEST_F(LoaderTest, ErrorsAreAllCollectedInFileOrder) {
  const auto e = errors(
      "listeners:\n"                                     // 1
      "  - { name: \"a b\", protocol: x, listen: 1 }\n"  // 2
      "directory: { driver: postgres }\n"                // 3
      "log: { level: 1 }\n"                              // 4
      "hooks: { clamd: x }\n");                          // 5
  EXPECT_THAT(e, ElementsAre(At(2, 13, "listeners[0].name: \"a b\" is not a valid name"),
                             At(2, 30, "listeners[0].protocol: expected one of imap"),
                             At(2, 41, "listeners[0].listen: invalid address \"1\""),
                             At(3, 22, "directory: driver postgres needs directory.postgres.conninfo"),
                             At(4, 15, "log.level: expected one of"),
                             At(5, 10, "unknown key \"clamd\" in hooks")));
}

TEST_F(LoaderTest, PolicySectionsMayBeEmpty) {
  EXPECT_NE(ok(kBase + "lists: {}\ngeoip: {}\nlimits: {}\npolicies:\nhooks: {}\n"), nullptr);
  EXPECT_THAT(errors(kBase + "limits: { per_ip: 10 }\npolicies: [a]\n"),
              ElementsAre(At(6, 11, "unknown key \"per_ip\" in limits"),
                          At(7, 12, "policies[0]: expected a map, got \"a\"")));
}

TEST_F(LoaderTest, DirectoryDriversNeedTheirSection) {
  EXPECT_THAT(errors("listeners: [{ name: l1, protocol: imap, listen: \"*:143\" }]\n"  // 1
                     "directory: { driver: postgres, postgres: { pool: 2 } }\n"),      // 2
              ElementsAre(At(2, 42, "directory: driver postgres needs directory.postgres.conninfo")));
  EXPECT_THAT(errors("listeners: [{ name: l1, protocol: imap, listen: \"*:143\" }]\n"  // 1
                     "directory: { driver: http }\n"),                                 // 2
              ElementsAre(At(2, 22, "directory: driver http needs directory.http.url")));
  EXPECT_NE(ok("listeners: [{ name: l1, protocol: imap, listen: \"*:143\" }]\n"
               "directory: { driver: http, http: { url: \"http://127.0.0.1:8185/auth\" } }\n"),
            nullptr);
}

TEST_F(LoaderTest, DirectoryDriverAndPostgres) {
  EXPECT_THAT(errors(kBase + "directory:\n"),  // a second "directory" key
              ElementsAre(At(6, 1, "duplicate key \"directory\"")));
  EXPECT_THAT(
      errors("listeners: [{ name: l1, protocol: imap, listen: \"*:143\" }]\n"  // 1
             "directory:\n"                                                    // 2
             "  driver: http\n"                                                // 3
             "  http: { url: \"ftp://x\", timeout: 0 }\n"                      // 4
             "  postgres:\n"                                                   // 5
             "    pool: 0\n"                                                   // 6
             "    default_scheme: CRYPT\n"                                     // 7
             "    queries: { passwd: x }\n"                                    // 8
             "  cache: { ttl: 1 minute }\n"),                                  // 9
      ElementsAre(
          At(4, 16, "directory.http.url: expected an http:// URL"),
          At(4, 36, "directory.http.timeout: must be greater than 0"),
          At(6, 11, "directory.postgres.pool: expected a number from 1 to 1024, got \"0\""),
          At(7, 21, "directory.postgres.default_scheme: unknown password scheme \"CRYPT\""),
          At(8, 16, "unknown key \"passwd\" in directory.postgres.queries (did you mean \"password\"?)"),
          At(9, 17, "directory.cache.ttl: invalid duration \"1 minute\"")));
}

TEST_F(LoaderTest, PostgresNodesQuery) {
  const auto c = ok(
      "directory: { file: { users: users.passwd }, postgres: { queries: { nodes: \"SELECT name, state FROM n\" } } }\n" +
      kBase.substr(kBase.find('\n') + 1));
  ASSERT_NE(c, nullptr);
  EXPECT_EQ(c->directory.postgres.queries.nodes, "SELECT name, state FROM n");
}

TEST_F(LoaderTest, YamlSyntaxErrorHasOneBasedPosition) {
  const auto e = errors("log:\n  level: info\n  format: [json\n");
  ASSERT_EQ(e.size(), 1u);
  EXPECT_THAT(e[0], StartsWith("4:1: "));
  const auto e2 = errors("log: { level: \"info }\n");
  ASSERT_EQ(e2.size(), 1u);
  EXPECT_THAT(e2[0], HasSubstr("end of"));
  EXPECT_THAT(errors("a: b\n  c: d\n"), ElementsAre(At(2, 4, "illegal map value")));
  EXPECT_THAT(errors("a: *unknown\n"), ElementsAre(At(1, 4, "the referenced anchor is not defined")));
}

TEST_F(LoaderTest, EmptyAndMultipleDocuments) {
  EXPECT_THAT(errors(""), ElementsAre("0:0: the configuration is empty"));
  EXPECT_THAT(errors("# only a comment\n"), ElementsAre("0:0: the configuration is empty"));
  EXPECT_THAT(errors("just a string\n"),
              ElementsAre(At(1, 1, "the configuration: expected a map, got \"just a string\"")));
  EXPECT_THAT(errors(kBase + "---\nlog: {}\n"), ElementsAre(At(6, 1, "only one YAML document is allowed")));
  // yaml-cpp 0.7's LoadAll() loops forever on these; the loader must not.
  EXPECT_THAT(errors(","), ElementsAre(At(1, 1, "unexpected content after the end of the document")));
  EXPECT_THAT(errors(" ,"), ElementsAre(At(1, 2, "unexpected content after the end of the document")));
  EXPECT_THAT(errors("\"a\",\n"), ElementsAre(At(1, 4, "unexpected content after the end of the document")));
}

TEST_F(LoaderTest, ListenAddresses) {
  EXPECT_THAT(
      errors(kBase + "  - name: l2\n"                                                // 6
                     "    protocol: pop3\n"                                          // 7
                     "    listen:\n"                                                 // 8
                     "      - \"[::1]:110\"\n"                                       // 9
                     "      - \"::1:110\"\n"                                         // 10
                     "      - \"*:0\"\n"                                             // 11
                     "      - \"host\"\n"                                            // 12
                     "      - [\"*:1\"]\n"                                           // 13
                     "  - { name: l5, protocol: pop3, listen: \"0.0.0.0:1110\" }\n"  // 14
                     "  - { name: l3, protocol: pop3, listen: [] }\n"                // 15
                     "  - { name: l4, protocol: pop3, listen: \"*:1110\" }\n"        // 16
                     "admin: { listen: \"localhost:9180\" }\n"),                     // 17
      ElementsAre(
          At(10, 9, "invalid address \"::1:110\": an IPv6 address must be written in brackets"),
          At(11, 9, "invalid address \"*:0\": port \"0\" is not a number from 1 to 65535"),
          At(12, 9, "invalid address \"host\": missing \":PORT\""),
          At(13, 9, "listeners[1].listen: expected an address, got a list"),
          At(15, 41, "listeners[3].listen: at least one address is required"),
          At(16, 41, "listeners[4].listen: address \"*:1110\" is already used by listener \"l5\""),
          At(17, 18,
             "admin.listen: invalid address \"localhost:9180\": \"localhost\" is not an IPv4 address")));
}

TEST_F(LoaderTest, LimitsAndTimeouts) {
  EXPECT_THAT(errors(kBase + "  - name: l2\n"                                  // 6
                             "    protocol: smtp\n"                            // 7
                             "    listen: \"*:25\"\n"                          // 8
                             "    max_line: 2M\n"                              // 9
                             "    max_literal: 4G\n"                           // 10
                             "    preauth_timeout: 0\n"                        // 11
                             "    idle_timeout: 10x\n"                         // 12
                             "    max_auth_attempts: 0\n"                      // 13
                             "    max_bad_commands: 99999999999999999999\n"),  // 14
              ElementsAre(At(9, 15, "listeners[1].max_line: 2M is out of range (0 to 1048576 bytes)"),
                          At(10, 18, "listeners[1].max_literal: 4G is out of range (0 to 4294967295 bytes)"),
                          At(11, 22, "listeners[1].preauth_timeout: must be greater than 0"),
                          At(12, 19, "listeners[1].idle_timeout: invalid duration \"10x\""),
                          At(13, 24, "listeners[1].max_auth_attempts: expected a number from 1 to 1000000"),
                          At(14, 23, "listeners[1].max_bad_commands: expected a number from 1 to 1000000")));
  std::string base = kBase;
  base.replace(base.find("pop3: 110 }"), 11, "pop3: 110, smtp: 25 }");
  auto c = ok(base +
              "  - { name: l2, protocol: smtp, listen: \"*:25\", max_line: 1M, max_literal: 0 }\n"
              "  - { name: l3, protocol: submission, listen: \"*:587\" }\n"
              "  - { name: l4, protocol: pop3, listen: \"*:110\", max_line: 0 }\n"
              "routing: { submission_relay: b1 }\n");
  ASSERT_NE(c, nullptr);
  EXPECT_EQ(c->listeners[1].max_line, 1u << 20);
  EXPECT_EQ(c->listeners[1].max_literal, 0u);
  EXPECT_EQ(c->listeners[2].max_line, 512u);
  EXPECT_EQ(c->listeners[3].max_line, 512u);
}

TEST_F(LoaderTest, BackendChecks) {
  EXPECT_THAT(
      errors("directory: { file: { users: users.passwd } }\n"                  // 1
             "listeners: [{ name: l1, protocol: imap, listen: \"*:143\" }]\n"  // 2
             "backends:\n"                                                     // 3
             "  - { name: b1, host: \"bad host\", ports: {} }\n"               // 4
             "  - { name: b2, host: h }\n"                                     // 5
             "  - name: b3\n"                                                  // 6
             "    host: h\n"                                                   // 7
             "    ports: { lmtp: 24 }\n"                                       // 8
             "    login: master-key\n"                                         // 9
             "    deliver: pigeon\n"                                           // 10
             "    health: { interval: 0 }\n"                                   // 11
             "    connect_timeout: 5y\n"                                       // 12
             "  - just-a-name\n"),                                             // 13
      ElementsAre(At(4, 23, "backends[0].host: \"bad host\" is not a host name, IPv4 or IPv6 address"),
                  At(4, 42, "backends[0].ports: at least one of imap, pop3, smtp, lmtp is required"),
                  At(5, 5, "backends[1]: missing required key \"ports\""),
                  At(9, 12, "backends[2].login: expected one of replay, master, got \"master-key\""),
                  At(10, 14, "backends[2].deliver: expected one of lmtp, smtp, got \"pigeon\""),
                  At(11, 25, "backends[2].health.interval: must be greater than 0"),
                  At(12, 22, "backends[2].connect_timeout: invalid duration \"5y\""),
                  At(13, 5, "backends[3]: expected a map, got \"just-a-name\"")));
}

TEST_F(LoaderTest, BackendHosts) {
  const std::string head =
      "directory: { file: { users: users.passwd } }\n"
      "listeners: [{ name: l1, protocol: imap, listen: \"*:143\" }]\n"
      "backends:\n";
  for (const char* good : {"127.0.0.1", "storage-01.example.org", "::1", "fe80::1", "localhost"})
    EXPECT_NE(ok(head + "  - { name: b, host: \"" + good + "\", ports: { imap: 1 } }\n"), nullptr) << good;
  for (const char* bad : {"999.0.0.1", "1.2.3", "[::1]", "a b", "-x", "x..y", "", "h:143"})
    EXPECT_THAT(errors(head + "  - { name: b, host: \"" + bad + "\", ports: { imap: 1 } }\n"),
                ElementsAre(At(4, 22, "backends[0].host:")))
        << bad;
}

TEST_F(LoaderTest, ManyErrorsAreBounded) {
  std::string yaml = kBase + "log:\n";
  for (int i = 0; i < 500; ++i) yaml += "  k" + std::to_string(i) + ": 1\n";
  const LoadResult r = load(yaml);
  ASSERT_EQ(r.errors.size(), 101u);
  EXPECT_EQ(r.errors.back().message, "too many errors; stopping");
  EXPECT_EQ(r.errors.front().line, 7);
}

TEST(LoadConfigFile, MissingFile) {
  const LoadResult r = loadConfigFile("/nonexistent/mailgate.yaml");
  EXPECT_EQ(r.config, nullptr);
  ASSERT_EQ(r.errors.size(), 1u);
  EXPECT_EQ(r.errors[0].format(),
            "/nonexistent/mailgate.yaml: cannot read the configuration: No such file or directory");
}

TEST(LoadConfigText, NeverThrowsOnOddInput) {
  for (const char* text :
       {"\xff\xfe", "{", "[[[[[[[[[[", "? [a]: b", "&a [*a]", "!!binary x", "\t\t:", "%YAML 9.9\n",
        "listeners: &x [*x]\n", "a: !<tag:x> 1\n", std::string(10000, '[').c_str()}) {
    const LoadResult r = loadConfigText(text, "/nonexistent/fuzz.yaml");
    EXPECT_EQ(r.config, nullptr) << text;
    EXPECT_FALSE(r.errors.empty()) << text;
  }
}

}  // namespace
}  // namespace mailgate::conf

namespace mailgate::conf {
namespace {

// kBase with an SMTP listener "mx" and a submission-less setup (7 lines).
const std::string kHookBase = kBase + "  - { name: mx, protocol: smtp, listen: \"127.0.0.1:2525\" }\n"
                                      "routing: { static: [ { domain: example.org, primary: b1 } ] }\n";

TEST_F(LoaderTest, HooksDefaults) {
  auto c = ok(kHookBase);
  ASSERT_NE(c, nullptr);
  EXPECT_EQ(c->hooks.on_error, HookAction::kTempfail);
  EXPECT_EQ(c->hooks.connect_timeout, Duration(5000));
  EXPECT_EQ(c->hooks.scan_timeout, Duration(60000));
  EXPECT_EQ(c->hooks.max_size, 50ull << 20);
  EXPECT_EQ(c->hooks.on_oversize, OversizeAction::kAcceptUnscanned);
  EXPECT_TRUE(c->hooks.scanners.empty());
  EXPECT_TRUE(c->hooks.flows.empty());
}

TEST_F(LoaderTest, HooksClamdStreamMaxAndBreaker) {
  auto c = ok(kHookBase +
              "hooks:\n"
              "  scanners:\n"
              "    clamav: { type: clamd, endpoints: [\"unix:/run/clamav/clamd.ctl\"], stream_max: 100M,\n"
              "              breaker: { failures: 3, open: 10s }, max_size: 2M, timeouts: { scan: 5s } }\n"
              "    plain: { type: clamd, endpoints: [\"unix:/run/clamav/clamd.ctl\"] }\n"
              "  flows:\n"
              "    - { run: [clamav, plain] }\n");
  ASSERT_NE(c, nullptr);
  const auto& s = c->hooks.scanners;
  ASSERT_EQ(s.size(), 2u);
  EXPECT_EQ(s[0].stream_max, 100ull << 20);
  EXPECT_EQ(s[0].breaker_failures, 3u);
  EXPECT_EQ(s[0].breaker_open, Duration(10000));
  EXPECT_EQ(s[0].max_size, 2ull << 20);
  EXPECT_EQ(s[0].scan_timeout, Duration(5000));
  EXPECT_FALSE(s[0].connect_timeout.has_value());
  EXPECT_EQ(s[1].stream_max, 25ull << 20);  // clamd's own default
  EXPECT_EQ(s[1].breaker_failures, 5u);
  EXPECT_EQ(s[1].breaker_open, Duration(30000));
  auto bad = load(kHookBase +
                  "hooks:\n"
                  "  scanners:\n"
                  "    clamav: { type: clamd, endpoints: [\"unix:/x\"], stream_max: 1 }\n"
                  "  flows:\n"
                  "    - { run: [clamav] }\n");
  EXPECT_EQ(bad.config, nullptr);
}

TEST_F(LoaderTest, HooksClamdScannersAndFlows) {
  auto c = ok(kHookBase +
              "hooks:\n"
              "  defaults:\n"
              "    on_error: accept\n"
              "    timeouts: { connect: 250ms, scan: 2s }\n"
              "    max_size: 10M\n"
              "    on_oversize: reject\n"
              "  scanners:\n"
              "    clamav: { type: clamd, endpoints: [\"unix:/run/clamav/clamd.ctl\", \"tcp:127.0.0.1:3310\"] }\n"
              "    backup: { type: clamd, endpoints: [\"tcp:[::1]:3310\"], on_error: reject }\n"
              "  flows:\n"
              "    - { when: { listener: mx }, run: [clamav] }\n"
              "    - { when: { listener: [mx, l1], authenticated: true }, run: [clamav, backup] }\n"
              "    - { run: [backup] }\n");
  ASSERT_NE(c, nullptr);
  const HooksConfig& h = c->hooks;
  EXPECT_EQ(h.on_error, HookAction::kAccept);
  EXPECT_EQ(h.connect_timeout, Duration(250));
  EXPECT_EQ(h.scan_timeout, Duration(2000));
  EXPECT_EQ(h.max_size, 10ull << 20);
  EXPECT_EQ(h.on_oversize, OversizeAction::kReject);
  ASSERT_EQ(h.scanners.size(), 2u);
  EXPECT_EQ(h.scanners[0].name, "clamav");
  EXPECT_EQ(h.scanners[0].type, "clamd");
  EXPECT_THAT(h.scanners[0].endpoints, ElementsAre("unix:/run/clamav/clamd.ctl", "tcp:127.0.0.1:3310"));
  EXPECT_FALSE(h.scanners[0].on_error.has_value());
  EXPECT_EQ(h.scanners[1].on_error, HookAction::kReject);
  ASSERT_EQ(h.flows.size(), 3u);
  EXPECT_THAT(h.flows[0].listeners, ElementsAre("mx"));
  EXPECT_FALSE(h.flows[0].authenticated.has_value());
  EXPECT_THAT(h.flows[0].run, ElementsAre("clamav"));
  EXPECT_THAT(h.flows[1].listeners, ElementsAre("mx", "l1"));
  EXPECT_EQ(h.flows[1].authenticated, true);
  EXPECT_THAT(h.flows[1].run, ElementsAre("clamav", "backup"));
  EXPECT_TRUE(h.flows[2].listeners.empty());
}

TEST_F(LoaderTest, HooksMilterScanner) {
  auto c = ok(kHookBase +
              "hooks:\n"
              "  scanners:\n"
              "    rspamd: { type: milter, endpoints: [\"tcp:127.0.0.1:11332\", \"unix:/run/rspamd/milter.sock\"],\n"
              "              on_error: accept, timeouts: { scan: 20s }, max_size: 20M, on_oversize: reject }\n"
              "  flows:\n"
              "    - { when: { listener: mx }, run: [rspamd] }\n");
  ASSERT_NE(c, nullptr);
  const ScannerConfig& sc = c->hooks.scanners.at(0);
  EXPECT_EQ(sc.type, "milter");
  EXPECT_THAT(sc.endpoints, ElementsAre("tcp:127.0.0.1:11332", "unix:/run/rspamd/milter.sock"));
  EXPECT_EQ(sc.on_error, HookAction::kAccept);
  EXPECT_EQ(sc.scan_timeout, Duration(20000));
  EXPECT_EQ(sc.max_size, 20ull << 20);
  EXPECT_EQ(sc.on_oversize, OversizeAction::kReject);
  // One address as `endpoint` (the design's example).
  auto one = ok(kHookBase +
                "hooks:\n"
                "  scanners:\n"
                "    rspamd: { type: milter, endpoint: \"tcp:127.0.0.1:11332\", on_error: accept }\n"
                "  flows:\n"
                "    - { run: [rspamd] }\n");
  ASSERT_NE(one, nullptr);
  EXPECT_THAT(one->hooks.scanners.at(0).endpoints, ElementsAre("tcp:127.0.0.1:11332"));
  EXPECT_THAT(errors(kHookBase +
                     "hooks:\n"
                     "  scanners:\n"
                     "    m: { type: milter, endpoint: \"tcp:127.0.0.1:1\", endpoints: [\"tcp:127.0.0.1:2\"] }\n"
                     "  flows:\n"
                     "    - { run: [m] }\n"),
              ElementsAre(HasSubstr("hooks.scanners.m: endpoint and endpoints together")));
  EXPECT_THAT(errors(kHookBase +
                     "hooks:\n"
                     "  scanners:\n"
                     "    m: { type: milter, endpoints: [\"tcp:localhost:1\"], macros: [j] }\n"
                     "  flows:\n"
                     "    - { run: [m] }\n"),
              ElementsAre(HasSubstr("hooks.scanners.m.endpoints[0]: \"tcp:localhost:1\": \"localhost\" is not an IPv4"),
                          HasSubstr("unknown key \"macros\" in hooks.scanners.m")));
}

TEST_F(LoaderTest, HooksErrors) {
  EXPECT_THAT(
      errors(kHookBase +                                                             // 1-7
             "hooks:\n"                                                              // 8
             "  defaults:\n"                                                         // 9
             "    on_error: maybe\n"                                                 // 10
             "    timeouts: { connect: 5 parsecs, scan: 0, read: 1s }\n"             // 11
             "    max_size: 50Q\n"                                                   // 12
             "    on_oversize: accept\n"                                             // 13
             "  scanners:\n"                                                         // 14
             "    av: { type: clamd, endpoints: [\"udp:1.2.3.4:5\", \"tcp:localhost:3310\"] }\n"  // 15
             "    av2: { type: clamd, endpoint: \"tcp:127.0.0.1:3310\" }\n"          // 16
             "    ic: { type: icap, url: \"icap://127.0.0.1:1344/avscan\" }\n"       // 17
             "    ml: { type: milter }\n"                                            // 18
             "    zz: { type: sophos }\n"                                            // 19
             "  flows:\n"                                                            // 20
             "    - { when: { listener: nosuch, country: KP }, run: [av, ic, nope] }\n"  // 21
             "    - { when: { authenticated: yes }, run: [] }\n"),                   // 22
      ElementsAre(At(10, 15, "hooks.defaults.on_error: expected one of accept, tempfail, reject, got \"maybe\""),
                  At(11, 26, "hooks.defaults.timeouts.connect: invalid duration \"5 parsecs\""),
                  At(11, 43, "hooks.defaults.timeouts.scan: must be greater than 0"),
                  At(11, 46, "unknown key \"read\" in hooks.defaults.timeouts"),
                  At(12, 15, "hooks.defaults.max_size: invalid size \"50Q\""),
                  At(13, 18, "hooks.defaults.on_oversize: expected one of accept_unscanned, tempfail, reject"),
                  At(15, 36, "hooks.scanners.av.endpoints[0]: \"udp:1.2.3.4:5\": expected unix:/path or tcp:HOST:PORT"),
                  At(15, 53, "hooks.scanners.av.endpoints[1]: \"tcp:localhost:3310\": \"localhost\" is not an IPv4 address"),
                  At(16, 5, "hooks.scanners.av2: missing required key \"endpoints\""),
                  At(16, 25, "unknown key \"endpoint\" in hooks.scanners.av2 (did you mean \"endpoints\"?)"),
                  At(18, 5, "hooks.scanners.ml: missing required key \"endpoints\""),
                  At(19, 17, "hooks.scanners.zz.type: expected clamd, icap, milter or dlp, got \"sophos\""),
                  At(21, 27, "hooks.flows[0].when.listener: unknown listener \"nosuch\""),
                  At(21, 35, "unknown key \"country\" in hooks.flows[0].when"),
                  At(21, 64, "hooks.flows[0].run[2]: unknown scanner \"nope\""),
                  At(22, 32, "hooks.flows[1].when.authenticated: expected true or false, got \"yes\""),
                  At(22, 44, "hooks.flows[1].run: expected a list of one or more scanner names, got an empty list")));
}

}  // namespace
}  // namespace mailgate::conf

namespace mailgate::conf {
namespace {

TEST_F(LoaderTest, HooksDlpScanner) {
  auto c = ok(kHookBase +
              "hooks:\n"
              "  scanners:\n"
              "    dlp:\n"
              "      type: dlp\n"
              "      on_match: tag\n"
              "      tag_header: \"X-DLP: found\"\n"
              "      timeouts: { scan: 5s }\n"
              "      max_size: 20M\n"
              "      on_error: accept\n"
              "      detectors:\n"
              "        - { id: card, pattern: card_number, validate: luhn, min_count: 3 }\n"
              "        - { id: iban, pattern: iban, validate: iban_mod97 }\n"
              "        - { id: ssn, pattern: '\\b[0-9]{3}-[0-9]{2}-[0-9]{4}\\b', context: [SSN, \"social "
              "security\"],\n"
              "            context_window: 40 }\n"
              "        - { id: secret, pattern: 'TOP SECRET', context: classified }\n"
              "    dlp2: { type: dlp, detectors: [ { id: card, pattern: card_number } ] }\n"
              "  flows:\n"
              "    - { run: [dlp, dlp2] }\n");
  ASSERT_NE(c, nullptr);
  const HooksConfig& h = c->hooks;
  ASSERT_EQ(h.scanners.size(), 2u);
  const ScannerConfig& s = h.scanners[0];
  EXPECT_EQ(s.type, "dlp");
  EXPECT_EQ(s.on_match, DlpAction::kTag);
  EXPECT_EQ(s.tag_header, "X-DLP: found");
  EXPECT_EQ(s.scan_timeout, Duration(5000));
  EXPECT_EQ(s.max_size, 20ull << 20);
  EXPECT_EQ(s.on_error, HookAction::kAccept);
  ASSERT_EQ(s.detectors.size(), 4u);
  EXPECT_EQ(s.detectors[0].id, "card");
  EXPECT_EQ(s.detectors[0].pattern, "card_number");
  EXPECT_EQ(s.detectors[0].validate, "luhn");
  EXPECT_EQ(s.detectors[0].min_count, 3u);
  EXPECT_EQ(s.detectors[0].context_window, 100u);
  EXPECT_TRUE(s.detectors[0].context.empty());
  EXPECT_EQ(s.detectors[1].validate, "iban_mod97");
  EXPECT_EQ(s.detectors[1].min_count, 1u);
  EXPECT_EQ(s.detectors[2].pattern, "\\b[0-9]{3}-[0-9]{2}-[0-9]{4}\\b");
  EXPECT_EQ(s.detectors[2].validate, "");
  EXPECT_THAT(s.detectors[2].context, ElementsAre("SSN", "social security"));
  EXPECT_EQ(s.detectors[2].context_window, 40u);
  EXPECT_THAT(s.detectors[3].context, ElementsAre("classified"));
  // The defaults: quarantine, the default tag, hooks.defaults.
  EXPECT_EQ(h.scanners[1].on_match, DlpAction::kQuarantine);
  EXPECT_EQ(h.scanners[1].tag_header, "");
  EXPECT_FALSE(h.scanners[1].on_error.has_value());
  EXPECT_FALSE(h.scanners[1].max_size.has_value());
}

TEST_F(LoaderTest, HooksDlpErrors) {
  EXPECT_THAT(
      errors(kHookBase +                                                                        // 1-7
             "hooks:\n"                                                                         // 8
             "  scanners:\n"                                                                    // 9
             "    a: { type: dlp }\n"                                                           // 10
             "    b: { type: dlp, detectors: [], on_match: drop, tag_header: \"no colon\" }\n"  // 11
             "    c:\n"                                                                         // 12
             "      type: dlp\n"                                                                // 13
             "      endpoints: [x]\n"                                                           // 14
             "      detectors:\n"                                                               // 15
             "        - { pattern: card_number }\n"                                             // 16
             "        - { id: x, pattern: '(unclosed', validate: crc }\n"                       // 17
             "        - { id: x, pattern: iban, min_count: 0, context_window: 5000 }\n"         // 18
             "        - { id: \"bad id\", pattern: iban, context: [] }\n"                       // 19
             "        - card_number\n"                                                          // 20
             "        - { id: y }\n"),                                                          // 21
      ElementsAre(
          At(10, 5, "hooks.scanners.a: missing required key \"detectors\""),
          At(11, 32,
             "hooks.scanners.b.detectors: expected a list of one or more detectors, got an empty list"),
          At(11, 46, "hooks.scanners.b.on_match: expected one of reject, quarantine, tag, got \"drop\""),
          At(11, 64, "hooks.scanners.b.tag_header: expected a header field \"Name: value\""),
          At(14, 7, "unknown key \"endpoints\" in hooks.scanners.c"),
          At(16, 11, "hooks.scanners.c.detectors[0]: missing required key \"id\""),
          At(17, 29, "hooks.scanners.c.detectors[1].pattern: invalid pattern \"(unclosed\": missing )"),
          At(17, 52, "hooks.scanners.c.detectors[1].validate: expected one of luhn, iban_mod97, got \"crc\""),
          At(18, 17, "hooks.scanners.c.detectors[2].id: duplicate detector id \"x\" (also at line 17)"),
          At(18, 46, "hooks.scanners.c.detectors[2].min_count: expected a number from 1 to 10000, got \"0\""),
          At(18, 65, "hooks.scanners.c.detectors[2].context_window: expected a number from 1 to 4096"),
          At(19, 17, "hooks.scanners.c.detectors[3].id: \"bad id\" is not a valid name"),
          At(19, 51,
             "hooks.scanners.c.detectors[3].context: expected a word or a list of them, got an empty list"),
          At(20, 11, "hooks.scanners.c.detectors[4]: expected a map, got \"card_number\""),
          At(21, 11, "hooks.scanners.c.detectors[5]: missing required key \"pattern\"")));
}

}  // namespace
}  // namespace mailgate::conf
