#include "gateway/codec/smtp_reply.h"

#include <gtest/gtest.h>

#include <random>
#include <string>
#include <vector>

namespace mailgate::codec {
namespace {

using namespace std::string_literals;

std::string describe(const SmtpReplyParser& p, SmtpReplyStatus s) {
  switch (s) {
    case SmtpReplyStatus::kNeedMore:
      return "?";
    case SmtpReplyStatus::kError:
      return "E " + std::string(p.errorText());
    case SmtpReplyStatus::kReply: {
      const SmtpReply& r = p.reply();
      std::string out = "R " + std::to_string(r.code);
      if (r.enhanced.present()) {
        out += " <" + std::to_string(r.enhanced.cls) + "." + std::to_string(r.enhanced.subject) + "." +
               std::to_string(r.enhanced.detail) + ">";
      }
      for (uint32_t i = 0; i < r.line_count; ++i) {
        EXPECT_TRUE(p.ownsView(r.lines[i]));
        out += " [" + std::string(r.lines[i]) + "]";
      }
      return out;
    }
  }
  return "!";
}

std::vector<std::pair<std::string, size_t>> run(const std::string& in, const std::vector<size_t>& cuts,
                                                SmtpReplyLimits lim = {}) {
  SmtpReplyParser p(lim);
  std::vector<std::pair<std::string, size_t>> ev;
  std::vector<size_t> bounds = cuts;
  bounds.push_back(in.size());
  size_t start = 0, pos = 0;
  for (size_t b : bounds) {
    std::string_view rest(in.data() + start, b - start);
    start = b;
    while (!rest.empty()) {
      const SmtpReplyFeed f = p.feed(rest);
      rest.remove_prefix(f.consumed);
      pos += f.consumed;
      if (f.status == SmtpReplyStatus::kNeedMore) {
        EXPECT_TRUE(rest.empty());
        break;
      }
      ev.emplace_back(describe(p, f.status), pos);
      if (f.status == SmtpReplyStatus::kError) {
        EXPECT_EQ(p.feed("250 ok\r\n").consumed, 0u);
        return ev;
      }
      EXPECT_FALSE(p.hasPending());
    }
  }
  return ev;
}

std::vector<std::string> texts(const std::vector<std::pair<std::string, size_t>>& ev) {
  std::vector<std::string> out;
  for (const auto& e : ev) out.push_back(e.first);
  return out;
}

void check(const std::string& in, const std::vector<std::string>& want, SmtpReplyLimits lim = {}) {
  SCOPED_TRACE(in);
  const auto whole = run(in, {}, lim);
  EXPECT_EQ(texts(whole), want);
  std::vector<size_t> every;
  for (size_t i = 1; i < in.size(); ++i) every.push_back(i);
  EXPECT_EQ(run(in, every, lim), whole);
  for (size_t k = 0; k <= in.size(); ++k) EXPECT_EQ(run(in, {k}, lim), whole) << k;
  std::mt19937 rng(3463);
  for (int r = 0; r < 10; ++r) {
    std::vector<size_t> cuts;
    for (size_t i = 1; i < in.size(); ++i) {
      if (rng() % 3 == 0) cuts.push_back(i);
    }
    EXPECT_EQ(run(in, cuts, lim), whole);
  }
}

TEST(SmtpReplyParser, SingleLine) {
  check("220 mx.example.org ESMTP ready\r\n", {"R 220 [mx.example.org ESMTP ready]"});
  check("250 2.1.0 Ok\r\n", {"R 250 <2.1.0> [2.1.0 Ok]"});
  check("250\r\n", {"R 250 []"});
  check("354 \r\n", {"R 354 []"});
  check("550 5.1.1 <x@y>: Recipient address rejected\r\n",
        {"R 550 <5.1.1> [5.1.1 <x@y>: Recipient address rejected]"});
}

TEST(SmtpReplyParser, EnhancedCodeRules) {
  check("550 4.1.1 class mismatch\r\n", {"R 550 [4.1.1 class mismatch]"});
  check("250 2.1.0\r\n", {"R 250 <2.1.0> [2.1.0]"});
  check("250 2.1.0x\r\n", {"R 250 [2.1.0x]"});
  check("452 4.5.3 Too many\r\n", {"R 452 <4.5.3> [4.5.3 Too many]"});
  check("250 2.1234.0 x\r\n", {"R 250 [2.1234.0 x]"});
  check("421 4.4.2 123.456 timeout\r\n", {"R 421 <4.4.2> [4.4.2 123.456 timeout]"});
  SmtpReplyParser p;
  ASSERT_EQ(p.feed("550 5.7.1 Relay denied\r\n").status, SmtpReplyStatus::kReply);
  EXPECT_EQ(p.reply().enhanced_text, "5.7.1");
  EXPECT_EQ(p.reply().message(), "Relay denied");
  EXPECT_TRUE(p.reply().permanent());
}

TEST(SmtpReplyParser, MultiLine) {
  check("250-mx.example.org\r\n250-PIPELINING\r\n250 SIZE 1000\r\n",
        {"R 250 [mx.example.org] [PIPELINING] [SIZE 1000]"});
  check("250-a\r\n251 b\r\n", {"E Inconsistent reply code in multi-line reply"});
  check("250-\r\n250 \r\n", {"R 250 [] []"});
}

TEST(SmtpReplyParser, PipelinedAndLmtp) {
  // LMTP: after DATA, one reply per accepted recipient, in order.
  const std::string in =
      "250 2.1.5 a@x.org delivered\r\n"
      "452-4.2.2 b@x.org\r\n452 4.2.2 mailbox full\r\n"
      "550 5.1.1 c@x.org unknown\r\n";
  check(in, {"R 250 <2.1.5> [2.1.5 a@x.org delivered]", "R 452 <4.2.2> [4.2.2 b@x.org] [4.2.2 mailbox full]",
             "R 550 <5.1.1> [5.1.1 c@x.org unknown]"});
  const auto ev = run(in, {});
  ASSERT_EQ(ev.size(), 3u);
  EXPECT_EQ(ev[0].second, 29u);
  EXPECT_EQ(ev[1].second, 29u + 19u + 24u);
}

TEST(SmtpReplyParser, Errors) {
  check("250 ok\n", {"E Bare LF in reply"});
  check("250 o\rk\r\n", {"E Bare CR in reply"});
  check("250 o\0k\r\n"s, {"E NUL in reply"});
  check("25\r\n", {"E Invalid reply code"});
  check("150 x\r\n", {"E Invalid reply code"});
  check("260 x\r\n", {"E Invalid reply code"});
  check("250x\r\n", {"E Invalid reply code"});
  check("abc\r\n", {"E Invalid reply code"});
  check("220 ok\r\n25", {"R 220 [ok]"});  // incomplete second reply is pending, not an error
}

TEST(SmtpReplyParser, LimitsExact) {
  SmtpReplyLimits lim;
  lim.max_line = 12;
  lim.max_lines = 3;
  check("250 1234567\r\n", {"E Reply line too long"}, lim);    // 13 octets
  check("250 123456\r\n", {"R 250 [123456]"}, lim);          // 12 octets: fits
  check("250-a\r\n250-b\r\n250 c\r\n", {"R 250 [a] [b] [c]"}, lim);
  check("250-a\r\n250-b\r\n250-c\r\n250 d\r\n", {"E Too many reply lines"}, lim);
}

TEST(SmtpReplyParser, Ehlo) {
  SmtpReplyParser p;
  const std::string in =
      "250-mx.example.org Hello [192.0.2.1]\r\n"
      "250-PIPELINING\r\n"
      "250-SIZE 52428800\r\n"
      "250-8BITMIME\r\n"
      "250-smtputf8\r\n"
      "250-CHUNKING\r\n"
      "250-STARTTLS\r\n"
      "250-ENHANCEDSTATUSCODES\r\n"
      "250-AUTH PLAIN LOGIN X-FOO\r\n"
      "250-AUTH=PLAIN LOGIN\r\n"
      "250-XCLIENT ADDR PORT HELO PROTO LOGIN NAME\r\n"
      "250 DSN\r\n";
  ASSERT_EQ(p.feed(in).status, SmtpReplyStatus::kReply);
  SmtpEhlo e;
  ASSERT_TRUE(parseEhloReply(p.reply(), &e));
  EXPECT_EQ(e.domain, "mx.example.org");
  EXPECT_TRUE(e.pipelining);
  EXPECT_TRUE(e.size);
  EXPECT_EQ(e.size_limit, 52428800u);
  EXPECT_TRUE(e.eightbitmime);
  EXPECT_TRUE(e.smtputf8);
  EXPECT_TRUE(e.chunking);
  EXPECT_FALSE(e.binarymime);
  EXPECT_TRUE(e.starttls);
  EXPECT_TRUE(e.enhancedstatuscodes);
  EXPECT_TRUE(e.dsn);
  EXPECT_TRUE(e.auth);
  EXPECT_EQ(e.auth_mechs, kSmtpAuthPlain | kSmtpAuthLogin | kSmtpAuthOther);
  EXPECT_EQ(e.auth_raw, "PLAIN LOGIN X-FOO");
  EXPECT_TRUE(e.xclient);
  EXPECT_EQ(e.xclient_attrs,
            kXclientAddr | kXclientPort | kXclientHelo | kXclientProto | kXclientLogin | kXclientName);
  EXPECT_EQ(e.xclient_raw, "ADDR PORT HELO PROTO LOGIN NAME");
}

TEST(SmtpReplyParser, EhloSizeVariants) {
  SmtpReplyParser p;
  SmtpEhlo e;
  ASSERT_EQ(p.feed("250-x\r\n250 SIZE\r\n").status, SmtpReplyStatus::kReply);
  ASSERT_TRUE(parseEhloReply(p.reply(), &e));
  EXPECT_TRUE(e.size);
  EXPECT_EQ(e.size_limit, 0u);
  ASSERT_EQ(p.feed("250-x\r\n250 SIZE 99999999999999999999999\r\n").status, SmtpReplyStatus::kReply);
  ASSERT_TRUE(parseEhloReply(p.reply(), &e));
  EXPECT_EQ(e.size_limit, 0u);
  ASSERT_EQ(p.feed("550 no\r\n").status, SmtpReplyStatus::kReply);
  EXPECT_FALSE(parseEhloReply(p.reply(), &e));
}

}  // namespace
}  // namespace mailgate::codec
