#include "gateway/codec/smtp_command.h"

#include <gtest/gtest.h>

#include <random>
#include <string>
#include <vector>

namespace mailgate::codec {
namespace {

using namespace std::string_literals;

const char* verbName(SmtpVerb v) {
  switch (v) {
    case SmtpVerb::kUnknown:
      return "UNKNOWN";
    case SmtpVerb::kEhlo:
      return "EHLO";
    case SmtpVerb::kHelo:
      return "HELO";
    case SmtpVerb::kMail:
      return "MAIL";
    case SmtpVerb::kRcpt:
      return "RCPT";
    case SmtpVerb::kData:
      return "DATA";
    case SmtpVerb::kBdat:
      return "BDAT";
    case SmtpVerb::kRset:
      return "RSET";
    case SmtpVerb::kNoop:
      return "NOOP";
    case SmtpVerb::kQuit:
      return "QUIT";
    case SmtpVerb::kVrfy:
      return "VRFY";
    case SmtpVerb::kHelp:
      return "HELP";
    case SmtpVerb::kStarttls:
      return "STARTTLS";
    case SmtpVerb::kAuth:
      return "AUTH";
  }
  return "?";
}

const char* bodyName(SmtpBody b) {
  switch (b) {
    case SmtpBody::kUnspecified:
      return "";
    case SmtpBody::k7Bit:
      return "7BIT";
    case SmtpBody::k8BitMime:
      return "8BITMIME";
    case SmtpBody::kBinaryMime:
      return "BINARYMIME";
  }
  return "?";
}

struct Event {
  std::string text;
  size_t end;
  bool operator==(const Event& o) const { return text == o.text && end == o.end; }
};

std::ostream& operator<<(std::ostream& os, const Event& e) { return os << "{" << e.text << " @" << e.end << "}"; }

std::string describe(const SmtpCommandParser& p, SmtpStatus s) {
  switch (s) {
    case SmtpStatus::kNeedMore:
      return "?";
    case SmtpStatus::kCommand: {
      const SmtpCommand& c = p.command();
      EXPECT_TRUE(p.ownsView(c.verb_text));
      EXPECT_TRUE(p.ownsView(c.arg));
      EXPECT_TRUE(p.ownsView(c.path));
      std::string out = "C "s + verbName(c.verb);
      if (!c.arg.empty()) out += " arg=[" + std::string(c.arg) + "]";
      if (!c.path.empty()) out += " path=" + std::string(c.path);
      if (c.has_size) out += " size=" + std::to_string(c.size);
      if (c.body != SmtpBody::kUnspecified) out += " body="s + bodyName(c.body);
      if (c.smtputf8) out += " utf8";
      for (uint32_t i = 0; i < c.param_count; ++i) {
        EXPECT_TRUE(p.ownsView(c.params[i].keyword));
        EXPECT_TRUE(p.ownsView(c.params[i].value));
      }
      if (c.has_initial_response) out += " ir=" + std::string(c.initial_response);
      if (c.verb == SmtpVerb::kBdat) out += " n=" + std::to_string(c.bdat_size) + (c.bdat_last ? " LAST" : "");
      return out;
    }
    case SmtpStatus::kSaslLine:
      EXPECT_TRUE(p.ownsView(p.saslLine()));
      return "S [" + std::string(p.saslLine()) + "]";
    case SmtpStatus::kError:
    case SmtpStatus::kFatal:
      return std::string(s == SmtpStatus::kError ? "E " : "F ") + std::to_string(p.errorCode()) + " " +
             std::string(p.errorEnhanced()) + " " + std::string(p.errorText()) +
             (p.isFramingError() ? " !" : "");
  }
  return "!";
}

// Acts as the session: one SASL line after AUTH without initial response (two for
// LOGIN); after STARTTLS, reset() and drop the rest; after BDAT n, skip n octets.
std::vector<Event> run(const std::string& in, const std::vector<size_t>& cuts, SmtpLimits lim = {},
                       SmtpParserOptions opt = {}) {
  SmtpCommandParser p(lim, opt);
  std::vector<Event> ev;
  int sasl_left = 0;
  uint64_t skip = 0;
  size_t pos = 0;
  std::vector<size_t> bounds = cuts;
  bounds.push_back(in.size());
  size_t chunk_start = 0;
  for (size_t b : bounds) {
    std::string_view rest(in.data() + chunk_start, b - chunk_start);
    chunk_start = b;
    for (;;) {
      if (skip > 0) {
        const size_t k = static_cast<size_t>(std::min<uint64_t>(skip, rest.size()));
        skip -= k;
        rest.remove_prefix(k);
        pos += k;
        if (skip == 0) ev.push_back({"chunk", pos});
      }
      if (rest.empty()) break;
      const SmtpFeed f = p.feed(rest);
      EXPECT_LE(f.consumed, rest.size());
      if (f.consumed > rest.size()) return ev;
      rest.remove_prefix(f.consumed);
      pos += f.consumed;
      if (f.status == SmtpStatus::kNeedMore) {
        EXPECT_TRUE(rest.empty());
        break;
      }
      EXPECT_GT(f.consumed, 0u);
      ev.push_back({describe(p, f.status), pos});
      switch (f.status) {
        case SmtpStatus::kFatal:
          EXPECT_EQ(p.feed("x").consumed, 0u);
          return ev;
        case SmtpStatus::kCommand:
          if (p.command().verb == SmtpVerb::kStarttls) {
            EXPECT_FALSE(p.hasPending());
            p.reset();
            if (!rest.empty() || chunk_start < in.size()) ev.push_back({"injected", pos});
            return ev;
          }
          if (p.command().verb == SmtpVerb::kAuth && !p.command().has_initial_response) {
            sasl_left = p.command().arg == "LOGIN" ? 1 : 0;
            p.expectSaslLine();
          }
          if (p.command().verb == SmtpVerb::kBdat) {
            skip = p.command().bdat_size;
            if (skip == 0) ev.push_back({"chunk", pos});
          }
          break;
        case SmtpStatus::kSaslLine:
          if (p.saslLine() != "*" && sasl_left > 0) {
            p.expectSaslLine();
            --sasl_left;
          }
          break;
        case SmtpStatus::kError:
          sasl_left = 0;
          break;
        case SmtpStatus::kNeedMore:
          break;
      }
      EXPECT_FALSE(p.hasPending());
    }
  }
  return ev;
}

std::vector<std::string> texts(const std::vector<Event>& ev) {
  std::vector<std::string> out;
  for (const auto& e : ev) out.push_back(e.text);
  return out;
}

struct Vec {
  std::string name;
  std::string in;
  std::vector<std::string> want;
  bool small = false;
};

SmtpLimits smallLimits() {
  SmtpLimits l;
  l.max_line = 32;
  l.max_sasl_line = 48;
  return l;
}

void checkVector(const Vec& v) {
  SCOPED_TRACE(v.name);
  const SmtpLimits lim = v.small ? smallLimits() : SmtpLimits{};
  const auto whole = run(v.in, {}, lim);
  EXPECT_EQ(texts(whole), v.want);
  std::vector<size_t> every;
  for (size_t i = 1; i < v.in.size(); ++i) every.push_back(i);
  EXPECT_EQ(run(v.in, every, lim), whole) << "byte by byte";
  for (size_t k = 0; k <= v.in.size(); ++k) EXPECT_EQ(run(v.in, {k}, lim), whole) << "split at " << k;
  std::mt19937 rng(5321);
  for (int r = 0; r < 20; ++r) {
    std::vector<size_t> cuts;
    for (size_t i = 1; i < v.in.size(); ++i) {
      if (rng() % 4 == 0) cuts.push_back(i);
    }
    EXPECT_EQ(run(v.in, cuts, lim), whole) << "random split " << r;
  }
}

const std::string kLong600(600, 'a');

std::vector<Vec> vectors() {
  return {
      {"ehlo", "EHLO mx.example.org\r\n", {"C EHLO arg=[mx.example.org]"}},
      {"helo lower", "helo client\r\n", {"C HELO arg=[client]"}},
      {"ehlo literal", "EHLO [192.0.2.1]\r\n", {"C EHLO arg=[[192.0.2.1]]"}},
      {"ehlo ipv6 literal", "EHLO [IPv6:2001:db8::1]\r\n", {"C EHLO arg=[[IPv6:2001:db8::1]]"}},
      {"ehlo no domain", "EHLO\r\n", {"E 501 5.5.4 Syntax error in parameters or arguments"}},
      {"ehlo bad domain", "EHLO bad_host\r\n", {"E 501 5.5.4 Syntax error in parameters or arguments"}},
      {"ehlo two words", "EHLO a b\r\n", {"E 501 5.5.4 Syntax error in parameters or arguments"}},
      {"mail", "MAIL FROM:<bob@example.org>\r\n", {"C MAIL path=<bob@example.org>"}},
      {"mail null", "MAIL FROM:<>\r\n", {"C MAIL path=<>"}},
      {"mail case", "mail from:<a@b.c>\r\n", {"C MAIL path=<a@b.c>"}},
      {"mail params",
       "MAIL FROM:<a@b.c> SIZE=12345 BODY=8BITMIME SMTPUTF8\r\n",
       {"C MAIL path=<a@b.c> size=12345 body=8BITMIME utf8"}},
      {"mail dsn params", "MAIL FROM:<a@b.c> RET=HDRS ENVID=QQ314159 AUTH=<>\r\n", {"C MAIL path=<a@b.c>"}},
      {"mail size max", "MAIL FROM:<a@b.c> SIZE=18446744073709551615\r\n",
       {"C MAIL path=<a@b.c> size=18446744073709551615"}},
      {"mail size overflow",
       "MAIL FROM:<a@b.c> SIZE=18446744073709551616\r\n",
       {"E 552 5.3.4 Message size exceeds fixed maximum message size"}},
      {"mail size 21 digits",
       "MAIL FROM:<a@b.c> SIZE=000000000000000000001\r\n",
       {"E 552 5.3.4 Message size exceeds fixed maximum message size"}},
      {"mail size not a number", "MAIL FROM:<a@b.c> SIZE=12k\r\n", {"E 501 5.5.4 Invalid parameter"}},
      {"mail duplicate", "MAIL FROM:<a@b.c> SIZE=1 SIZE=2\r\n", {"E 501 5.5.4 Invalid parameter"}},
      {"mail bad body", "MAIL FROM:<a@b.c> BODY=9BIT\r\n", {"E 501 5.5.4 Invalid parameter"}},
      {"mail unknown param", "MAIL FROM:<a@b.c> FOO=bar\r\n", {"E 555 5.5.4 Parameter not recognized"}},
      {"mail rcpt param", "MAIL FROM:<a@b.c> NOTIFY=NEVER\r\n", {"E 555 5.5.4 Parameter not recognized"}},
      {"mail space after colon",
       "MAIL FROM: <a@b.c>\r\n",
       {"E 501 5.5.4 Syntax error in parameters or arguments"}},
      {"mail space before colon",
       "MAIL FROM :<a@b.c>\r\n",
       {"E 501 5.5.4 Syntax error in parameters or arguments"}},
      {"mail trailing space",
       "MAIL FROM:<a@b.c> \r\n",
       {"E 501 5.5.4 Syntax error in parameters or arguments"}},
      {"mail no brackets", "MAIL FROM:a@b.c\r\n", {"E 501 5.1.7 Bad address syntax"}},
      {"mail source route", "MAIL FROM:<@r1,@r2:a@b.c>\r\n", {"E 501 5.1.7 Source routes are not accepted"}},
      {"mail 8bit no utf8", "MAIL FROM:<j\xc3\xbcrgen@b.c>\r\n", {"E 553 5.6.7 8-bit address requires SMTPUTF8"}},
      {"mail 8bit utf8", "MAIL FROM:<j\xc3\xbcrgen@b.c> SMTPUTF8\r\n", {"C MAIL path=<j\xc3\xbcrgen@b.c> utf8"}},
      {"rcpt", "RCPT TO:<alice@example.org>\r\n", {"C RCPT path=<alice@example.org>"}},
      {"rcpt postmaster", "RCPT TO:<Postmaster>\r\n", {"C RCPT path=<Postmaster>"}},
      {"rcpt null", "RCPT TO:<>\r\n", {"E 501 5.1.3 Null address not allowed here"}},
      {"rcpt quoted with gt", "RCPT TO:<\"a>b\"@x.org>\r\n", {"C RCPT path=<\"a>b\"@x.org>"}},
      {"rcpt notify orcpt",
       "RCPT TO:<a@b.c> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;a+40b.c\r\n",
       {"C RCPT path=<a@b.c>"}},
      {"rcpt bad notify", "RCPT TO:<a@b.c> NOTIFY=NEVER,DELAY\r\n", {"E 501 5.5.4 Invalid parameter"}},
      {"rcpt size param", "RCPT TO:<a@b.c> SIZE=1\r\n", {"E 555 5.5.4 Parameter not recognized"}},
      {"rcpt local too long",
       "RCPT TO:<" + std::string(65, 'x') + "@b.c>\r\n",
       {"E 501 5.1.3 Local part too long"}},
      {"data", "DATA\r\n", {"C DATA"}},
      {"data arg", "DATA x\r\n", {"E 501 5.5.4 Syntax error in parameters or arguments"}},
      {"rset noop quit", "RSET\r\nNOOP hello there\r\nQUIT\r\n", {"C RSET", "C NOOP arg=[hello there]", "C QUIT"}},
      {"vrfy", "VRFY postmaster\r\n", {"C VRFY arg=[postmaster]"}},
      {"vrfy empty", "VRFY\r\n", {"E 501 5.5.4 Syntax error in parameters or arguments"}},
      {"help", "HELP\r\nHELP MAIL\r\n", {"C HELP", "C HELP arg=[MAIL]"}},
      {"unknown", "XYZZY plugh\r\n", {"C UNKNOWN arg=[plugh]"}},
      {"unknown non alpha", "MAIL1 x\r\n", {"C UNKNOWN arg=[x]"}},
      {"leading space", " NOOP\r\n", {"C UNKNOWN arg=[NOOP]"}},
      {"empty line", "\r\n", {"E 500 5.5.2 Empty command"}},
      {"bdat", "BDAT 5\r\nabcdeBDAT 3 LAST\r\nxyzQUIT\r\n",
       {"C BDAT n=5", "chunk", "C BDAT n=3 LAST", "chunk", "C QUIT"}},
      {"bdat chunk contains crlf", "BDAT 6 last\r\nQUIT\r\nRSET\r\n", {"C BDAT n=6 LAST", "chunk", "C RSET"}},
      {"bdat zero", "BDAT 0 LAST\r\nQUIT\r\n", {"C BDAT n=0 LAST", "chunk", "C QUIT"}},
      {"bdat overflow fatal", "BDAT 18446744073709551616\r\nQUIT\r\n", {"F 501 5.5.4 Invalid BDAT chunk size"}},
      {"bdat syntax fatal", "BDAT 5 FIRST\r\nQUIT\r\n", {"F 501 5.5.4 Invalid BDAT chunk size"}},
      {"bdat no size fatal", "BDAT\r\nQUIT\r\n", {"F 501 5.5.4 Invalid BDAT chunk size"}},
      {"auth initial", "AUTH PLAIN AGJvYgBwdw==\r\n", {"C AUTH arg=[PLAIN] ir=AGJvYgBwdw=="}},
      {"auth empty initial", "AUTH PLAIN =\r\n", {"C AUTH arg=[PLAIN] ir=="}},
      {"auth bad initial", "AUTH PLAIN abc\r\n", {"E 501 5.5.4 Syntax error in parameters or arguments"}},
      {"auth sasl",
       "AUTH PLAIN\r\nAGJvYgBwdw==\r\nQUIT\r\n",
       {"C AUTH arg=[PLAIN]", "S [AGJvYgBwdw==]", "C QUIT"}},
      {"auth login", "AUTH LOGIN\r\nYm9i\r\ncHc=\r\nNOOP\r\n",
       {"C AUTH arg=[LOGIN]", "S [Ym9i]", "S [cHc=]", "C NOOP"}},
      {"auth cancel", "AUTH LOGIN\r\n*\r\nNOOP\r\n", {"C AUTH arg=[LOGIN]", "S [*]", "C NOOP"}},
      {"sasl bare LF", "AUTH PLAIN\r\nabc\nNOOP\r\n", {"C AUTH arg=[PLAIN]", "E 500 5.5.2 Bare LF in command line !",
                                                       "C NOOP"}},
      {"bare LF", "NOOP\nQUIT\r\n", {"E 500 5.5.2 Bare LF in command line !", "C QUIT"}},
      {"bare CR", "NOOP\rQUIT\r\nRSET\r\n", {"E 500 5.5.2 Bare CR in command line !", "C RSET"}},
      {"CR CR LF", "NOOP\r\r\nRSET\r\n", {"E 500 5.5.2 Bare CR in command line !", "C RSET"}},
      {"NUL", "NO\0OP\r\nRSET\r\n"s, {"E 500 5.5.2 NUL in command line !", "C RSET"}},
      {"NUL then bare LF", "NO\0OP\nRSET\r\n"s, {"E 500 5.5.2 NUL in command line !", "C RSET"}},
      {"smuggled DATA end as command", "\n.\n", {"E 500 5.5.2 Bare LF in command line !",
                                                  "E 500 5.5.2 Bare LF in command line !"}},
      {"line too long", kLong600 + "\r\nQUIT\r\n", {"E 500 5.5.2 Line too long", "C QUIT"}},
      {"line exactly 512", "NOOP " + std::string(505, 'x') + "\r\n", {"C NOOP arg=[" + std::string(505, 'x') + "]"}},
      {"line 513", "NOOP " + std::string(506, 'x') + "\r\nQUIT\r\n", {"E 500 5.5.2 Line too long", "C QUIT"}},
      // One reply however far beyond the limit the line goes; the next command is in step.
      {"line 4 times the limit", std::string(2049, 'a') + "\r\nNOOP\r\n", {"E 500 5.5.2 Line too long", "C NOOP"}},
      {"line far beyond the limit", "NOOP " + std::string(5000, 'x') + "\r\nRSET\r\n",
       {"E 500 5.5.2 Line too long", "C RSET"}},
      {"small line 10 times the limit", std::string(330, 'a') + "\r\nNOOP\r\n",
       {"E 500 5.5.2 Line too long", "C NOOP"}, true},
      {"small line too long ends in bare LF", std::string(330, 'a') + "\nNOOP\r\n",
       {"E 500 5.5.2 Line too long", "C NOOP"}, true},
      {"small line too long then overlong again", std::string(200, 'a') + "\r\n" + std::string(200, 'b') +
       "\r\nQUIT\r\n", {"E 500 5.5.2 Line too long", "E 500 5.5.2 Line too long", "C QUIT"}, true},
      {"auth line long ok", "AUTH PLAIN " + std::string(1000, 'A') + "\r\n",
       {"C AUTH arg=[PLAIN] ir=" + std::string(1000, 'A')}},
      {"small auth too long", "AUTH PLAIN " + std::string(40, 'A') + "\r\nNOOP\r\n",
       {"E 500 5.5.6 Line too long", "C NOOP"}, true},
      {"small sasl too long", "AUTH PLAIN\r\n" + std::string(50, 'A') + "\r\nNOOP\r\n",
       {"C AUTH arg=[PLAIN]", "E 500 5.5.6 Line too long", "C NOOP"}, true},
      {"small sasl far too long", "AUTH PLAIN\r\n" + std::string(500, 'A') + "\r\nNOOP\r\n",
       {"C AUTH arg=[PLAIN]", "E 500 5.5.6 Line too long", "C NOOP"}, true},
      {"starttls", "STARTTLS\r\n", {"C STARTTLS"}},
      {"starttls injection", "STARTTLS\r\nRSET\r\n", {"C STARTTLS", "injected"}},
      {"pipelined transaction",
       "MAIL FROM:<a@b.c>\r\nRCPT TO:<d@e.f>\r\nRCPT TO:<g@h.i>\r\nDATA\r\n",
       {"C MAIL path=<a@b.c>", "C RCPT path=<d@e.f>", "C RCPT path=<g@h.i>", "C DATA"}},
  };
}

TEST(SmtpCommandParser, Vectors) {
  for (const auto& v : vectors()) checkVector(v);
}

TEST(SmtpCommandParser, AllVectorsPipelined) {
  // Every vector that does not end the stream (fatal, STARTTLS), concatenated.
  std::string in;
  std::vector<std::string> want;
  for (const auto& v : vectors()) {
    if (v.small) continue;
    const auto w = v.want;
    bool ends = false;
    for (const auto& t : w) ends |= t[0] == 'F' || t == "C STARTTLS";
    if (ends) continue;
    in += v.in;
    want.insert(want.end(), w.begin(), w.end());
  }
  const auto whole = run(in, {});
  EXPECT_EQ(texts(whole), want);
  std::mt19937 rng(77);
  for (int r = 0; r < 20; ++r) {
    std::vector<size_t> cuts;
    for (size_t i = 1; i < in.size(); ++i) {
      if (rng() % 7 == 0) cuts.push_back(i);
    }
    EXPECT_EQ(run(in, cuts), whole) << "random split " << r;
  }
}

SmtpCommandParser parsed(const std::string& line, SmtpStatus want, SmtpParserOptions o = {}) {
  SmtpCommandParser p(SmtpLimits{}, o);
  const SmtpFeed f = p.feed(line);
  EXPECT_EQ(f.status, want) << line;
  EXPECT_EQ(f.consumed, line.size());
  return p;
}

TEST(SmtpCommandParser, MailFieldsExact) {
  SmtpCommandParser p;
  const std::string line = "MAIL FROM:<User%Relay@Mail.Example.ORG> SIZE=42 BODY=binarymime RET=FULL "
                           "ENVID=abc+2B AUTH=u+40x\r\n";
  ASSERT_EQ(p.feed(line).status, SmtpStatus::kCommand);
  const SmtpCommand& c = p.command();
  EXPECT_EQ(c.verb, SmtpVerb::kMail);
  EXPECT_EQ(c.address.local_part, "User%Relay");
  EXPECT_EQ(c.address.domain, "Mail.Example.ORG");
  EXPECT_EQ(c.address.domainLower(), "mail.example.org");
  EXPECT_TRUE(c.address.percent_hack);
  EXPECT_FALSE(c.address.bang_path);
  EXPECT_TRUE(c.has_size);
  EXPECT_EQ(c.size, 42u);
  EXPECT_EQ(c.body, SmtpBody::kBinaryMime);
  EXPECT_EQ(c.ret, "FULL");
  EXPECT_EQ(c.envid, "abc+2B");
  EXPECT_TRUE(c.has_auth);
  EXPECT_EQ(c.auth, "u+40x");
  ASSERT_EQ(c.param_count, 5u);
  EXPECT_EQ(c.params[1].keyword, "BODY");
  EXPECT_EQ(c.params[1].value, "binarymime");
  EXPECT_TRUE(c.params[1].has_value);
}

TEST(SmtpCommandParser, RcptFieldsExact) {
  SmtpCommandParser p;
  ASSERT_EQ(p.feed("RCPT TO:<host!user@[IPv6:::1]> NOTIFY=never ORCPT=rfc822;x\r\n").status,
            SmtpStatus::kCommand);
  const SmtpCommand& c = p.command();
  EXPECT_TRUE(c.address.bang_path);
  EXPECT_TRUE(c.address.address_literal);
  EXPECT_EQ(c.address.domainLower(), "[ipv6:::1]");
  EXPECT_EQ(c.notify, "never");
  EXPECT_EQ(c.orcpt, "rfc822;x");
}

TEST(SmtpCommandParser, RcptUtf8FollowsSession) {
  SmtpCommandParser p;
  const std::string line = "RCPT TO:<\xd0\xb8\xd0\xb2\xd0\xb0\xd0\xbd@\xd0\xbf\xd1\x80\xd0\xb8.\xd1\x80\xd1\x84>\r\n";
  ASSERT_EQ(p.feed(line).status, SmtpStatus::kError);
  EXPECT_EQ(p.errorKind(), SmtpErrorKind::kBadAddress);
  EXPECT_EQ(p.addressError(), SmtpAddressError::kEightBit);
  EXPECT_EQ(p.errorCode(), 553);
  p.setSmtpUtf8(true);
  ASSERT_EQ(p.feed(line).status, SmtpStatus::kCommand);
  EXPECT_TRUE(p.command().address.eight_bit);
}

TEST(SmtpCommandParser, SpaceAfterColonOption) {
  SmtpParserOptions o;
  o.allow_space_after_colon = true;
  auto p = parsed("MAIL FROM: <a@b.c>\r\n", SmtpStatus::kCommand, o);
  EXPECT_EQ(p.command().path, "<a@b.c>");
  auto q = parsed("RCPT TO:  <a@b.c>\r\n", SmtpStatus::kCommand, o);
  EXPECT_EQ(q.command().path, "<a@b.c>");
}

TEST(SmtpCommandParser, LaxHelo) {
  SmtpParserOptions o;
  o.strict_helo = false;
  auto p = parsed("HELO my_host\r\n", SmtpStatus::kCommand, o);
  EXPECT_EQ(p.command().arg, "my_host");
}

TEST(SmtpCommandParser, ErrorKinds) {
  struct Case {
    std::string in;
    SmtpErrorKind kind;
    bool framing;
  };
  const std::vector<Case> cases = {
      {"NOOP\n", SmtpErrorKind::kBareLf, true},
      {"NOOP\rx\r\n", SmtpErrorKind::kBareCr, true},
      {"NOOP\0\r\n"s, SmtpErrorKind::kNul, true},
      {"\r\n", SmtpErrorKind::kSyntax, false},
      {"MAIL FROM:<a@b>x\r\n", SmtpErrorKind::kBadAddress, false},
      {"RCPT TO:<@a:b@c>\r\n", SmtpErrorKind::kSourceRoute, false},
      {"MAIL FROM:<a@b> SIZE=x\r\n", SmtpErrorKind::kBadParam, false},
      {"MAIL FROM:<a@b> X-FOO\r\n", SmtpErrorKind::kUnknownParam, false},
      {"MAIL FROM:<a@b> SIZE=99999999999999999999\r\n", SmtpErrorKind::kSizeOverflow, false},
      {kLong600, SmtpErrorKind::kLineTooLong, false},
  };
  for (const auto& c : cases) {
    SmtpCommandParser p;
    const SmtpFeed f = p.feed(c.in);
    EXPECT_EQ(f.status, SmtpStatus::kError) << c.in;
    EXPECT_EQ(p.errorKind(), c.kind) << c.in;
    EXPECT_EQ(p.isFramingError(), c.framing) << c.in;
  }
  SmtpCommandParser p;
  EXPECT_EQ(p.feed("BDAT x\r\n").status, SmtpStatus::kFatal);
  EXPECT_EQ(p.errorKind(), SmtpErrorKind::kBdatSyntax);
  EXPECT_EQ(p.feed("NOOP\r\n").consumed, 0u);
  p.reset();
  EXPECT_EQ(p.feed("NOOP\r\n").status, SmtpStatus::kCommand);
}

TEST(SmtpCommandParser, TooManyParams) {
  std::string line = "MAIL FROM:<a@b.c>";
  for (int i = 0; i < 11; ++i) line += " X" + std::to_string(i);
  SmtpCommandParser p;
  ASSERT_EQ(p.feed(line + "\r\n").status, SmtpStatus::kError);
  EXPECT_EQ(p.errorKind(), SmtpErrorKind::kBadParam);
}

TEST(SmtpCommandParser, StarttlsResetDropsPending) {
  SmtpCommandParser p;
  const std::string in = "STARTTLS\r\nMAIL FROM:<evil@x.y>";
  const SmtpFeed f = p.feed(in);
  ASSERT_EQ(f.status, SmtpStatus::kCommand);
  EXPECT_EQ(f.consumed, 10u);
  EXPECT_FALSE(p.hasPending());
  // A session that (wrongly) fed the rest would see it buffered:
  EXPECT_EQ(p.feed(std::string_view(in).substr(f.consumed)).status, SmtpStatus::kNeedMore);
  EXPECT_TRUE(p.hasPending());
  p.reset();
  EXPECT_FALSE(p.hasPending());
  ASSERT_EQ(p.feed("EHLO a.b\r\n").status, SmtpStatus::kCommand);
  EXPECT_EQ(p.command().verb, SmtpVerb::kEhlo);
}

TEST(SmtpCommandParser, ConfigurableLineLimit) {
  SmtpLimits l;
  l.max_line = 1000;
  SmtpCommandParser p(l);
  const std::string line = "NOOP " + std::string(993, 'x') + "\r\n";  // 1000 octets
  EXPECT_EQ(p.feed(line).status, SmtpStatus::kCommand);
  const std::string longer = "NOOP " + std::string(994, 'x') + "\r\n";
  const SmtpFeed f = p.feed(longer);
  EXPECT_EQ(f.status, SmtpStatus::kError);
  EXPECT_EQ(f.consumed, longer.size());  // crossed at the LF: reported at the end of line
  EXPECT_EQ(p.errorKind(), SmtpErrorKind::kLineTooLong);
}

TEST(SmtpCommandParser, OverlongReportedAtOnceNotPending) {
  SmtpCommandParser p;
  const SmtpFeed f = p.feed(std::string(513, 'a'));
  EXPECT_EQ(f.status, SmtpStatus::kError);
  EXPECT_EQ(f.consumed, 513u);
  EXPECT_FALSE(p.hasPending());
  EXPECT_EQ(p.feed(std::string(100, 'b')).status, SmtpStatus::kNeedMore);
  const SmtpFeed g = p.feed("b\r\nQUIT\r\n");
  EXPECT_EQ(g.status, SmtpStatus::kCommand);
  EXPECT_EQ(p.command().verb, SmtpVerb::kQuit);
}

// Lines of 10 KB and 70 KB (far beyond 4 * the limit) at the default limit and at a
// 4 KiB one: one error when the limit is crossed, the rest discarded up to the end of
// the line, then the next command. Whole, byte by byte and at random splits (every
// single split point of a 70 KB input is too slow for a unit test).
TEST(SmtpCommandParser, VeryLongLinesAnsweredOnce) {
  for (const uint32_t max_line : {512u, 4096u}) {
    for (const size_t n : {size_t{10} * 1024, size_t{70} * 1024}) {
      SCOPED_TRACE("max_line " + std::to_string(max_line) + " line " + std::to_string(n));
      SmtpLimits lim;
      lim.max_line = max_line;
      const std::string in = "NOOP " + std::string(n, 'x') + "\r\nNOOP\r\n";
      const std::vector<std::string> want = {"E 500 5.5.2 Line too long", "C NOOP"};
      const auto whole = run(in, {}, lim);
      EXPECT_EQ(texts(whole), want);
      ASSERT_EQ(whole.size(), 2u);
      EXPECT_EQ(whole[0].end, size_t{max_line} + 1);  // reported when the limit is crossed
      std::vector<size_t> every;
      for (size_t i = 1; i < in.size(); ++i) every.push_back(i);
      EXPECT_EQ(run(in, every, lim), whole) << "byte by byte";
      std::mt19937 rng(2920);
      for (int r = 0; r < 20; ++r) {
        std::vector<size_t> cuts;
        size_t at = 0;
        while (true) {
          at += 1 + rng() % 3000;
          if (at >= in.size()) break;
          cuts.push_back(at);
        }
        EXPECT_EQ(run(in, cuts, lim), whole) << "random split " << r;
      }
    }
  }
}

}  // namespace
}  // namespace mailgate::codec
