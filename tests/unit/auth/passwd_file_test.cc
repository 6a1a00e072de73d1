#include "auth/passwd_file.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

namespace mailgate::auth {
namespace {

std::string hashOf(Scheme s, const std::string& pw, unsigned cost = 0) {
  auto h = makeHash(s, pw, cost);
  EXPECT_TRUE(h) << h.error();
  return h ? *h : std::string();
}

class TempFile {
 public:
  TempFile() {
    char tmpl[] = "/tmp/mailgate-passwd-XXXXXX";
    int fd = ::mkstemp(tmpl);
    EXPECT_GE(fd, 0);
    ::close(fd);
    path_ = tmpl;
  }
  ~TempFile() { std::remove(path_.c_str()); }
  void write(const std::string& text) {
    std::ofstream out(path_, std::ios::trunc | std::ios::binary);
    out << text;
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

TEST(PasswdFile, LoadsDovecotFormatAndReportsProblemsWithLineNumbers) {
  const std::string text =
      "# demo users\n"  // 1
      "\n"              // 2
      "alice@example.org:" +
      hashOf(Scheme::kSha512Crypt, "alice-pw", 1000) +
      ":1000:1000::/home/alice::\n"                                                 // 3
      "bob@Example.ORG:{PLAIN-MD5}5ebe2294ecd0e0f08eab7690d2a6ee69\n"               // 4
      "carol@example.org:{PLAIN}carol-pw:::::: userdb_quota_rule=*:storage=1G\r\n"  // 5
      "   # indented comment\n"                                                     // 6
      "mallory@example.org:{FOO}whatever\n"                                         // 7
      "no-colon-here\n"                                                             // 8
      "dave@example.org:\n"                                                         // 9
      "carol@example.org:{PLAIN}other\n"                                            // 10
      "erin@example.org:{SHA512-CRYPT}notacrypt\n"                                  // 11
      "bare@example.org:" +
      hashOf(Scheme::kSha512Crypt, "bare-pw", 1000).substr(14) +
      "\n"            // 12
      ":{PLAIN}x\n";  // 13
  PasswdFile pf(Scheme::kSha512Crypt);
  auto report = pf.loadText(text, "users.passwd");
  EXPECT_TRUE(report.loaded);
  EXPECT_EQ(report.users, 4u);
  EXPECT_EQ(pf.size(), 4u);
  ASSERT_EQ(report.problems.size(), 6u);
  EXPECT_EQ(report.problems[0], "users.passwd:7: unknown scheme {FOO} (user mallory@example.org disabled)");
  EXPECT_EQ(report.problems[1], "users.passwd:8: malformed line (expected user:password)");
  EXPECT_EQ(report.problems[2], "users.passwd:9: empty password (user dave@example.org disabled)");
  EXPECT_EQ(report.problems[3], "users.passwd:10: duplicate user carol@example.org (first entry kept)");
  EXPECT_EQ(report.problems[4],
            "users.passwd:11: malformed {SHA512-CRYPT} hash (user erin@example.org disabled)");
  EXPECT_EQ(report.problems[5], "users.passwd:13: invalid user name");

  auto a = pf.authenticate("alice@example.org", "alice-pw");
  EXPECT_EQ(a.verdict, Verdict::kOk);
  EXPECT_EQ(a.user, "alice@example.org");
  EXPECT_EQ(pf.authenticate("alice@example.org", "alice-PW").verdict, Verdict::kBadPassword);
  EXPECT_EQ(pf.authenticate("ALICE@EXAMPLE.ORG", "alice-pw").verdict, Verdict::kOk);

  auto b = pf.authenticate("bob@example.org", "secret");
  EXPECT_EQ(b.verdict, Verdict::kOk);
  EXPECT_EQ(b.user, "bob@Example.ORG");  // canonical: as stored

  EXPECT_EQ(pf.authenticate("carol@example.org", "carol-pw").verdict, Verdict::kOk);
  EXPECT_EQ(pf.authenticate("carol@example.org", "other").verdict, Verdict::kBadPassword);
  EXPECT_EQ(pf.authenticate("bare@example.org", "bare-pw").verdict, Verdict::kOk);  // default scheme

  // Broken lines never authenticate, whatever the password.
  EXPECT_EQ(pf.authenticate("mallory@example.org", "whatever").verdict, Verdict::kBadPassword);
  EXPECT_EQ(pf.authenticate("mallory@example.org", "{FOO}whatever").verdict, Verdict::kBadPassword);
  EXPECT_EQ(pf.authenticate("dave@example.org", "").verdict, Verdict::kBadPassword);
  EXPECT_EQ(pf.authenticate("erin@example.org", "notacrypt").verdict, Verdict::kBadPassword);
  EXPECT_EQ(pf.authenticate("no-colon-here", "").verdict, Verdict::kUnknownUser);
  EXPECT_EQ(pf.authenticate("nobody@example.org", "x").verdict, Verdict::kUnknownUser);
  EXPECT_EQ(pf.authenticate("", "").verdict, Verdict::kUnknownUser);
}

TEST(PasswdFile, EmptyBeforeLoadRejectsEveryone) {
  PasswdFile pf;
  EXPECT_EQ(pf.size(), 0u);
  EXPECT_EQ(pf.authenticate("a@b", "c").verdict, Verdict::kUnknownUser);
}

TEST(PasswdFile, MissingFileKeepsOldSnapshot) {
  TempFile f;
  f.write("u@x:{PLAIN}one\n");
  PasswdFile pf;
  auto r = pf.load(f.path());
  ASSERT_TRUE(r.loaded);
  EXPECT_TRUE(r.problems.empty());
  EXPECT_EQ(pf.authenticate("u@x", "one").verdict, Verdict::kOk);

  auto missing = pf.load("/nonexistent/users.passwd");
  EXPECT_FALSE(missing.loaded);
  ASSERT_EQ(missing.problems.size(), 1u);
  EXPECT_EQ(missing.problems[0], "/nonexistent/users.passwd: cannot open file");
  EXPECT_EQ(pf.authenticate("u@x", "one").verdict, Verdict::kOk);
}

TEST(PasswdFile, ReloadSwapsSnapshot) {
  TempFile f;
  f.write("u@x:{PLAIN}one\nv@x:{PLAIN}vee\n");
  PasswdFile pf;
  ASSERT_TRUE(pf.load(f.path()).loaded);
  EXPECT_EQ(pf.authenticate("u@x", "one").verdict, Verdict::kOk);

  f.write("u@x:" + hashOf(Scheme::kSha256Crypt, "two", 1000) + "\nw@x:{BOGUS}zz\n");
  auto r = pf.reload();
  EXPECT_TRUE(r.loaded);
  ASSERT_EQ(r.problems.size(), 1u);
  EXPECT_EQ(r.problems[0], f.path() + ":2: unknown scheme {BOGUS} (user w@x disabled)");
  EXPECT_EQ(pf.authenticate("u@x", "one").verdict, Verdict::kBadPassword);
  EXPECT_EQ(pf.authenticate("u@x", "two").verdict, Verdict::kOk);
  EXPECT_EQ(pf.authenticate("v@x", "vee").verdict, Verdict::kUnknownUser);
}

TEST(PasswdFile, ReloadBeforeLoadIsReported) {
  PasswdFile pf;
  auto r = pf.reload();
  EXPECT_FALSE(r.loaded);
  EXPECT_EQ(r.problems.size(), 1u);
}

TEST(PasswdFile, ConcurrentAuthenticateDuringReload) {
  PasswdFile pf;
  const std::string a = "u@x:" + hashOf(Scheme::kSha256Crypt, "pw", 1000) + "\n";
  const std::string b = "u@x:{PLAIN}pw\nother@x:{PLAIN}o\n";
  ASSERT_TRUE(pf.loadText(a, "a").loaded);
  std::atomic<bool> done{false};
  std::atomic<int> failures{0};
  std::vector<std::thread> workers;
  for (int t = 0; t < 4; ++t) {
    workers.emplace_back([&] {
      while (!done.load()) {
        if (pf.authenticate("u@x", "pw").verdict != Verdict::kOk) failures.fetch_add(1);
        if (pf.authenticate("u@x", "nope").verdict != Verdict::kBadPassword) failures.fetch_add(1);
      }
    });
  }
  for (int i = 0; i < 50; ++i) ASSERT_TRUE(pf.loadText(i % 2 ? a : b, "x").loaded);
  done.store(true);
  for (auto& w : workers) w.join();
  EXPECT_EQ(failures.load(), 0);
}

TEST(PasswdFile, EveryScheme) {
  std::string text;
  const std::pair<Scheme, unsigned> schemes[] = {
      {Scheme::kPlain, 0},    {Scheme::kPlainMd5, 0},       {Scheme::kMd5, 0},
      {Scheme::kMd5Crypt, 0}, {Scheme::kSha256Crypt, 1000}, {Scheme::kSha512Crypt, 1000},
      {Scheme::kBlfCrypt, 4}, {Scheme::kArgon2id, 1},
  };
  int i = 0;
  for (const auto& [s, cost] : schemes)
    text += "user" + std::to_string(i++) + "@x:" + hashOf(s, "pw", cost) + "\n";
  PasswdFile pf;
  auto r = pf.loadText(text, "all");
  EXPECT_TRUE(r.problems.empty());
  for (int j = 0; j < i; ++j) {
    const std::string user = "user" + std::to_string(j) + "@x";
    EXPECT_EQ(pf.authenticate(user, "pw").verdict, Verdict::kOk) << user;
    EXPECT_EQ(pf.authenticate(user, "pw2").verdict, Verdict::kBadPassword) << user;
  }
}

}  // namespace
}  // namespace mailgate::auth

namespace mailgate::auth {
namespace {

TEST(PasswdFile, UnknownUserCostsAboutAsMuchAsAKnownOne) {
  PasswdFile pf;
  ASSERT_TRUE(pf.loadText("slow@x:" + hashOf(Scheme::kSha512Crypt, "pw", 200000) + "\n", "t").loaded);
  auto time = [&](const char* user) {
    auto t0 = std::chrono::steady_clock::now();
    (void)pf.authenticate(user, "wrong");
    return std::chrono::steady_clock::now() - t0;
  };
  auto known = time("slow@x");
  auto unknown = time("nobody@x");
  EXPECT_GT(unknown * 3, known) << "unknown user answered much faster than a known one";
}

TEST(PasswdFile, RecipientLocalUnknownForeign) {
  PasswdFile pf;
  ASSERT_TRUE(pf.loadText("Alice@Example.org:{PLAIN}x\nbob@example.org:{NOPE}x\nnodomain:{PLAIN}y\n", "t").loaded);
  EXPECT_EQ(pf.recipient("alice@example.org"), RecipientResult::kLocal);
  EXPECT_EQ(pf.recipient("ALICE@EXAMPLE.ORG"), RecipientResult::kLocal);
  EXPECT_EQ(pf.recipient("bob@example.org"), RecipientResult::kLocal);  // disabled password, mailbox exists
  EXPECT_EQ(pf.recipient("carol@example.org"), RecipientResult::kUnknownMailbox);
  EXPECT_EQ(pf.recipient("alice@example.net"), RecipientResult::kForeignDomain);
  EXPECT_EQ(pf.recipient("nodomain"), RecipientResult::kUnknownMailbox);
}

}  // namespace
}  // namespace mailgate::auth
